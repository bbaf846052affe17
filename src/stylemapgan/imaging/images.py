"""Converting between image files and tensors, fitting photos of any shape to the model's square,
putting edited squares back into the photo, and writing result images safely."""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from stylemapgan.errors import InputError
from stylemapgan.files import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 64_000_000  # refuse larger images (decompression bombs)

Fit = Literal["crop", "pad", "stretch"]
FITS: tuple[str, ...] = ("crop", "pad", "stretch")


# --------------------------------------------------------------------------- reading
@contextlib.contextmanager
def _decoding(label: str) -> Iterator[None]:
    """Turn every way an image file can fail to decode into one InputError naming it."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        raise InputError(f"{label}: refused as a decompression bomb (too many pixels)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{label}: cannot decode the image ({exc}); the file may be truncated "
                         "or corrupt") from None


def _open(source: str | os.PathLike[str] | Image.Image, max_pixels: int, label: str) -> Image.Image:
    """Open, size-check, decode and EXIF-orient an image (inside ``_decoding``)."""
    img = source if isinstance(source, Image.Image) else Image.open(source)
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"{label}: image has no pixels")
    if w * h > max_pixels:
        raise InputError(f"{label}: {w}x{h} pixels is more than the limit of {max_pixels:,}; "
                         "resize it first")
    img.load()
    return ImageOps.exif_transpose(img)


def _label(source: Any, name: str | None) -> str:
    return name or (str(source) if not isinstance(source, Image.Image) else "image")


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16-bit and float single-channel images -> 8-bit "L" (other modes unchanged)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(arr * (255.0 if arr.max(initial=0) <= 1 else 1.0) + 0.5,
                                       0, 255).astype(np.uint8), "L")
    return img


def load_rgb(source: str | os.PathLike[str] | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS,
             background: tuple[int, int, int] = (255, 255, 255), name: str | None = None) -> Image.Image:
    """Open an image of any common format and mode as 8-bit RGB.

    EXIF orientation is applied; transparency (RGBA, LA, P with a transparent color) is
    flattened onto ``background``; grayscale, 16-bit, palette and CMYK images are converted.
    Images with more than ``max_pixels`` pixels are refused before decoding. Raises
    :class:`InputError` naming the file for anything unreadable.
    """
    label = _label(source, name)
    with _decoding(label):
        img = _open(source, max_pixels, label)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        img = _wide_to_l(img)
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, background)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return img.convert("RGB")


def load_gray(source: str | os.PathLike[str] | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              name: str | None = None) -> np.ndarray:
    """Open an image as a float32 [H, W] array in [0, 1], for masks.

    Images with transparency use their opacity (a brush stroke painted on a transparent layer
    is the mask); all others their luminance (white = 1). 16-bit images keep their range.
    """
    label = _label(source, name)
    with _decoding(label):
        img = _open(source, max_pixels, label)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "L")
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
            if alpha.min() < 1.0:
                return alpha
            img = img.convert("RGB")
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            hi = 65535.0 if arr.max(initial=0) > 255 else (255.0 if arr.max(initial=0) > 1 else 1.0)
            return np.clip(arr / hi, 0.0, 1.0).astype(np.float32)
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def load_labels(source: str | os.PathLike[str] | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                name: str | None = None) -> np.ndarray:
    """Open a label map (pixel value = label id) as an int64 [H, W] array.

    Accepts single-channel images (8 or 16 bit), palette images (the palette index is the
    label) and RGB images whose three channels are equal. Colored label maps are refused.
    """
    label = _label(source, name)
    with _decoding(label):
        img = _open(source, max_pixels, label)
        if img.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            return np.asarray(img).astype(np.int64)
        if img.mode in ("RGB", "RGBA"):
            arr = np.asarray(img)[..., :3].astype(np.int64)
            if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
                return arr[..., 0]
        raise InputError(f"{label}: a label map must be a single-channel image whose pixel values "
                         f"are label ids (got mode {img.mode} with colors); save it as grayscale "
                         "or palette PNG")


def list_images(inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = False,
                suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Expand files and folders into a list of image files (folders: sorted, by suffix).

    Files given explicitly are kept whatever their suffix (the loader decides). Raises
    :class:`InputError` for a missing path or a folder without images.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                           if f.is_file() and f.suffix.lower() in suffixes and not f.name.startswith("."))
            if not found:
                raise InputError(f"{p}: no images ({', '.join(suffixes)}) in this folder"
                                 + ("" if recursive else "; pass --recursive to search subfolders"))
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return out


# --------------------------------------------------------------------------- tensors
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] tensor in [-1, 1] -> [N, H, W, 3] uint8 (clamped, rounded)."""
    if images.ndim == 3:
        images = images[None]
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """[H, W, 3] or [N, H, W, 3] uint8 -> [N, 3, H, W] float in [-1, 1]."""
    if array.ndim == 3:
        array = array[None]
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # e.g. np.asarray of a PIL image; torch wants to own it
        array = array.copy()
    t = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


# --------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class Placement:
    """Where the model's square input came from in a photo.

    ``source_size``: (width, height) of the photo (after EXIF orientation). ``region``: the
    part of the photo used, (left, top, right, bottom) in pixels (the whole photo or a
    user's box). ``square``: the area mapped onto the model's ``size`` x ``size`` square, in
    the same coordinates; with ``fit="pad"`` it extends past the region (the padding), with
    ``"stretch"`` it equals the region (not square).
    """

    source_size: tuple[int, int]
    region: tuple[int, int, int, int]
    square: tuple[int, int, int, int]
    size: int
    fit: str = "crop"

    def to_dict(self) -> dict[str, Any]:
        return {"source_size": list(self.source_size), "region": list(self.region),
                "square": list(self.square), "size": self.size, "fit": self.fit}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Placement:
        try:
            return cls(tuple(d["source_size"]), tuple(d["region"]), tuple(d["square"]),
                       int(d["size"]), str(d.get("fit", "crop")))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"unreadable placement record {d!r}") from None

    def scaled_to(self, width: int, height: int) -> Placement:
        """The same placement for a version of the photo of another size (e.g. a mask)."""
        sx, sy = width / self.source_size[0], height / self.source_size[1]

        def sc(b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
            return (round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy))

        return Placement((width, height), sc(self.region), sc(self.square), self.size, self.fit)


def parse_box(text: str, what: str = "--box") -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` -> four numbers (left, top, right, bottom; right/bottom exclusive)."""
    parts = [p for p in str(text).replace(":", ",").split(",") if p.strip()]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise InputError(f"{what} {text!r}: expected four numbers LEFT,TOP,RIGHT,BOTTOM")
    x0, y0, x1, y1 = vals
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{what} {text!r}: RIGHT must be > LEFT and BOTTOM > TOP")
    return x0, y0, x1, y1


def place(source_size: tuple[int, int], size: int, fit: str = "crop",
          box: tuple[float, float, float, float] | None = None, name: str = "image") -> Placement:
    """How a photo of ``source_size`` (width, height) becomes the model's square.

    ``box`` (pixels of the photo) restricts it to a region first. ``crop``: the largest
    centered square of the region; ``pad``: the region centered in a square (padded by
    repeating its edge pixels); ``stretch``: the region resized to a square, ignoring aspect.
    """
    if fit not in FITS:
        raise InputError(f"unknown fit {fit!r}; use one of {', '.join(FITS)}")
    w, h = source_size
    if box is None:
        region = (0, 0, w, h)
    else:
        x0, y0, x1, y1 = (round(v) for v in box)
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h or x1 - x0 < 1 or y1 - y0 < 1:
            raise InputError(f"{name}: box {x0},{y0},{x1},{y1} is not inside the {w}x{h} image")
        region = (x0, y0, x1, y1)
    x0, y0, x1, y1 = region
    bw, bh = x1 - x0, y1 - y0
    if fit == "crop":
        side = min(bw, bh)
        left, top = x0 + (bw - side) // 2, y0 + (bh - side) // 2
        square = (left, top, left + side, top + side)
    elif fit == "pad":
        side = max(bw, bh)
        left, top = x0 - (side - bw) // 2, y0 - (side - bh) // 2
        square = (left, top, left + side, top + side)
    else:
        square = region
    return Placement((w, h), region, square, size, fit)


def _extract(arr: np.ndarray, pl: Placement) -> np.ndarray:
    """The ``square`` area of ``arr`` ([H, W] or [H, W, C]); outside the region (padding) the
    region's edge pixels are repeated."""
    x0, y0, x1, y1 = pl.region
    reg = arr[y0:y1, x0:x1]
    s0, t0, s1, t1 = pl.square
    pad = [(y0 - t0, t1 - y1), (x0 - s0, s1 - x1)] + [(0, 0)] * (arr.ndim - 2)
    if any(a < 0 or b < 0 for a, b in pad):  # the square lies inside the region (crop)
        return reg[t0 - y0: t1 - y0, s0 - x0: s1 - x0]
    if any(a or b for a, b in pad):
        reg = np.pad(reg, pad, mode="edge")
    return reg


def fit_rgb(img: Image.Image, placement: Placement) -> np.ndarray:
    """Apply ``placement`` to an RGB photo: [size, size, 3] uint8 (Lanczos resampling)."""
    if img.size != placement.source_size:
        raise InputError(f"image is {img.size[0]}x{img.size[1]}, but the placement is for "
                         f"{placement.source_size[0]}x{placement.source_size[1]}")
    part = Image.fromarray(_extract(np.asarray(img.convert("RGB")), placement))
    s = placement.size
    if part.size != (s, s):
        part = part.resize((s, s), Image.Resampling.LANCZOS)
    return np.asarray(part, dtype=np.uint8)


def fit_gray(arr: np.ndarray, placement: Placement) -> np.ndarray:
    """Apply ``placement`` (for a photo of the same size as ``arr``) to a float [H, W] map:
    [size, size] float32, area-averaged when shrinking (soft edges), bilinear when growing."""
    part = _extract(np.asarray(arr, dtype=np.float32), placement)
    s = placement.size
    if part.shape != (s, s):
        t = torch.from_numpy(np.ascontiguousarray(part))[None, None]
        if part.shape[0] >= s and part.shape[1] >= s:
            t = torch.nn.functional.adaptive_avg_pool2d(t, s)
        else:
            t = torch.nn.functional.interpolate(t, size=(s, s), mode="bilinear", align_corners=False)
        part = t[0, 0].clamp(0, 1).numpy()
    return part.astype(np.float32)


def load_image(path: str | os.PathLike[str] | Image.Image, size: int, *, fit: str = "crop",
               box: tuple[float, float, float, float] | None = None,
               name: str | None = None) -> tuple[np.ndarray, Placement, Image.Image]:
    """Read a photo and fit it to the model: ([size, size, 3] uint8, placement, RGB photo)."""
    img = load_rgb(path, name=name)
    pl = place(img.size, size, fit, box, name=name or str(path))
    return fit_rgb(img, pl), pl, img


# --------------------------------------------------------------------------- paste-back
def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float [H, W] map (edges replicated)."""
    if sigma <= 0:
        return a
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    t = torch.nn.functional.pad(t, (r, r, r, r), mode="replicate")
    t = torch.nn.functional.conv2d(t, k.view(1, 1, 1, -1))
    t = torch.nn.functional.conv2d(t, k.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def _dilate(a: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    t = torch.nn.functional.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)
    return t[0, 0].numpy()


def paste_back(photo: Image.Image | np.ndarray, result: np.ndarray, placement: Placement, *,
               feather: float = 8.0, mask: np.ndarray | None = None) -> np.ndarray:
    """Put an edited model-size image back into the full photo it was cut from.

    ``result``: [size, size, 3] uint8. The result is resized to the area it came from and
    blended in with a feathered seam ``feather`` photo pixels wide. With ``mask`` ([size,
    size] in [0, 1], the edit's mask) only the edited part (grown by ``feather``) is replaced
    and the rest of the photo keeps its original pixels; without it the whole region is. The
    padding of ``fit="pad"`` is never pasted. Returns the photo as [H, W, 3] uint8.
    """
    base = np.asarray(photo.convert("RGB") if isinstance(photo, Image.Image) else photo)
    h, w = base.shape[:2]
    if (w, h) != placement.source_size:
        raise InputError(f"paste-back: the photo is {w}x{h}, but the edit was cut from a "
                         f"{placement.source_size[0]}x{placement.source_size[1]} image")
    if result.shape[:2] != (placement.size, placement.size):
        raise InputError(f"paste-back: result is {result.shape[1]}x{result.shape[0]}, expected "
                         f"{placement.size}x{placement.size}")
    s0, t0, s1, t1 = placement.square
    sw, sh = s1 - s0, t1 - t0
    big = np.asarray(Image.fromarray(result).resize((sw, sh), Image.Resampling.LANCZOS),
                     dtype=np.float32)
    # Alpha over the square, in photo pixels.
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        m = np.asarray(Image.fromarray(m, "F").resize((sw, sh), Image.Resampling.BILINEAR))
        m = (m > 1e-3).astype(np.float32) if feather > 0 else np.clip(m, 0, 1)
        alpha = np.clip(_gaussian_blur(_dilate(m, round(feather)), feather / 2), 0, 1)
    else:
        alpha = np.ones((sh, sw), dtype=np.float32)
    # Only where the square and the region overlap (never the padding), fading out toward
    # the edges of that area that are not the photo's own edges.
    rx0, ry0, rx1, ry1 = placement.region
    x0, y0, x1, y1 = max(s0, rx0), max(t0, ry0), min(s1, rx1), min(t1, ry1)
    ys = np.arange(t0, t1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(s0, s1, dtype=np.float32)[None, :] + 0.5
    f = max(float(feather), 1e-6)
    ramp = np.ones((sh, sw), dtype=np.float32)
    for dist, at_photo_edge in ((xs - x0, x0 == 0), (x1 - xs, x1 == w), (ys - y0, y0 == 0),
                                (y1 - ys, y1 == h)):
        ramp = np.minimum(ramp, (dist > 0) if at_photo_edge or feather <= 0
                          else np.clip(dist / f, 0, 1))
    alpha = alpha * ramp
    # Clip the square to the photo and blend.
    cx0, cy0, cx1, cy1 = max(s0, 0), max(t0, 0), min(s1, w), min(t1, h)
    out = base.astype(np.float32).copy()
    a = alpha[cy0 - t0: cy1 - t0, cx0 - s0: cx1 - s0, None]
    src = big[cy0 - t0: cy1 - t0, cx0 - s0: cx1 - s0]
    out[cy0:cy1, cx0:cx1] = a * src + (1 - a) * out[cy0:cy1, cx0:cx1]
    # Where alpha is 0 the original values come back exactly (integers survive float32).
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- writing
def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2,
              background: int = 255) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one grid image with ``pad`` pixels between tiles."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, c),
                   background, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = images[i]
    return grid


def mask_to_rgb(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """A [H, W] mask in [0, 1] as a [H, W, 3] uint8 gray image (for grids)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().float().cpu().numpy()
    m = np.asarray(mask, dtype=np.float32).reshape(mask.shape[-2:])
    g = np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def save_png(array: np.ndarray, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write an [H, W, 3] (or [H, W]) uint8 array as PNG, atomically."""
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def save_gif(frames: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike[str], *,
             duration_ms: int = 80, bounce: bool = True, overwrite: bool = False) -> Path:
    """Write [N, H, W, 3] uint8 frames as a looping animated GIF, atomically.

    ``bounce`` plays the frames forward then backward (an interpolation that returns).
    """
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise InputError("an animation needs at least one frame")
    if bounce and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    imgs = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
            for f in frames]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=duration_ms,
                 loop=0, disposal=1, optimize=False)
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def check_writable(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse before any work starts if an output would replace an existing file."""
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}{more} already exist(s); pass --overwrite to replace")
