"""Where the model's square comes from in a user's photo, and the way back.

One module owns turning a photo of any shape into the ``size`` x ``size`` square the networks
take, and putting an edited square back into the photo. The CLI, the web editor, the training
data (``prepare-data``, :func:`stylemapgan.data.open_dataset`) and ``evaluate`` all use it.

A :class:`Placement` records the mapping. The ways to make one:

- ``crop`` (default): the largest centred square of the photo (or of ``box``).
- ``pad``: the photo (or ``box``) centred in the smallest square that holds it; the part of
  the square outside it is filled by repeating the photo's edge pixels (no black bars for the
  encoder to reproduce). Pasting back never writes the padding into the photo.
- ``stretch``: the photo (or ``box``) resized to a square, ignoring its aspect ratio.
- ``box=(left, top, right, bottom)``: any of the above restricted to that part of the photo
  (e.g. one face of a group photo).
- :func:`affine_placement`: a general affine map from the square to the photo (rotation,
  scale, shear, translation); parts of the square that fall outside the photo are filled by
  repeating its edge pixels.
- ``fit="aligned"``: an affine placement from a face's landmarks
  (:mod:`stylemapgan.imaging.faces`, the FFHQ recipe); outside the photo it is mirrored and
  faded toward a blurred, median-coloured background, as the recipe does.

Coordinates are continuous with pixel edges on integers: model pixel ``(i, j)`` covers
``[i, i+1) x [j, j+1)``. :meth:`Placement.matrix` maps square coordinates to photo
coordinates; :meth:`Placement.to_photo` / :meth:`Placement.from_photo` apply it and its
inverse, and :func:`paste_back` uses the inverse to put a result back at the photo's full
resolution. Resampling: Lanczos for photos, soft area averaging for masks
(see :mod:`stylemapgan.imaging.masks`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from stylemapgan.errors import InputError
from stylemapgan.imaging.images import load_rgb

Fit = Literal["crop", "pad", "stretch"]
FITS: tuple[str, ...] = ("crop", "pad", "stretch")
#: Most supersampling per axis when an affine placement shrinks the photo.
MAX_SUPERSAMPLE = 4

Box = tuple[int, int, int, int]
Matrix = tuple[float, float, float, float, float, float]

__all__ = [
    "FITS",
    "PASTE_MODES",
    "Fit",
    "Placement",
    "affine_placement",
    "fit_gray",
    "fit_rgb",
    "fit_square",
    "load_image",
    "parse_box",
    "paste_back",
    "place",
]


@dataclass(frozen=True)
class Placement:
    """Where the model's square input came from in a photo.

    ``source_size``: (width, height) of the photo (after EXIF orientation). ``region``: the
    part of the photo used, (left, top, right, bottom) in pixels (the whole photo or a user's
    box). ``square``: the area mapped onto the model's ``size`` x ``size`` square, in the same
    coordinates; with ``fit="pad"`` it extends past the region (the padding), with
    ``"stretch"`` it equals the region (not square). For ``fit="affine"``, ``affine`` holds
    the 2x3 matrix (row-major, six numbers) from square to photo coordinates, ``square`` is the
    bounding box of the mapped square and ``region`` that box clipped to the photo.
    """

    source_size: tuple[int, int]
    region: Box
    square: Box
    size: int
    fit: str = "crop"
    affine: Matrix | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source_size": list(self.source_size), "region": list(self.region),
                             "square": list(self.square), "size": self.size, "fit": self.fit}
        if self.affine is not None:
            d["affine"] = [float(v) for v in self.affine]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Placement:
        try:
            affine = d.get("affine")
            return cls(tuple(int(v) for v in d["source_size"]), tuple(int(v) for v in d["region"]),
                       tuple(int(v) for v in d["square"]), int(d["size"]),
                       str(d.get("fit", "crop")),
                       None if affine is None else tuple(float(v) for v in affine))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(f"unreadable placement record {d!r}") from None

    # ------------------------------------------------------------------ the mapping
    def matrix(self) -> np.ndarray:
        """The 2x3 float64 matrix taking square coordinates (x, y, 1) to photo coordinates."""
        if self.affine is not None:
            return np.asarray(self.affine, dtype=np.float64).reshape(2, 3)
        s0, t0, s1, t1 = self.square
        return np.array([[(s1 - s0) / self.size, 0.0, s0], [0.0, (t1 - t0) / self.size, t0]])

    def inverse_matrix(self) -> np.ndarray:
        """The 2x3 matrix taking photo coordinates back to square coordinates."""
        return _invert(self.matrix())

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Points [N, 2] (x, y) in square coordinates -> photo coordinates."""
        m = self.matrix()
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return p @ m[:, :2].T + m[:, 2]

    def from_photo(self, points: np.ndarray) -> np.ndarray:
        """Points [N, 2] (x, y) in photo coordinates -> square coordinates."""
        m = self.inverse_matrix()
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return p @ m[:, :2].T + m[:, 2]

    @property
    def is_axis_aligned(self) -> bool:
        return self.affine is None

    def scaled_to(self, width: int, height: int) -> Placement:
        """The same placement for a version of the photo of another size (e.g. a mask)."""
        sx, sy = width / self.source_size[0], height / self.source_size[1]

        def sc(b: Box) -> Box:
            return (round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy))

        affine = None
        if self.affine is not None:
            m = self.matrix() * np.array([[sx], [sy]])
            affine = tuple(float(v) for v in m.reshape(-1))
        return Placement((width, height), sc(self.region), sc(self.square), self.size, self.fit,
                         affine)


def _invert(m: np.ndarray) -> np.ndarray:
    a = np.vstack([m, [0.0, 0.0, 1.0]])
    det = float(np.linalg.det(a[:2, :2]))
    if not math.isfinite(det) or abs(det) < 1e-12:
        raise InputError("the placement's affine map is degenerate (it squashes the square "
                         "to a line or a point)")
    return np.linalg.inv(a)[:2]


# --------------------------------------------------------------------------- making placements
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
    centred square of the region; ``pad``: the region centred in a square (padded by
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


def affine_placement(source_size: tuple[int, int], size: int, matrix: Any) -> Placement:
    """A placement by a general affine map: ``matrix`` (2x3, or six numbers row-major) takes
    square coordinates (x, y, 1) in ``[0, size]`` to photo coordinates."""
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    if not np.isfinite(m).all():
        raise InputError("the placement's affine map has NaN or infinite entries")
    _invert(m)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    q = corners @ m[:, :2].T + m[:, 2]
    bx0, by0 = math.floor(q[:, 0].min()), math.floor(q[:, 1].min())
    bx1, by1 = math.ceil(q[:, 0].max()), math.ceil(q[:, 1].max())
    w, h = source_size
    region = (max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h))
    if region[2] <= region[0] or region[3] <= region[1]:
        raise InputError(f"the placement's square lies outside the {w}x{h} photo")
    return Placement((w, h), region, (bx0, by0, bx1, by1), size, "affine",
                     tuple(float(v) for v in m.reshape(-1)))


# --------------------------------------------------------------------------- photo -> square
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


def _scale(pl: Placement) -> float:
    """Photo pixels per model pixel of a placement (the larger axis)."""
    m = pl.matrix()
    return max(float(np.hypot(m[0, 0], m[1, 0])), float(np.hypot(m[0, 1], m[1, 1])))


def _supersample(pl: Placement) -> int:
    """Output supersampling for an affine placement: about one photo pixel per sample."""
    return int(min(MAX_SUPERSAMPLE, max(1, math.ceil(_scale(pl) - 1e-9))))


def _blur_rgb(a: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([_gaussian_blur(a[..., c], sigma) for c in range(a.shape[-1])], axis=-1)


def _fade_padding(padded: np.ndarray, inner: tuple[int, int, int, int], fade: float,
                  photo: np.ndarray) -> np.ndarray:
    """Mirror padding made to read as background: the further a padded pixel lies from the
    photo (``inner`` = its x0, y0, x1, y1 in ``padded``), the more it is blurred and pulled
    toward the photo's median colour (FFHQ recipe's idea). The photo's own pixels are kept."""
    h, w = padded.shape[:2]
    x0, y0, x1, y1 = inner
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    dist = np.maximum(np.maximum(x0 - xs, xs - (x1 - 1)).clip(0),
                      np.maximum(y0 - ys, ys - (y1 - 1)).clip(0))
    m = np.clip(dist / max(fade, 1.0), 0, 1)[..., None]
    out = padded.astype(np.float32)
    if float(m.max()) > 0:
        out = out + (_blur_rgb(out, max(fade / 5, 0.5)) - out) * np.clip(3 * m, 0, 1)
        median = np.median(photo.reshape(-1, photo.shape[-1]), axis=0).astype(np.float32)
        out = out + (median - out) * m
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _warp(arr: np.ndarray, pl: Placement, out_size: int, resample: Image.Resampling) -> np.ndarray:
    """Sample the photo ``arr`` ([H, W] float32 or [H, W, 3] uint8) on an ``out_size`` grid over
    the square of an affine placement. Only the part under the square is used; a photo much
    larger than the grid is first reduced by an integer factor (box filter). Outside the photo
    its edge pixels are repeated, or for ``fit="aligned"`` (faces) it is mirrored and faded
    toward a blurred background."""
    h, w = arr.shape[:2]
    m = pl.matrix().copy()
    k = out_size / pl.size
    # Crop to the square's bounding box (and a margin for the filters).
    s0, t0, s1, t1 = pl.square
    cx0, cy0 = min(max(s0 - 4, 0), w - 1), min(max(t0 - 4, 0), h - 1)
    cx1, cy1 = max(min(s1 + 4, w), cx0 + 1), max(min(t1 + 4, h), cy0 + 1)
    arr = arr[cy0:cy1, cx0:cx1]
    m[:, 2] -= (cx0, cy0)
    shrink = int(max(1, math.floor(_scale(pl) / k)))
    if shrink > 1 and min(arr.shape[:2]) >= 2 * shrink:
        mode = "F" if arr.dtype == np.float32 else "RGB"
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr), mode).reduce(shrink))
        m /= shrink
    h, w = arr.shape[:2]
    corners = np.array([[0, 0], [pl.size, 0], [0, pl.size], [pl.size, pl.size]], dtype=np.float64)
    q = corners @ m[:, :2].T + m[:, 2]
    px0, py0 = max(0, -math.floor(q[:, 0].min())) + 2, max(0, -math.floor(q[:, 1].min())) + 2
    px1, py1 = max(0, math.ceil(q[:, 0].max()) - w) + 2, max(0, math.ceil(q[:, 1].max()) - h) + 2
    pad = [(py0, py1), (px0, px1)] + [(0, 0)] * (arr.ndim - 2)
    if pl.fit == "aligned" and arr.ndim == 3:
        padded = np.pad(arr, pad, mode="reflect" if min(h, w) > 1 else "edge")
        side = _scale(pl) * pl.size / (1 if shrink == 1 else shrink)
        padded = _fade_padding(padded, (px0, py0, px0 + w, py0 + h), 0.1 * side, arr)
    else:
        padded = np.pad(arr, pad, mode="edge")
    img = Image.fromarray(np.ascontiguousarray(padded), "F" if padded.dtype == np.float32 else "RGB")
    data = (m[0, 0] / k, m[0, 1] / k, m[0, 2] + px0, m[1, 0] / k, m[1, 1] / k, m[1, 2] + py0)
    out = img.transform((out_size, out_size), Image.Transform.AFFINE, data, resample=resample)
    return np.asarray(out)


def fit_rgb(img: Image.Image, placement: Placement) -> np.ndarray:
    """Apply ``placement`` to an RGB photo: [size, size, 3] uint8 (Lanczos resampling; an
    affine placement is sampled bicubically at up to 4x and reduced with Lanczos)."""
    if img.size != placement.source_size:
        raise InputError(f"image is {img.size[0]}x{img.size[1]}, but the placement is for "
                         f"{placement.source_size[0]}x{placement.source_size[1]}")
    s = placement.size
    if not placement.is_axis_aligned:
        k = _supersample(placement)
        big = _warp(np.asarray(img.convert("RGB")), placement, s * k, Image.Resampling.BICUBIC)
        part = Image.fromarray(big)
        if k > 1:
            part = part.resize((s, s), Image.Resampling.LANCZOS)
        return np.asarray(part, dtype=np.uint8)
    part = Image.fromarray(_extract(np.asarray(img.convert("RGB")), placement))
    if part.size != (s, s):
        part = part.resize((s, s), Image.Resampling.LANCZOS)
    return np.asarray(part, dtype=np.uint8)


def _map_tensor(a: np.ndarray) -> torch.Tensor:
    """A float [H, W] map as a [1, 1, H, W] float32 tensor. Copied when it is not contiguous,
    float32 and writable (an array read from a PIL image is read-only, which torch.from_numpy
    warns about)."""
    return torch.from_numpy(np.require(a, np.float32, ("C_CONTIGUOUS", "WRITEABLE")))[None, None]


def fit_gray(arr: np.ndarray, placement: Placement) -> np.ndarray:
    """Apply ``placement`` (for a photo of the same size as ``arr``) to a float [H, W] map:
    [size, size] float32, area-averaged when shrinking (soft edges), bilinear when growing.

    This is the soft resampler for masks (:func:`stylemapgan.imaging.masks.to_square`)."""
    s = placement.size
    arr = np.asarray(arr, dtype=np.float32)
    if not placement.is_axis_aligned:
        k = _supersample(placement)
        big = _warp(arr, placement, s * k, Image.Resampling.BILINEAR)
        t = _map_tensor(big)
        if k > 1:
            t = torch.nn.functional.avg_pool2d(t, k)
        return t[0, 0].clamp(0, 1).numpy().astype(np.float32)
    part = _extract(arr, placement)
    if part.shape != (s, s):
        t = _map_tensor(part)
        if part.shape[0] >= s and part.shape[1] >= s:
            t = torch.nn.functional.adaptive_avg_pool2d(t, s)
        else:
            t = torch.nn.functional.interpolate(t, size=(s, s), mode="bilinear", align_corners=False)
        part = t[0, 0].clamp(0, 1).numpy()
    return part.astype(np.float32)


def fit_square(img: Image.Image, size: int, fit: str = "crop",
               box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """An RGB photo -> [size, size, 3] uint8 by :func:`place` and :func:`fit_rgb`."""
    return fit_rgb(img, place(img.size, size, fit, box))


def load_image(path: str | os.PathLike[str] | Image.Image, size: int, *, fit: str = "crop",
               box: tuple[float, float, float, float] | None = None,
               name: str | None = None) -> tuple[np.ndarray, Placement, Image.Image]:
    """Read a photo and fit it to the model: ([size, size, 3] uint8, placement, RGB photo), by
    :func:`stylemapgan.imaging.photos.photo_square` (which also aligns faces)."""
    from stylemapgan.imaging.photos import photo_square

    sq = photo_square(load_rgb(path, name=name), size, fit=fit, box=box, name=name or str(path))
    return sq.pixels, sq.placement, sq.photo


# --------------------------------------------------------------------------- square -> photo
def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float [H, W] map (edges replicated)."""
    if sigma <= 0:
        return a
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    t = _map_tensor(a)
    t = torch.nn.functional.pad(t, (r, r, r, r), mode="replicate")
    t = torch.nn.functional.conv2d(t, k.view(1, 1, 1, -1))
    t = torch.nn.functional.conv2d(t, k.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def _dilate(a: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return a
    t = _map_tensor(a)
    t = torch.nn.functional.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)
    return t[0, 0].numpy()


def _check_paste(base: np.ndarray, result: np.ndarray, placement: Placement) -> None:
    h, w = base.shape[:2]
    if (w, h) != placement.source_size:
        raise InputError(f"paste-back: the photo is {w}x{h}, but the edit was cut from a "
                         f"{placement.source_size[0]}x{placement.source_size[1]} image")
    if result.shape[:2] != (placement.size, placement.size):
        raise InputError(f"paste-back: result is {result.shape[1]}x{result.shape[0]}, expected "
                         f"{placement.size}x{placement.size}")


def _mask_alpha(m: np.ndarray, feather: float) -> np.ndarray:
    """A mask (already in photo pixels) -> the blend weight: binarised, grown by ``feather``
    and blurred, or used softly as it is when ``feather`` is 0."""
    m = (m > 1e-3).astype(np.float32) if feather > 0 else np.clip(m, 0, 1)
    return np.clip(_gaussian_blur(_dilate(m, round(feather)), feather / 2), 0, 1)


PASTE_MODES = ("replace", "residual")


def _resize_float(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, C] float32 -> [h, w, C] with Lanczos, channel by channel (signed values kept)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c]), "F")
                                .resize(size, Image.Resampling.LANCZOS))
                     for c in range(arr.shape[-1])], axis=-1)


def paste_back(photo: Image.Image | np.ndarray, result: np.ndarray, placement: Placement, *,
               feather: float = 8.0, mask: np.ndarray | None = None, mode: str = "replace",
               reconstruction: np.ndarray | None = None) -> np.ndarray:
    """Put an edited model-size image back into the full photo it was cut from.

    ``result``: [size, size, 3] uint8. The result is mapped back onto the area it came from
    (the inverse of the placement) and blended in with a feathered seam ``feather`` photo
    pixels wide. With ``mask`` ([size, size] in [0, 1], the part the edit may change) only
    that part (grown by ``feather``) is replaced and the rest of the photo keeps its original
    pixels; without it the whole region is. The padding of ``fit="pad"`` and whatever an affine
    placement maps outside the photo is never pasted. Returns the photo as [H, W, 3] uint8;
    where the blend weight is 0 the photo's pixels come back exactly.

    ``mode="replace"`` (default) pastes the result's pixels: best when the edit brings new
    content (another hairstyle, glasses), since the model's reconstruction replaces the photo
    there anyway. ``mode="residual"`` adds only the edit's change, ``result - reconstruction``
    (``reconstruction`` = G(w) of the unedited stylemap, also [size, size, 3] uint8), upsampled
    to the photo: the photo's own full-resolution detail survives wherever the edit changes
    little (a subtle attribute push, a colour change), and the model's reconstruction error
    never shows.
    """
    if mode not in PASTE_MODES:
        raise InputError(f"unknown paste-back mode {mode!r}; use replace or residual")
    base = np.asarray(photo.convert("RGB") if isinstance(photo, Image.Image) else photo)
    _check_paste(base, result, placement)
    diff = None
    if mode == "residual":
        if reconstruction is None or reconstruction.shape != result.shape:
            raise InputError("paste-back residual mode needs the reconstruction G(w) of the "
                             "unedited stylemap, of the result's size")
        diff = result.astype(np.float32) - reconstruction.astype(np.float32)
    if not placement.is_axis_aligned:
        return _paste_affine(base, result, placement, feather, mask, diff)
    h, w = base.shape[:2]
    s0, t0, s1, t1 = placement.square
    sw, sh = s1 - s0, t1 - t0
    if diff is None:
        big = np.asarray(Image.fromarray(result).resize((sw, sh), Image.Resampling.LANCZOS),
                         dtype=np.float32)
    else:
        big = _resize_float(diff, (sw, sh))
    # Alpha over the square, in photo pixels.
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        m = np.asarray(Image.fromarray(m, "F").resize((sw, sh), Image.Resampling.BILINEAR))
        alpha = _mask_alpha(m, feather)
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
    if diff is not None:
        src = out[cy0:cy1, cx0:cx1] + src
    out[cy0:cy1, cx0:cx1] = a * src + (1 - a) * out[cy0:cy1, cx0:cx1]
    # Where alpha is 0 the original values come back exactly (integers survive float32).
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _paste_affine(base: np.ndarray, result: np.ndarray, pl: Placement, feather: float,
                  mask: np.ndarray | None, diff: np.ndarray | None = None) -> np.ndarray:
    """paste_back for a general affine placement: the result and its mask are warped into the
    photo's pixels over the placement's (clipped) bounding box with the inverse map."""
    x0, y0, x1, y1 = pl.region
    bw, bh = x1 - x0, y1 - y0
    inv = pl.inverse_matrix()
    # PIL's AFFINE data maps output (photo box) coordinates to input (square) coordinates.
    data = (inv[0, 0], inv[0, 1], inv[0, 0] * x0 + inv[0, 1] * y0 + inv[0, 2],
            inv[1, 0], inv[1, 1], inv[1, 0] * x0 + inv[1, 1] * y0 + inv[1, 2])

    def warp(img: Image.Image, resample: Image.Resampling) -> np.ndarray:
        return np.asarray(img.transform((bw, bh), Image.Transform.AFFINE, data, resample=resample),
                          dtype=np.float32)

    if diff is None:
        big = warp(Image.fromarray(result), Image.Resampling.BICUBIC)
    else:
        big = np.stack([warp(Image.fromarray(np.ascontiguousarray(diff[..., c]), "F"),
                             Image.Resampling.BICUBIC) for c in range(3)], axis=-1)
    s = pl.size
    inside = warp(Image.fromarray(np.ones((s, s), np.float32), "F"), Image.Resampling.BILINEAR)
    # Bilinear sampling of the ones-square is fractional on its border: keep the fully inside part
    # hard and let the feather below make the seam.
    inside = (inside > 0.999).astype(np.float32)
    f = max(float(feather), 0.0)
    if f > 0:
        edge = _gaussian_blur(1.0 - _dilate(1.0 - inside, round(f)), f / 2)
        ramp = np.clip(edge, 0, 1) * inside
    else:
        ramp = inside
    if mask is not None:
        m = warp(Image.fromarray(np.asarray(mask, dtype=np.float32), "F"), Image.Resampling.BILINEAR)
        alpha = _mask_alpha(m * inside, feather) * ramp
    else:
        alpha = ramp
    out = base.astype(np.float32).copy()
    a = alpha[..., None]
    if diff is not None:
        big = out[y0:y1, x0:x1] + big
    out[y0:y1, x0:x1] = a * big + (1 - a) * out[y0:y1, x0:x1]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
