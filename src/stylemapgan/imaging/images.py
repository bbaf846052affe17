"""Image files in and out: reading any common format and mode (with limits against
decompression bombs and one-line errors naming the file), converting between pixels and
tensors, encoding PNGs, grids and GIFs, and writing them atomically.

How a photo becomes the model's square (and how an edit goes back into it) is
:mod:`stylemapgan.imaging.placement`; masks are :mod:`stylemapgan.imaging.masks`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from stylemapgan.errors import InputError
from stylemapgan.files import atomic_write

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 64_000_000  # refuse larger images (decompression bombs)


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
    except Exception as exc:
        # Any other error of a decoder or of the metadata it parses (struct.error from a
        # malformed EXIF tag, TypeError, IndexError, ...): the file is unreadable all the same.
        raise InputError(f"{label}: cannot decode the image or its metadata ({_short(exc)}); "
                         "the file is corrupt") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# warnings.catch_warnings swaps the process's warning handler: two threads nesting it (the
# web server decodes uploads in threads) could leave the wrong one in place, so it is held
# under this lock, only while Pillow reads a file's header and metadata (and, reading at full
# size, turns the image by its EXIF tag), never while it decodes the pixels.
_PIL_WARNINGS_LOCK = threading.RLock()
_PIL_DIR = os.path.dirname(Image.__file__)


@contextlib.contextmanager
def metadata_warnings(label: str, *, quiet: bool = False) -> Iterator[None]:
    """Turn the warnings Pillow raises about a damaged file's metadata (a corrupt or truncated
    EXIF block, a malformed MPO header, ...) into at most one log line naming the file,
    instead of a printed ``UserWarning`` per problem that looks like a traceback. The pixels
    are still read; only the damaged metadata is ignored. ``quiet``: no line at all (a header
    check whose file is decoded, and logged, later). Warnings other code raises meanwhile
    are passed on unchanged; when the block raises, its error says enough and nothing is
    logged."""
    with _PIL_WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    ours = [w for w in caught if os.path.dirname(w.filename) == _PIL_DIR]
    for w in caught:
        if w not in ours:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if ours and not quiet:
        first = " ".join(str(ours[0].message).split())[:160]
        more = f"; {len(ours) - 1} more" if len(ours) > 1 else ""
        log.warning("%s: damaged metadata ignored (%s%s); the pixels were read", label, first,
                    more)


def _opened(source: str | os.PathLike[str] | Image.Image, max_pixels: int,
            label: str) -> Image.Image:
    """Open an image (header only) and check its size (inside ``_decoding``). A path must
    name a regular file: a FIFO or device would block or never end."""
    if isinstance(source, (str, os.PathLike)):
        import stat

        mode = os.stat(source).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{label}: is a directory, not an image")
        if not stat.S_ISREG(mode):
            raise InputError(f"{label}: not a regular file (a FIFO or device); give an image file")
    if isinstance(source, Image.Image):
        img = source
    else:
        with metadata_warnings(label):
            img = Image.open(source)
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"{label}: image has no pixels")
    if w * h > max_pixels:
        raise InputError(f"{label}: {w}x{h} pixels is more than the limit of {max_pixels:,}; "
                         "resize it first")
    return img


def _open(source: str | os.PathLike[str] | Image.Image, max_pixels: int, label: str) -> Image.Image:
    """Open, size-check, decode and EXIF-orient an image (inside ``_decoding``)."""
    img = _opened(source, max_pixels, label)
    img.load()
    with metadata_warnings(label):
        return ImageOps.exif_transpose(img)


_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def reduction(size: tuple[int, int], keep: tuple[int, int]) -> int:
    """The largest whole factor by which an image of ``size`` (width, height) may be reduced
    while its shorter side stays at least ``keep[0]`` and its longer side at least
    ``keep[1]`` pixels; 1 (not reduced) when it is that small already."""
    short, long = sorted(size)
    return max(1, min(short // max(1, keep[0]), long // max(1, keep[1])))


def _reduced_rgb(img: Image.Image, keep: tuple[int, int], background: tuple[int, int, int],
                 label: str) -> Image.Image:
    """An opened (not yet decoded) image larger than ``keep`` needs -> RGB reduced while it is
    decoded: a JPEG by libjpeg's scaled decoding (1/2, 1/4 or 1/8), then any image by the
    remaining whole factor, averaging boxes of pixels (RGB and gray images at once, others
    converted to RGB a strip of rows at a time), so no full-size copy is ever made; EXIF
    orientation is applied to the small result."""
    w, h = img.size
    factor = reduction((w, h), keep)
    if img.format in ("JPEG", "MPO"):
        img.draft(None, (-(-w // factor), -(-h // factor)))  # a power of 2 <= factor
    img.load()
    # Read once decoded, as ImageOps.exif_transpose does (a TIFF applies its own when decoded).
    with metadata_warnings(label):
        exif = img.getexif()
        method = _ORIENTATION.get(exif.get(ExifTags.Base.Orientation, 1))
        if method is not None:
            # The check ImageOps.exif_transpose makes when it writes the tags back: a tag that
            # cannot be written is a corrupt file, as on the full-size path.
            exif.tobytes()
    w, h = img.size
    factor = reduction((w, h), keep)
    # 16-bit and float images scale by their whole range, not each strip's.
    peak = None
    if img.mode in _WIDE_MODES:
        extrema = img.getextrema()
        peak = float(max(0, extrema[1] if isinstance(extrema[1], (int, float)) else 0))
    if img.mode in ("RGB", "L"):  # averaged as they are: the small result is all that is made
        out = _as_rgb(img.reduce(factor), background)
    else:
        # Converted to RGB a strip at a time. Small strips: each thread's allocator keeps the
        # largest it saw (glibc does not trim a thread arena's top), so large strips would
        # stay resident after the upload, in every server thread.
        out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
        rows = factor * max(1, (1 << 16) // (w * factor))  # about 64 thousand pixels
        for top in range(0, h, rows):
            part = _as_rgb(img.crop((0, top, w, min(h, top + rows))), background, peak)
            out.paste(part.reduce(factor), (0, top // factor))
    return out.transpose(method) if method is not None else out


def _label(source: Any, name: str | None) -> str:
    return name or (str(source) if not isinstance(source, Image.Image) else "image")


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def _wide_to_l(img: Image.Image, peak: float | None = None) -> Image.Image:
    """16-bit and float single-channel images -> 8-bit "L" (other modes unchanged). ``peak``:
    the image's largest value when ``img`` is a part of it (else its own)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max(initial=0) if peak is None else peak
        hi = 65535.0 if top > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max(initial=0) if peak is None else peak
        return Image.fromarray(np.clip(arr * (255.0 if top <= 1 else 1.0) + 0.5,
                                       0, 255).astype(np.uint8), "L")
    return img


def _as_rgb(img: Image.Image, background: tuple[int, int, int],
            peak: float | None = None) -> Image.Image:
    """Any mode -> 8-bit RGB, transparency flattened onto ``background``."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    img = _wide_to_l(img, peak)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def load_rgb(source: str | os.PathLike[str] | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS,
             background: tuple[int, int, int] = (255, 255, 255), name: str | None = None,
             keep: tuple[int, int] | None = None) -> Image.Image:
    """Open an image of any common format and mode as 8-bit RGB.

    EXIF orientation is applied; transparency (RGBA, LA, P with a transparent color) is
    flattened onto ``background``; grayscale, 16-bit, palette and CMYK images are converted.
    Images with more than ``max_pixels`` pixels are refused before decoding. Raises
    :class:`InputError` naming the file for anything unreadable.

    ``keep`` (shorter side, longer side): what the caller needs at most. A larger image is
    reduced by the largest whole factor that keeps both (see :func:`reduction`) while it is
    decoded, so it never costs memory for its full size in RGB; an image that small already
    is read exactly as without ``keep``.
    """
    label = _label(source, name)
    with _decoding(label):
        if keep is not None:
            img = _opened(source, max_pixels, label)
            if reduction(img.size, keep) > 1:
                return _reduced_rgb(img, keep, background, label)
            source = img
        return _as_rgb(_open(source, max_pixels, label), background)


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


# --------------------------------------------------------------------------- writing
def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2,
              background: int = 255, row_labels: Sequence[str] | None = None,
              col_labels: Sequence[str] | None = None) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one grid image with ``pad`` pixels between tiles; with
    ``row_labels``, a column on the left names each row, and with ``col_labels`` a band on
    top names each column (Pillow's default font, black; an empty string leaves a gap)."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, c),
                   background, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = images[i]
    if row_labels is None and col_labels is None:
        return grid
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(row_labels)} row labels for {nrows} rows")
    if col_labels is not None and len(col_labels) != ncols:
        raise ValueError(f"{len(col_labels)} column labels for {ncols} columns")
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def boxes(texts: Sequence[str] | None) -> list[tuple[float, float, float, float]]:
        return [probe.textbbox((0, 0), t, font=font) for t in texts or ()]

    row_boxes, col_boxes = boxes(row_labels), boxes(col_labels)
    left = max(b[2] for b in row_boxes) + 3 * pad + 2 if row_boxes else 0
    top = max(b[3] - b[1] for b in col_boxes) + 3 * pad if col_boxes else 0
    canvas = Image.new("RGB", (left + grid.shape[1], top + grid.shape[0]), (background,) * 3)
    canvas.paste(Image.fromarray(grid[..., :3]), (left, top))
    draw = ImageDraw.Draw(canvas)
    for r, (text, box) in enumerate(zip(row_labels or (), row_boxes, strict=True)):
        y = top + r * (h + pad) + (h - (box[3] - box[1])) / 2 - box[1]  # centred on the row
        draw.text((pad, y), text, fill=(0, 0, 0), font=font)
    for col, (text, box) in enumerate(zip(col_labels or (), col_boxes, strict=True)):
        x = left + col * (w + pad) + (w - (box[2] - box[0])) / 2 - box[0]  # centred on the column
        draw.text((x, pad - box[1]), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def mask_to_rgb(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """A [H, W] mask in [0, 1] as a [H, W, 3] uint8 gray image (for grids)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().float().cpu().numpy()
    m = np.asarray(mask, dtype=np.float32).reshape(mask.shape[-2:])
    g = np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


#: zlib level of the PNGs the command line writes (Pillow's default); the web editor serves
#: level 1 (fast). Edit records name the level so a replay writes the same bytes.
PNG_LEVEL = 6


def encode_png(array: np.ndarray, compress_level: int = PNG_LEVEL) -> bytes:
    """[H, W, 3] or [H, W] uint8 -> PNG bytes. The same pixels and level give the same bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG",
                                                      compress_level=int(compress_level))
    return buf.getvalue()


def decode_png_data_url(data_url: str, what: str = "image") -> bytes:
    """``data:image/png;base64,...`` -> the PNG bytes (:class:`InputError` otherwise)."""
    import base64
    import binascii
    import re

    m = re.match(r"^data:image/png;base64,([A-Za-z0-9+/=\s]*)$", data_url or "")
    if not m:
        raise InputError(f"{what}: expected a PNG data URL (data:image/png;base64,...)")
    try:
        return base64.b64decode(m.group(1), validate=False)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: invalid base64 data") from None


def png_data_url(array: np.ndarray, compress_level: int = PNG_LEVEL) -> str:
    """[H, W(, 3)] uint8 -> a PNG data URL (for records that carry their images)."""
    import base64

    return "data:image/png;base64," + base64.b64encode(encode_png(array, compress_level)).decode("ascii")


def save_png(array: np.ndarray, path: str | os.PathLike[str], overwrite: bool = False,
             compress_level: int = PNG_LEVEL) -> Path:
    """Write an [H, W, 3] (or [H, W]) uint8 array as PNG, atomically."""
    path = Path(path)
    data = encode_png(array, compress_level)
    with atomic_write(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
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


#: The longest output file name: the file system's 255 bytes less what the temporary file of
#: an atomic write adds (``.NAME.XXXXXXXX.tmp``).
MAX_NAME_BYTES = 255 - 14


def _file_keys(path: Path) -> list[object]:
    """What identifies a file: its resolved path and, if it exists, its device and inode."""
    keys: list[object] = []
    try:
        keys.append(str(Path(path).resolve()))
        st = os.stat(path)
        keys.append((st.st_dev, st.st_ino))
    except (OSError, RuntimeError):
        pass
    return keys


def check_writable(paths: Sequence[Path], overwrite: bool,
                   inputs: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Refuse before any work starts if an output would replace an existing file (a link
    counts as one), is one of the command's ``inputs`` (even with --overwrite), or has a name
    longer than the file system takes."""
    sources: dict[object, Path] = {}
    for i in inputs:
        for key in _file_keys(Path(i)):
            sources.setdefault(key, Path(i))
    for p in paths:
        if len(Path(p).name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise InputError(f"{p}: the file name is longer than {MAX_NAME_BYTES} bytes; rename "
                             "the input or choose a shorter name")
        same = next((sources[k] for k in _file_keys(Path(p)) if k in sources), None) \
            if sources else None
        if same is not None:
            raise InputError(f"{p} would replace the input {same}; write somewhere else with "
                             "--out")
    if overwrite:
        return
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}{more} already exist(s); pass --overwrite to replace")
