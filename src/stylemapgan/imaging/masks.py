"""Masks for local edits, from what people have: painted mask images (binary or soft, any size),
semantic label maps with a list of parts, or boxes in stylemap cells or pixels.

Every builder returns a float32 array ``[size, size]`` in ``[0, 1]`` at the model's image
resolution (1 = take the reference); :func:`as_tensor` turns it into the ``[1, 1, H, W]``
tensor the functions of :mod:`stylemapgan.editing` take.

Resampling, one way per purpose:

- :func:`to_square` (and every builder here): a map of any size to the model's square by soft
  area averaging when shrinking (bilinear when growing), the same for the command line, the
  web editor and the Python API, so a mask painted at any scale selects the same thing.
- to stylemap cells: :func:`stylemapgan.editing.resize_mask` (area average, or max pooling
  with ``mode="max"``), inside every edit.
- :func:`binarize`: a hard mask where a metric needs one (``evaluate``'s MSE_src/MSE_ref):
  a pixel belongs to the region when at least half of it is covered.

Coordinates: a mask image or label map is in the coordinates of the photo it belongs to. If
it has the photo's size (or the same aspect ratio, e.g. a 512 px label map of a 1024 px
photo) the photo's crop / pad / box is applied to it as well; a mask that already has the
model's square size is used as is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stylemapgan.errors import InputError
from stylemapgan.imaging.images import load_gray, load_labels
from stylemapgan.imaging.placement import Placement, fit_gray, parse_box

log = logging.getLogger(__name__)

# CelebAMask-HQ part ids as the reference implementation groups them (19 labels).
PARTS: dict[str, tuple[int, ...]] = {
    "background": (0,),
    "skin": (1,),
    "nose": (2,),
    "eyes": (3, 4, 5),
    "brows": (6, 7),
    "ears": (8, 9, 15),
    "mouth": (10, 11, 12),
    "hair": (13, 14),
    "neck": (16, 17),
    "cloth": (18,),
}
ALIASES = {
    "bg": "background", "face": "skin", "eye": "eyes", "brow": "brows", "eyebrow": "brows",
    "eyebrows": "brows", "ear": "ears", "lip": "mouth", "lips": "mouth", "clothes": "cloth",
    "clothing": "cloth",
}
UNITS = ("cells", "px")


def parse_parts(spec: str | Sequence[str | int]) -> list[int]:
    """``"hair,brows"``, ``"13,14"`` or a mix -> sorted label ids.

    Names are the CelebAMask-HQ groups of :data:`PARTS` (and a few aliases); numbers are
    taken as label ids directly, so label maps of other datasets work too.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    ids: set[int] = set()
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            v = int(item)
            if not 0 <= v < 65536:
                raise InputError(f"label id {v} out of range 0..65535")
            ids.add(v)
            continue
        if not item:
            continue
        key = ALIASES.get(item.lower(), item.lower())
        if key not in PARTS:
            raise InputError(f"unknown part {item!r}; use label ids or one of: {', '.join(PARTS)}")
        ids.update(PARTS[key])
    if not ids:
        raise InputError(f"no parts in {spec!r}; use e.g. hair,brows or 13,14")
    return sorted(ids)


def _to_model(arr: np.ndarray, placement: Placement | None, size: int, label: str,
              photo: str) -> np.ndarray:
    """Bring a per-pixel map in photo coordinates to the model's square."""
    h, w = arr.shape
    if (w, h) == (size, size) and (placement is None or placement.source_size != (w, h)):
        return arr.astype(np.float32)
    if placement is None:
        if w != h:
            raise InputError(f"{label}: a {w}x{h} mask needs the photo it belongs to; give a "
                             f"square mask ({size}x{size}) when the input is a saved stylemap")
        return to_square(arr, size)
    if (w, h) != placement.source_size:
        pw, ph = placement.source_size
        if abs(w / h - pw / ph) > 0.01 * (pw / ph):
            raise InputError(f"{label}: the mask is {w}x{h} but {photo} is {pw}x{ph}; give a mask "
                             f"of the photo's size (or aspect ratio), or of {size}x{size}")
        placement = placement.scaled_to(w, h)
    return fit_gray(arr, placement)


def to_square(arr: np.ndarray, size: int) -> np.ndarray:
    """A square float map [H, H] (e.g. a mask painted over the model's square at any scale)
    -> [size, size] float32 by soft area averaging (bilinear when growing)."""
    arr = np.asarray(arr, dtype=np.float32)
    h, w = arr.shape
    if (h, w) == (size, size):
        return arr
    if h != w:
        raise InputError(f"a {w}x{h} mask is not square; paint it over the model's square")
    return fit_gray(arr, Placement((w, h), (0, 0, w, h), (0, 0, w, h), size, "crop"))


def binarize(mask: np.ndarray | torch.Tensor, threshold: float = 0.5):
    """Hard 0/1 mask for metrics: 1 where the soft mask is >= ``threshold`` (default: at least
    half of the pixel covered). Same type as the input (float32)."""
    if isinstance(mask, torch.Tensor):
        return (mask >= threshold).to(torch.float32)
    return (np.asarray(mask) >= threshold).astype(np.float32)


def mask_from_png(data: bytes, size: int, what: str = "mask") -> np.ndarray:
    """PNG bytes (e.g. a canvas painted in the browser, any size, square) -> a [size, size]
    mask, read like a mask image file (opacity if the PNG has transparency, else gray)."""
    import io

    from PIL import Image

    from stylemapgan.imaging.images import _decoding

    with _decoding(what):  # not a PNG, truncated, ...: one InputError naming the mask
        img = Image.open(io.BytesIO(data), formats=("PNG",))
    return to_square(load_gray(img, name=what), size)


def mask_from_image(path: str | os.PathLike[str], size: int, placement: Placement | None = None,
                    *, photo: str = "the image", threshold: float | None = None) -> np.ndarray:
    """A painted mask image (white or opaque = edit; gray = partial) at the model's size.

    ``threshold`` makes it binary (values >= threshold become 1) before resizing.
    """
    arr = load_gray(path)
    if threshold is not None:
        arr = (arr >= threshold).astype(np.float32)
    return _to_model(arr, placement, size, str(path), photo)


def mask_from_labels(path: str | os.PathLike[str], parts: str | Sequence[str | int], size: int,
                     placement: Placement | None = None, *, photo: str = "the image") -> np.ndarray:
    """The pixels of a label map whose id is one of ``parts``, at the model's size (soft at
    the edges where the label map is shrunk)."""
    ids = parse_parts(parts)
    labels = load_labels(path)
    sel = np.isin(labels, ids).astype(np.float32)
    if not sel.any():
        present = sorted(int(v) for v in np.unique(labels))[:20]
        log.warning("%s: none of the labels %s occur (present: %s); the mask is empty",
                    path, ids, present)
    return _to_model(sel, placement, size, str(path), photo)


def mask_from_box(box: str | Sequence[float], size: int, *, units: str = "cells",
                  stylemap_size: int = 8) -> np.ndarray:
    """A rectangle LEFT,TOP,RIGHT,BOTTOM (right/bottom exclusive) in stylemap cells or in
    pixels of the model's image. Fractional pixel edges give soft (area) coverage."""
    if units not in UNITS:
        raise InputError(f"unknown units {units!r}; use cells or px")
    x0, y0, x1, y1 = parse_box(box, "box") if isinstance(box, str) else tuple(float(v) for v in box)
    limit = stylemap_size if units == "cells" else size
    if x0 < 0 or y0 < 0 or x1 > limit or y1 > limit or x1 <= x0 or y1 <= y0:
        raise InputError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is not inside the {limit}x{limit} "
                         f"{'stylemap' if units == 'cells' else 'image'} (units: {units})")
    scale = size / stylemap_size if units == "cells" else 1.0
    x0, y0, x1, y1 = x0 * scale, y0 * scale, x1 * scale, y1 * scale
    grid = np.arange(size, dtype=np.float64)
    # Coverage of each pixel [i, i+1) by the interval [a, b).
    cov_x = np.clip(np.minimum(grid + 1, x1) - np.maximum(grid, x0), 0, 1)
    cov_y = np.clip(np.minimum(grid + 1, y1) - np.maximum(grid, y0), 0, 1)
    return np.outer(cov_y, cov_x).astype(np.float32)


def as_tensor(mask: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """[H, W] array -> [1, 1, H, W] float tensor (checked to lie in [0, 1])."""
    t = (mask if isinstance(mask, torch.Tensor) else  # a read-only array (PIL) is copied
         torch.from_numpy(np.require(mask, requirements=("C_CONTIGUOUS", "WRITEABLE"))))
    t = t.float()
    if t.ndim == 2:
        t = t[None, None]
    if t.ndim != 4 or t.shape[:2] != (1, 1):
        raise InputError(f"a mask must be [H, W], got {tuple(t.shape)}")
    if t.numel() == 0 or not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise InputError("mask values must be finite and lie in [0, 1]")
    return t.to(device) if device is not None else t


@dataclass(frozen=True)
class MaskSpec:
    """What a user asked for, serializable into an edit record.

    kind: "image" (``path``), "labels" (``path`` and ``parts``), "box" (``box`` and
    ``units``) or "region" (named regions of the photo in ``parts``, e.g. ``mouth``; built by
    :func:`stylemapgan.data.regions.region_mask`, which needs the photo's face, not by
    :meth:`build`). ``invert`` swaps the selection; ``threshold`` binarizes a mask image.
    """

    kind: str
    path: str | None = None
    parts: str | None = None
    box: str | None = None
    units: str = "cells"
    invert: bool = False
    threshold: float | None = None

    def build(self, size: int, stylemap_size: int, placement: Placement | None = None,
              photo: str = "the image") -> np.ndarray:
        if self.kind == "image":
            m = mask_from_image(self.path, size, placement, photo=photo, threshold=self.threshold)
        elif self.kind == "labels":
            m = mask_from_labels(self.path, self.parts or "", size, placement, photo=photo)
        elif self.kind == "box":
            m = mask_from_box(self.box or "", size, units=self.units, stylemap_size=stylemap_size)
        elif self.kind == "region":
            raise InputError("named regions need the photo's face: build them with "
                             "stylemapgan.data.regions.region_mask")
        else:
            raise InputError(f"unknown mask kind {self.kind!r}")
        return (1.0 - m).astype(np.float32) if self.invert else m

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def describe(self) -> str:
        what = {"image": f"mask image {self.path}", "labels": f"parts {self.parts} of {self.path}",
                "box": f"box {self.box} ({self.units})",
                "region": f"region {self.parts}"}.get(self.kind, self.kind)
        return f"inverted {what}" if self.invert else what
