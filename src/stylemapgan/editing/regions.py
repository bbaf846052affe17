"""Regions of a reference moved onto an original: the one :class:`Region` type, its move, the
moved union and the area a paste-back covers.

The command line (``edit transplant --region ...``, ``edit local``'s mask), the web editor
(painted regions) and edit records all describe a region the same way: a mask in the
reference's image coordinates, which reference it comes from, and where it goes. Everything
that moves a region (its mask at image size for the grid and the paste-back, its mask and its
stylemap cells at every W+ resolution for the edit) goes through :meth:`Region.move`, so there
is one move.

Today a region moves by a translation of whole image pixels (``dx``, ``dy``). The move is
kept behind :meth:`Region.move`, :meth:`Region.offset_at` and :attr:`Region.moved`, so a
region can later carry a general affine transform (scale, rotation, flip) without its callers
changing: they never do the move arithmetic themselves, and they copy regions with
:func:`dataclasses.replace`, never by listing the fields.
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
    """

    mask: torch.Tensor
    dy: int = 0
    dx: int = 0
    reference: int = 0
    data_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", _as_mask(self.mask))
        object.__setattr__(self, "dy", int(self.dy))
        object.__setattr__(self, "dx", int(self.dx))
        object.__setattr__(self, "reference", int(self.reference))

    @property
    def moved(self) -> bool:
        """Whether the region goes anywhere but where it is (local editing when not)."""
        return self.dx != 0 or self.dy != 0

    @property
    def is_empty(self) -> bool:
        return not bool((self.mask > 0).any())

    def to(self, device: torch.device | str) -> Region:
        return replace(self, mask=self.mask.to(device))

    def offset_at(self, resolution: int, image_size: int) -> tuple[int, int]:
        """The move (dy, dx) in cells of a map of ``resolution`` for an image of ``image_size``."""
        scale = resolution / image_size
        return round_half_away(self.dy * scale), round_half_away(self.dx * scale)

    def move(self, t: torch.Tensor, image_size: int) -> torch.Tensor:
        """Move a map [N, C, R, R] of the reference (a stylemap, or the mask at resolution R)
        to the region's place on the original: THE move of a region."""
        return shift(t, *self.offset_at(t.shape[-1], image_size))

    def placed_mask(self, resolution: int, image_size: int) -> torch.Tensor:
        """The mask at ``resolution`` (area-averaged) at its new place: [1, 1, R, R]."""
        from stylemapgan.editing.operations import resize_mask

        return self.move(resize_mask(self.mask, resolution), image_size)

    def describe(self) -> dict[str, Any]:
        """What a record keeps of the region (the mask as ``data_url`` or a PNG made here)."""
        return {"reference": self.reference, "dx": self.dx, "dy": self.dy,
                "coverage": round(float(self.mask.float().mean()), 6),
                "mask": self.data_url or _mask_data_url(self.mask)}


def _mask_data_url(mask: torch.Tensor) -> str:
    """A mask given without its original PNG (Python callers): an 8-bit gray PNG data URL."""
    from stylemapgan.imaging.images import png_data_url

    m = mask.detach().float().cpu().reshape(mask.shape[-2:]).numpy()
    return png_data_url(np.clip(np.rint(m * 255.0), 0, 255).astype(np.uint8), 1)


def moved_union(regions: Sequence[Region], size: int) -> np.ndarray:
    """Where the regions land on the original: the union (maximum) of their masks at their
    new places, float32 [size, size] in [0, 1] (zeros without regions)."""
    union = torch.zeros(1, 1, size, size)
    for r in regions:
        union = torch.maximum(union, r.placed_mask(size, size).float().cpu())
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
REGION_KEYS = ("ref", "box", "mask", "labels", "parts", "move", "to", "units")


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
    ``parts``, ``move`` or ``to``, ``units``), its mask built in the coordinates of the
    reference it names (``references``: (path, placement) of each). Returns the region and
    the mask or label file it read (None for a box). Errors name the region by ``index``."""
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
    if "to" in kv:
        ys, xs = np.nonzero(m > 0)
        tx, ty = _pair(kv["to"], "to")
        dx, dy = tx * scale - xs.min(), ty * scale - ys.min()
    elif "move" in kv:
        mx, my = _pair(kv["move"], "move")
        dx, dy = mx * scale, my * scale
    else:
        dx = dy = 0.0
    dx, dy = round(dx), round(dy)
    if abs(dx) >= size or abs(dy) >= size:
        raise InputError(f"region {i}: a move of ({dx}, {dy}) px leaves the {size}x{size} image")
    return Region(m, dy=dy, dx=dx, reference=r), spec.path
