"""Affine transplantation: a region of a reference moved, scaled, rotated and mirrored onto the
original, done in stylemap space.

:func:`stylemapgan.editing.operations.transplant` moves a region by whole cells. Here each
region carries a :class:`Transform`, and every W+ layer's stylemap of the reference (and the
region's mask with it, brought to that layer's resolution as today) is warped by that one
transform at the layer's own resolution before the blend, which is today's:
``lerp(original, warped reference, warped mask * alpha)``.

The transform, in the reference image's pixels (the model's square, continuous coordinates,
pixel centres at +0.5)::

    q = pivot + move + R(angle) . scale . F(flip) . (p - pivot)

a point ``p`` of the reference goes to ``q`` of the result: mirrored (``flip``: ``h`` left-right,
``v`` top-bottom, ``hv`` both) and scaled (0.25 to 4) and rotated (degrees, counter-clockwise
as seen) about ``pivot`` (default: the centre of the region's bounding box), then moved by
``move`` (dx, dy; positive: right, down).

Sampling, per layer: where the transform maps the layer's cells onto its cells (scale 1, a
multiple of 90 degrees, any flip) the cells are copied, with the offset rounded half away from
zero; a pure move is exactly :func:`~stylemapgan.editing.operations.transplant`'s shift, so
an identity or whole-cell move gives today's result to the bit. Otherwise the cells are
resampled: bilinearly (``mode="area"``) or nearest (``mode="max"``, with the mask brought to
the layer by max pooling, as ``--mask-mode max``). Outside the reference, the mask is 0 (and
the stylemap repeats its border, which only a soft mask edge can see).

A :class:`~stylemapgan.editing.regions.Region` carries its transform (``scale``, ``angle``,
``flip`` beside its move; :attr:`~stylemapgan.editing.regions.Region.transform`), and
:func:`stylemapgan.editing.operations.transplant` (so :meth:`Editor.transplant
<stylemapgan.editing.editor.Editor.transplant>`, ``edit transplant --region ... scale=S
angle=DEG flip=h`` and the web editor) runs :func:`transplant_affine` for any region that is
not a pure move. :meth:`Transform.to_dict` and :meth:`Transform.from_dict` are a record form,
:meth:`Transform.from_params` reads the ``move=``, ``scale=``, ``angle=``, ``flip=`` values a
command line or form gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stylemapgan.editing.operations import MaskMode, Region, check_mask, resize_mask, shift
from stylemapgan.errors import InputError

#: The range of :attr:`Transform.scale`.
SCALE_RANGE = (0.25, 4.0)
FLIPS = ("", "h", "v", "hv")


def _finite(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return v


@dataclass(frozen=True)
class Transform:
    """How a transplanted region is placed: ``dx``, ``dy`` (the move, reference pixels),
    ``scale`` (0.25 to 4), ``angle`` (degrees, counter-clockwise as seen), ``flip`` (``""``,
    ``"h"``, ``"v"`` or ``"hv"``) about ``pivot`` ((x, y) in reference pixels; None: the centre
    of the region's bounding box). Bad values are one-line :class:`InputError`\\ s (a
    ``ValueError``)."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    angle: float = 0.0
    flip: str = ""
    pivot: tuple[float, float] | None = field(default=None)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "dx", _finite(self.dx, "move dx"))
        set_(self, "dy", _finite(self.dy, "move dy"))
        scale = _finite(self.scale, "scale")
        if scale <= 0:
            raise InputError(f"scale must be > 0 (a factor, {SCALE_RANGE[0]:g} to "
                             f"{SCALE_RANGE[1]:g}), got {scale:g}")
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            raise InputError(f"scale {scale:g} is out of range; use {SCALE_RANGE[0]:g} to "
                             f"{SCALE_RANGE[1]:g}")
        set_(self, "scale", scale)
        set_(self, "angle", _finite(self.angle, "angle"))
        flip = "".join(sorted(str(self.flip or "").lower()))
        if flip not in FLIPS:
            raise InputError(f"flip must be h, v or hv, got {self.flip!r}")
        set_(self, "flip", flip)
        if self.pivot is not None:
            try:
                px, py = self.pivot
            except (TypeError, ValueError):
                raise InputError(f"pivot must be two numbers x,y, got {self.pivot!r}") from None
            set_(self, "pivot", (_finite(px, "pivot x"), _finite(py, "pivot y")))

    # ------------------------------------------------------------------ forms
    @property
    def is_move(self) -> bool:
        """Only a move (no scale, rotation or flip): today's shift."""
        return self.scale == 1.0 and self.angle % 360.0 == 0.0 and not self.flip

    def linear(self) -> np.ndarray:
        """The 2x2 matrix ``R(angle) . scale . F(flip)`` acting on (x, y), y down."""
        a = math.radians(self.angle)
        c, s = math.cos(a), math.sin(a)
        q = round(self.angle / 90.0)
        if abs(self.angle - 90.0 * q) < 1e-9:  # exact quarter turns: no cos(90°) = 6e-17
            c, s = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[q % 4]
        rot = np.array([[c, s], [-s, c]])  # counter-clockwise as seen, with y pointing down
        flip = np.diag([-1.0 if "h" in self.flip else 1.0, -1.0 if "v" in self.flip else 1.0])
        return rot @ (self.scale * flip)

    def to_dict(self) -> dict[str, Any]:
        """The record form (JSON numbers and strings); :meth:`from_dict` reads it back."""
        d: dict[str, Any] = {"move": [self.dx, self.dy], "scale": self.scale,
                             "angle": self.angle, "flip": self.flip}
        if self.pivot is not None:
            d["pivot"] = list(self.pivot)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Transform:
        if not isinstance(d, Mapping):
            raise InputError(f"a transform record must be an object, got {type(d).__name__}")
        unknown = set(d) - {"move", "scale", "angle", "flip", "pivot"}
        if unknown:
            raise InputError(f"unknown transform field(s): {', '.join(sorted(unknown))}")
        move = d.get("move", (0.0, 0.0))
        if not isinstance(move, (list, tuple)) or len(move) != 2:
            raise InputError(f"transform move must be [dx, dy], got {move!r}")
        return cls(move[0], move[1], d.get("scale", 1.0), d.get("angle", 0.0),
                   d.get("flip", ""), d.get("pivot"))

    @classmethod
    def from_params(cls, params: Mapping[str, str], *, unit: float = 1.0) -> Transform:
        """From ``move=DX,DY scale=S angle=DEG flip=h|v|hv`` as a command line or form gives
        them (strings; absent keys keep the defaults). ``unit``: reference pixels per unit of
        ``move`` (a cell's side for ``units=cells``)."""
        dx = dy = 0.0
        if "move" in params:
            parts = str(params["move"]).split(",")
            if len(parts) != 2:
                raise InputError(f"move={params['move']}: give DX,DY, e.g. move=2,-1")
            dx = _finite(parts[0].strip(), "move dx") * unit
            dy = _finite(parts[1].strip(), "move dy") * unit
        scale = _finite(params["scale"], "scale") if "scale" in params else 1.0
        angle = _finite(params["angle"], "angle") if "angle" in params else 0.0
        return cls(dx, dy, scale, angle, params.get("flip", ""))

    def describe(self) -> str:
        parts = [f"move={self.dx:g},{self.dy:g}"]
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        if self.angle:
            parts.append(f"angle={self.angle:g}")
        if self.flip:
            parts.append(f"flip={self.flip}")
        return " ".join(parts)


@dataclass(frozen=True)
class AffineRegion:
    """A region of a reference (``mask`` [1, 1, H, W] in [0, 1], the reference's image
    coordinates) placed on the original by ``transform``."""

    mask: torch.Tensor
    transform: Transform = field(default_factory=Transform)
    reference: int = 0

    @classmethod
    def from_region(cls, region: Region) -> AffineRegion:
        """A :class:`~stylemapgan.editing.regions.Region` (its move, scale, angle, flip)."""
        return cls(region.mask, region.transform, region.reference)


# --------------------------------------------------------------------------- geometry
def region_pivot(mask: torch.Tensor) -> tuple[float, float]:
    """The centre (x, y) of the bounding box of a mask's selected pixels [.., H, W], in its
    pixels (continuous coordinates)."""
    m = mask.reshape(mask.shape[-2:]) if mask.ndim > 2 else mask
    ys, xs = torch.nonzero(m > 0, as_tuple=True)
    if ys.numel() == 0:
        raise InputError("the region selects nothing (its mask is empty)")
    return ((int(xs.min()) + int(xs.max()) + 1) / 2.0, (int(ys.min()) + int(ys.max()) + 1) / 2.0)


def _round_half_away(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _signed_permutation(lin: np.ndarray) -> np.ndarray | None:
    r = np.round(lin)
    if np.abs(lin - r).max() > 1e-9 or not np.array_equal(np.abs(r) @ np.ones(2), np.ones(2)) \
            or not np.array_equal(np.abs(r).T @ np.ones(2), np.ones(2)):
        return None
    return r.astype(np.int64)


def warp(t: torch.Tensor, transform: Transform, image_size: int, pivot: tuple[float, float],
         mode: MaskMode = "area", *, pad: str = "zeros") -> torch.Tensor:
    """``t`` [N, C, R, R] (a stylemap or a mask at resolution R of an ``image_size`` image)
    as ``transform`` places it: out(q) = t(p) where q = transform(p). ``pad``: what lies
    outside ``t`` (``"zeros"`` or ``"border"``, where sampling needs it)."""
    res = t.shape[-1]
    if t.shape[-2] != res:
        raise InputError(f"warp needs square maps, got {tuple(t.shape)}")
    k = res / image_size  # cells per pixel
    if transform.is_move:
        return shift(t, _round_half_away(transform.dy * k), _round_half_away(transform.dx * k))
    lin = transform.linear()
    inv = np.linalg.inv(lin)
    c = np.array(pivot, dtype=np.float64) * k
    d = np.array([transform.dx, transform.dy]) * k
    perm = _signed_permutation(lin)
    if perm is not None:
        # Cells onto cells: source index = inv @ j + off, off rounded as the moves are.
        inv_i = perm.T  # a signed permutation's inverse
        off = c + inv @ (0.5 - c - d) - 0.5
        off_i = np.array([_round_half_away(float(v)) for v in off])
        j = torch.arange(res, device=t.device)
        jy, jx = torch.meshgrid(j, j, indexing="ij")
        sx = int(inv_i[0, 0]) * jx + int(inv_i[0, 1]) * jy + int(off_i[0])
        sy = int(inv_i[1, 0]) * jx + int(inv_i[1, 1]) * jy + int(off_i[1])
        ok = (sx >= 0) & (sx < res) & (sy >= 0) & (sy < res)
        out = t[..., sy.clamp(0, res - 1), sx.clamp(0, res - 1)]
        return torch.where(ok, out, torch.zeros((), dtype=t.dtype, device=t.device))
    # Resample: the source point of every output cell centre, in grid_sample's [-1, 1].
    j = torch.arange(res, dtype=torch.float64) + 0.5
    qy, qx = torch.meshgrid(j, j, indexing="ij")
    inv_t = torch.from_numpy(inv)
    rx, ry = qx - c[0] - d[0], qy - c[1] - d[1]
    px = c[0] + inv_t[0, 0] * rx + inv_t[0, 1] * ry
    py = c[1] + inv_t[1, 0] * rx + inv_t[1, 1] * ry
    grid = torch.stack([2 * px / res - 1, 2 * py / res - 1], dim=-1)[None].float()
    grid = grid.to(t.device).expand(t.shape[0], -1, -1, -1)
    out = F.grid_sample(t.float(), grid, mode="nearest" if mode == "max" else "bilinear",
                        padding_mode=pad, align_corners=False)
    return out.to(t.dtype)


def placed_mask(mask: torch.Tensor, transform: Transform, image_size: int,
                mode: MaskMode = "area") -> torch.Tensor:
    """Where a region lands on the result: its mask [1, 1, H, W] brought to the image's
    resolution and placed by ``transform`` (for a paste-back union or a preview)."""
    m = resize_mask(check_mask(mask), image_size, mode)
    pivot = transform.pivot or region_pivot(m)
    return warp(m, transform, image_size, pivot, mode)


def check_on_image(mask: torch.Tensor, transform: Transform, image_size: int,
                    pivot: tuple[float, float], what: str) -> None:
    """A region whose every selected pixel lands outside the image is an error."""
    m = resize_mask(mask, image_size)[0, 0]
    ys, xs = torch.nonzero(m > 0, as_tuple=True)
    if ys.numel() == 0:
        raise InputError(f"{what} selects nothing (its mask is empty)")
    p = torch.stack([xs, ys], 1).double().numpy() + 0.5
    c = np.array(pivot)
    q = c + np.array([transform.dx, transform.dy]) + (p - c) @ transform.linear().T
    inside = (q >= 0).all(1) & (q < image_size).all(1)
    if not inside.any():
        raise InputError(f"{what}: {transform.describe()} moves it entirely off the "
                         f"{image_size}x{image_size} image")


# --------------------------------------------------------------------------- the edit
def transplant_affine(styles_src: Sequence[torch.Tensor], styles_refs: Sequence[torch.Tensor],
                      regions: Sequence[AffineRegion | Region], image_size: int,
                      alpha: float | Sequence[float] | torch.Tensor = 1.0,
                      mode: MaskMode = "area") -> list[torch.Tensor]:
    """:func:`~stylemapgan.editing.operations.transplant` with each region placed by its
    :class:`Transform` (a plain ``Region`` is a move). ``styles_src``: W+ (or ``[w]``) of the
    original, batch 1; ``styles_refs``: of the references, batch R; ``alpha``: one value or K
    for K interpolation steps; ``mode``: ``"area"`` (bilinear warps; the mask brought to each
    layer by area averaging, as today) or ``"max"`` (nearest; max pooling)."""
    if not regions:
        raise InputError("transplant needs at least one region")
    if mode not in ("area", "max"):
        raise InputError(f"unknown mask mode {mode!r}; use 'area' or 'max'")
    if len(styles_src) != len(styles_refs):
        raise InputError("transplant: the original's and the references' W+ pyramids have "
                         "different lengths")
    n_refs = styles_refs[0].shape[0]
    for s, r in zip(styles_src, styles_refs, strict=True):
        if s.shape[1:] != r.shape[1:]:
            raise InputError(f"transplant: shapes {tuple(s.shape)} and {tuple(r.shape)} do "
                             "not match")
        if s.shape[0] != 1:
            raise InputError("transplant edits one original at a time")
    regs = [r if isinstance(r, AffineRegion) else AffineRegion.from_region(r) for r in regions]
    masks, pivots = [], []
    for i, reg in enumerate(regs):
        if not 0 <= reg.reference < n_refs:
            raise InputError(f"region {i} uses reference {reg.reference}, but {n_refs} "
                             "reference(s) were given")
        m = check_mask(reg.mask, f"region {i} mask")
        pivot = reg.transform.pivot or region_pivot(resize_mask(m, image_size))
        check_on_image(m, reg.transform, image_size, pivot, f"region {i}")
        masks.append(m)
        pivots.append(pivot)
    out = []
    for s, refs in zip(styles_src, styles_refs, strict=True):
        res = s.shape[-1]
        a = torch.as_tensor(alpha.detach() if isinstance(alpha, torch.Tensor) else alpha,
                            dtype=s.dtype, device=s.device).reshape(-1, 1, 1, 1)
        x = s.expand(a.shape[0], -1, -1, -1)
        for reg, m, pivot in zip(regs, masks, pivots, strict=True):
            m_r = resize_mask(m, res, mode).to(device=s.device, dtype=s.dtype)
            ref = refs[reg.reference: reg.reference + 1]
            m_w = warp(m_r, reg.transform, image_size, pivot, mode)
            ref_w = warp(ref, reg.transform, image_size, pivot, mode, pad="border")
            x = torch.lerp(x, ref_w, m_w * a)
        out.append(x)
    return out


__all__ = ["FLIPS", "SCALE_RANGE", "AffineRegion", "Transform", "check_on_image", "placed_mask",
           "region_pivot", "transplant_affine", "warp"]
