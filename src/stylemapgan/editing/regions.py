"""Regions of a reference moved onto an original: the one :class:`Region` type, its move, the
moved union and the area a paste-back covers.

The command line (``edit transplant --region ...``, ``edit local``'s mask), the web editor
(painted regions) and edit records all describe a region the same way: a mask in the
reference's image coordinates, which reference it comes from, and where it goes. Everything
that moves a region (its mask at image size for the grid and the paste-back, its mask and its
stylemap cells at every W+ resolution for the edit) goes through :meth:`Region.move`, so there
is one move.

A region moves by a translation of whole image pixels (``dx``, ``dy``) and may also be
scaled, rotated and mirrored (``scale``, ``angle``, ``flip``: its
:attr:`Region.transform`, a :class:`~stylemapgan.editing.transform.Transform` about the centre
of the mask's bounding box). A pure move is a shift of whole cells at every resolution (the
transplant of the paper); anything else warps each map with
:func:`~stylemapgan.editing.transform.warp`. Callers never do the move arithmetic themselves
(:meth:`Region.move`, :meth:`Region.placed_mask`, :attr:`Region.moved`), and they copy regions
with :func:`dataclasses.replace`, never by listing the fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from stylemapgan.errors import InputError

if TYPE_CHECKING:
    from stylemapgan.config import ModelConfig
    from stylemapgan.imaging.placement import Placement

__all__ = ["PASTE_AREAS", "Region", "moved_union", "parse_region", "paste_mask",
           "round_half_away", "shift"]

#: Where a paste-back puts the result: ``mask`` = the (moved) mask itself, which the paste-back
#: grows by its feather (what a user who masks a mouth expects: the mouth); ``footprint`` =
#: every pixel the edit can change (the mask grown by the model's receptive field; a mouth can
#: reach the whole face).
PASTE_AREAS = ("mask", "footprint")


def round_half_away(x: float) -> int:
    """Round to the nearest integer, halves away from zero (Python's ``round`` rounds halves
    to even, which would move +16 px and +48 px regions inconsistently)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate [N, C, H, W] by (dy, dx) cells, filling with zeros (no wrap-around)."""
    h, w = t.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return torch.zeros_like(t)
    padded = F.pad(t, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[..., y0: y0 + h, x0: x0 + w]


def _as_mask(mask: Any) -> torch.Tensor:
    from stylemapgan.editing.operations import check_mask

    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.require(mask, np.float32, ("C_CONTIGUOUS", "WRITEABLE")))
    return check_mask(mask, "region mask")


@dataclass(frozen=True, eq=False)
class Region:
    """A region of a reference image moved onto the original.

    mask: [1, 1, H, W] float in [0, 1] in the reference's image coordinates (a numpy [H, W]
        array or any shape :func:`~stylemapgan.editing.operations.check_mask` takes is
        accepted and converted).
    dy, dx: the move in pixels of the model's image (positive: down / right).
    reference: index of the reference in the batch of references.
    data_url: the mask as it was given (the web editor's PNG data URL), kept so a record
        replays exactly the same mask; None when the mask was made here.
    scale, angle, flip: the region scaled (0.25 to 4), rotated (degrees, counter-clockwise as
        seen) and mirrored (``""``, ``"h"``, ``"v"``, ``"hv"``) about the centre of its mask's
        bounding box, before the move (:attr:`transform`). Bad values (scale <= 0, NaN) are
        one-line input errors.
    """

    mask: torch.Tensor
    dy: int = 0
    dx: int = 0
    reference: int = 0
    data_url: str | None = None
    scale: float = 1.0
    angle: float = 0.0
    flip: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mask", _as_mask(self.mask))
        set_(self, "dy", int(self.dy))
        set_(self, "dx", int(self.dx))
        set_(self, "reference", int(self.reference))
        t = self.transform  # checks scale, angle and flip
        set_(self, "scale", t.scale)
        set_(self, "angle", t.angle)
        set_(self, "flip", t.flip)

    @property
    def transform(self):
        """The placement as a :class:`~stylemapgan.editing.transform.Transform` (pivot: the
        centre of the mask's bounding box)."""
        from stylemapgan.editing.transform import Transform

        return Transform(self.dx, self.dy, self.scale, self.angle, self.flip)

    @property
    def affine(self) -> bool:
        """Whether the region is scaled, rotated or mirrored (not only moved)."""
        return self.scale != 1.0 or self.angle % 360.0 != 0.0 or bool(self.flip)

    @property
    def moved(self) -> bool:
        """Whether the region goes anywhere but where it is (local editing when not)."""
        return self.dx != 0 or self.dy != 0 or self.affine

    @property
    def is_empty(self) -> bool:
        return not bool((self.mask > 0).any())

    def to(self, device: torch.device | str) -> Region:
        return replace(self, mask=self.mask.to(device))

    def offset_at(self, resolution: int, image_size: int) -> tuple[int, int]:
        """The move (dy, dx) in cells of a map of ``resolution`` for an image of ``image_size``
        (the whole move of a region that is not :attr:`affine`)."""
        scale = resolution / image_size
        return round_half_away(self.dy * scale), round_half_away(self.dx * scale)

    def pivot(self, image_size: int) -> tuple[float, float]:
        """The point (x, y, image pixels) the region is scaled, rotated and mirrored about:
        the centre of its mask's bounding box at ``image_size``."""
        from stylemapgan.editing.operations import resize_mask
        from stylemapgan.editing.transform import region_pivot

        return region_pivot(resize_mask(self.mask, image_size))

    def move(self, t: torch.Tensor, image_size: int, *, mode: str = "area",
             pad: str = "zeros") -> torch.Tensor:
        """Move a map [N, C, R, R] of the reference (a stylemap, or the mask at resolution R)
        to the region's place on the original: THE move of a region. A pure move shifts
        whole cells; a scaled, rotated or mirrored region is warped
        (:func:`~stylemapgan.editing.transform.warp`: bilinear, or nearest for
        ``mode="max"``; ``pad``: what lies outside the map, ``"border"`` for stylemaps)."""
        if not self.affine:
            return shift(t, *self.offset_at(t.shape[-1], image_size))
        from stylemapgan.editing.transform import warp

        return warp(t, self.transform, image_size, self.pivot(image_size), mode, pad=pad)

    def placed_mask(self, resolution: int, image_size: int, mode: str = "area") -> torch.Tensor:
        """The mask at ``resolution`` (area-averaged, or max-pooled for ``mode="max"``) at its
        new place: [1, 1, R, R]."""
        from stylemapgan.editing.operations import resize_mask

        return self.move(resize_mask(self.mask, resolution, mode), image_size, mode=mode)

    def check_on_image(self, image_size: int, what: str = "the region") -> None:
        """A one-line :class:`InputError` when the region selects nothing or lands entirely
        off the ``image_size`` square."""
        from stylemapgan.editing.operations import resize_mask
        from stylemapgan.editing.transform import check_on_image

        if not bool((resize_mask(self.mask, image_size) > 0).any()):
            raise InputError(f"{what} selects nothing (its mask is empty)")
        check_on_image(self.mask, self.transform, image_size, self.pivot(image_size), what)

    def describe(self) -> dict[str, Any]:
        """What a record keeps of the region (the mask as ``data_url`` or a PNG made here;
        ``scale``, ``angle``, ``flip`` only when the region is :attr:`affine`, so a record of
        a pure move reads as before)."""
        d: dict[str, Any] = {"reference": self.reference, "dx": self.dx, "dy": self.dy}
        if self.affine:
            d.update(scale=self.scale, angle=self.angle, flip=self.flip)
        d.update(coverage=round(float(self.mask.float().mean()), 6),
                 mask=self.data_url or _mask_data_url(self.mask))
        return d


def _mask_data_url(mask: torch.Tensor) -> str:
    """A mask given without its original PNG (Python callers): an 8-bit gray PNG data URL."""
    from stylemapgan.imaging.images import png_data_url

    m = mask.detach().float().cpu().reshape(mask.shape[-2:]).numpy()
    return png_data_url(np.clip(np.rint(m * 255.0), 0, 255).astype(np.uint8), 1)


def moved_union(regions: Sequence[Region], size: int, mode: str = "area") -> np.ndarray:
    """Where the regions land on the original: the union (maximum) of their masks at their
    new places (scaled, rotated, mirrored), float32 [size, size] in [0, 1] (zeros without
    regions)."""
    union = torch.zeros(1, 1, size, size)
    for r in regions:
        union = torch.maximum(union, r.placed_mask(size, size, mode).float().cpu())
    return union[0, 0].numpy()


def paste_mask(config: ModelConfig, mask: np.ndarray, *, area: str, space: str = "wplus",
               mode: str = "area") -> np.ndarray:
    """The part of the model's square a paste-back covers, float32 [size, size]: ``mask``
    itself (``area="mask"``) or every pixel an edit of ``mask`` in ``space`` can change
    (``"footprint"``: :func:`~stylemapgan.editing.operations.edit_footprint`)."""
    if area not in PASTE_AREAS:
        raise InputError(f"unknown paste area {area!r}; use {' or '.join(PASTE_AREAS)}")
    m = np.asarray(mask, dtype=np.float32)
    if area == "mask" or not m.any():
        return m
    from stylemapgan.editing.operations import edit_footprint

    t = torch.from_numpy(np.require(m, np.float32, ("C_CONTIGUOUS", "WRITEABLE")))[None, None]
    return edit_footprint(config, t, space, mode)[0, 0].numpy().astype(np.float32)


# --------------------------------------------------------------------------- from words
#: The words of a region on the command line (``--region KEY=VALUE ...``).
REGION_KEYS = ("ref", "box", "mask", "labels", "parts", "move", "to", "units", "scale", "angle",
               "flip")


def _pair(text: str, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        a = b = math.nan
    if not (math.isfinite(a) and math.isfinite(b)):
        raise InputError(f"region {what}={text!r}: expected two finite numbers X,Y")
    return a, b


def parse_region(tokens: Sequence[str], index: int, *, size: int, cells: int, units: str,
                 references: Sequence[tuple[str, Placement | None]]) -> tuple[Region, str | None]:
    """A region from its ``KEY=VALUE`` words (``ref``, one of ``box``/``mask``/``labels`` +
    ``parts``, ``move`` or ``to``, ``units``, and ``scale``, ``angle``, ``flip``), its mask
    built in the coordinates of the reference it names (``references``: (path, placement) of
    each). Returns the region and the mask or label file it read (None for a box). Errors
    name the region by ``index``.

    ``scale``/``angle``/``flip`` act about the centre of the region's bounding box, before the
    move. ``to=X,Y`` puts the top-left corner of the bounding box of the region as it lands
    (scaled, rotated, mirrored) at X,Y; without a transform that is the mask's own top-left
    corner. Moves are rounded to whole pixels of the model's image."""
    from stylemapgan.imaging.masks import MaskSpec
    from stylemapgan.imaging.placement import parse_box

    i = index
    kv: dict[str, str] = {}
    for tok in tokens:
        k, _, v = tok.partition("=")
        if k not in REGION_KEYS:
            raise InputError(f"region {i}: unknown key {k!r}; use {', '.join(sorted(REGION_KEYS))}")
        kv[k] = v
    units = kv.get("units", units)
    if units not in ("cells", "px"):
        raise InputError(f"region {i}: units must be cells or px, got {units!r}")
    try:
        r = int(kv.get("ref", "0"))
    except ValueError:
        raise InputError(f"region {i}: ref must be an integer index into --ref") from None
    if not 0 <= r < len(references):
        raise InputError(f"region {i}: ref={r}, but {len(references)} reference(s) were given "
                         f"(indices 0..{len(references) - 1})")
    kinds = [k for k in ("box", "mask", "labels") if k in kv]
    if len(kinds) != 1:
        raise InputError(f"region {i}: give exactly one of box=, mask=, labels= (got {kinds or 'none'})")
    if kinds[0] == "box":
        parse_box(kv["box"], f"region {i}: box=")  # an error names the region
        spec = MaskSpec("box", box=kv["box"], units=units)
    elif kinds[0] == "mask":
        spec = MaskSpec("image", path=kv["mask"])
    else:
        if "parts" not in kv:
            raise InputError(f"region {i}: labels= needs parts=, e.g. parts=eyes")
        spec = MaskSpec("labels", path=kv["labels"], parts=kv["parts"])
    path, placement = references[r]
    m = spec.build(size, cells, placement, photo=str(path))
    if float(m.max()) == 0:
        raise InputError(f"region {i}: the region ({spec.describe()}) selects nothing")
    scale = size / cells if units == "cells" else 1.0
    if "move" in kv and "to" in kv:
        raise InputError(f"region {i}: give move= or to=, not both")
    try:
        placed = Region(m, reference=r, scale=kv.get("scale", 1.0), angle=kv.get("angle", 0.0),
                        flip=kv.get("flip", ""))
    except InputError as exc:
        raise InputError(f"region {i}: {exc}") from None
    if "to" in kv:
        tx, ty = _pair(kv["to"], "to")
        x0, y0 = _placed_top_left(placed, size)
        dx, dy = tx * scale - x0, ty * scale - y0
    elif "move" in kv:
        mx, my = _pair(kv["move"], "move")
        dx, dy = mx * scale, my * scale
    else:
        dx = dy = 0.0
    dx, dy = round(dx), round(dy)
    if abs(dx) >= size or abs(dy) >= size:
        raise InputError(f"region {i}: a move of ({dx}, {dy}) px leaves the {size}x{size} image")
    region = replace(placed, dx=dx, dy=dy)
    region.check_on_image(size, f"region {i}")
    return region, spec.path


def _placed_top_left(region: Region, size: int) -> tuple[float, float]:
    """The top-left corner (x, y) of the bounding box of ``region``'s selected pixels (their
    corners) after its scale, rotation and mirror (before its move), image pixels."""
    from stylemapgan.editing.operations import resize_mask

    m = resize_mask(region.mask, size)[0, 0].cpu().numpy()
    ys, xs = np.nonzero(m > 0)
    if not region.affine:
        return float(xs.min()), float(ys.min())
    corners = np.concatenate([np.stack([xs + a, ys + b], 1) for a in (0, 1) for b in (0, 1)])
    c = np.array(region.pivot(size))
    q = c + (corners - c) @ region.transform.linear().T
    return float(q[:, 0].min()), float(q[:, 1].min())
