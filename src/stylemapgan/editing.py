"""Editing as pure tensor functions on stylemaps, shared by the CLI, the web editor and metrics.

Conventions
-----------
* ``w``: a stylemap batch [N, C, S, S] (the W space); ``styles``: the W+ pyramid, a list of
  [N, C_k, R_k, R_k] tensors as returned by ``Generator.pyramid``.
* Masks are float tensors [N, 1, H, W] (or [1, 1, H, W], broadcast over the batch) in [0, 1] at
  any resolution, usually the image's; 1 selects the reference. Soft masks are allowed.
* Nothing here mutates its inputs, and nothing here needs gradients turned on or off: callers
  decide (``torch.inference_mode()`` for interactive use, gradients for optimization).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .errors import InputError

Styles = list[torch.Tensor]
MaskMode = Literal["area", "max"]


# --------------------------------------------------------------------------- masks
def check_mask(mask: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """Validate and return ``mask`` as float [N, 1, H, W]; accepts [H, W] and [N, H, W] too."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{what} must be a tensor")
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise InputError(f"{what} must have shape [N, 1, H, W], got {tuple(mask.shape)}")
    if not mask.is_floating_point():
        mask = mask.float()
    if mask.numel() and (mask.min() < 0 or mask.max() > 1 or not torch.isfinite(mask).all()):
        raise InputError(f"{what} values must lie in [0, 1]")
    return mask


def resize_mask(mask: torch.Tensor, size: int, mode: MaskMode = "area") -> torch.Tensor:
    """A mask at stylemap resolution ``size``.

    ``area``: each cell gets the fraction of its pixels that are selected (soft boundaries).
    ``max``: a cell is selected if any of its pixels is (the reference's max-pooling, which
    grows the region). Masks smaller than ``size`` are upsampled bilinearly.
    """
    h, w = mask.shape[-2:]
    if (h, w) == (size, size):
        return mask
    if h < size or w < size:
        return F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False)
    if mode == "max":
        return F.adaptive_max_pool2d(mask, size)
    if mode != "area":
        raise InputError(f"unknown mask mode {mode!r}; use 'area' or 'max'")
    return F.adaptive_avg_pool2d(mask, size)


def _blend(src: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, mode: MaskMode) -> torch.Tensor:
    m = resize_mask(mask, src.shape[-1], mode).to(src.dtype)
    return torch.lerp(src, ref, m)  # src + m * (ref - src)


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise InputError(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match")


# --------------------------------------------------------------------------- local editing
def local_edit_w(w_src: torch.Tensor, w_ref: torch.Tensor, mask: torch.Tensor,
                 mode: MaskMode = "area") -> torch.Tensor:
    """Eq. 2 of the paper in W: ``m * w_ref + (1 - m) * w_src`` with ``m`` at stylemap size."""
    _check_pair(w_src, w_ref, "local edit")
    return _blend(w_src, w_ref, check_mask(mask), mode)


def local_edit_wplus(styles_src: Sequence[torch.Tensor], styles_ref: Sequence[torch.Tensor],
                     mask: torch.Tensor, mode: MaskMode = "area") -> Styles:
    """Eq. 2 on every per-layer stylemap, each with the mask at its own resolution: finer
    boundaries than in W."""
    if len(styles_src) != len(styles_ref):
        raise InputError("local edit: the two W+ pyramids have different lengths")
    mask = check_mask(mask)
    out = []
    for s, r in zip(styles_src, styles_ref, strict=True):
        _check_pair(s, r, "local edit")
        out.append(_blend(s, r, mask, mode))
    return out


# --------------------------------------------------------------------------- mixing
def layer_selection(spec: str | Sequence[int], num_styles: int) -> list[int]:
    """Which W+ layers to take from the second image.

    ``"coarse"``: all but the first two (the first image keeps its coarse layout, the second
    gives everything finer, as the reference's "coarse" mixing); ``"fine"``: the first two only;
    ``"a:b"``: layers a..b-1 (Python slice syntax, either side may be empty); or a list.
    """
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "coarse":
            idx = list(range(2, num_styles))
        elif s == "fine":
            idx = [0, 1]
        elif ":" in s:
            lo, _, hi = s.partition(":")
            try:
                sl = slice(int(lo) if lo else None, int(hi) if hi else None)
            except ValueError:
                raise InputError(f"bad layer range {spec!r}; use coarse, fine or a:b") from None
            idx = list(range(num_styles))[sl]
        else:
            try:
                idx = [int(v) for v in s.split(",")]
            except ValueError:
                raise InputError(f"bad layer selection {spec!r}; use coarse, fine, a:b or 1,2,3") from None
    else:
        idx = [int(v) for v in spec]
    bad = [i for i in idx if not 0 <= i < num_styles]
    if bad:
        raise InputError(f"layer(s) {bad} out of range: this model has {num_styles} W+ layers (0..{num_styles - 1})")
    if not idx:
        raise InputError(f"layer selection {spec!r} selects no layer")
    return sorted(set(idx))


def style_mix(styles_a: Sequence[torch.Tensor], styles_b: Sequence[torch.Tensor],
              layers: Sequence[int]) -> Styles:
    """W+ of ``a`` with the layers listed in ``layers`` taken from ``b``."""
    chosen = set(layers)
    return [b if i in chosen else a for i, (a, b) in enumerate(zip(styles_a, styles_b, strict=True))]


# --------------------------------------------------------------------------- interpolation
def _weights(t: float | Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device).reshape(-1, *([1] * (like.ndim - 1)))


def interpolate_w(w_a: torch.Tensor, w_b: torch.Tensor,
                  t: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Linear interpolation in W. ``w_a``/``w_b``: [1, C, S, S]; ``t``: K values -> [K, C, S, S]."""
    _check_pair(w_a, w_b, "interpolation")
    return torch.lerp(w_a, w_b, _weights(t, w_a))


def interpolate_wplus(styles_a: Sequence[torch.Tensor], styles_b: Sequence[torch.Tensor],
                      t: float | Sequence[float] | torch.Tensor) -> Styles:
    """Linear interpolation of every per-layer stylemap (W+), K steps -> batch of K."""
    return [torch.lerp(a, b, _weights(t, a)) for a, b in zip(styles_a, styles_b, strict=True)]


def steps(n: int) -> torch.Tensor:
    """``n`` evenly spaced interpolation weights from 0 to 1 inclusive."""
    if n < 1:
        raise InputError(f"the number of steps must be >= 1, got {n}")
    return torch.linspace(0.0, 1.0, n) if n > 1 else torch.ones(1)


# --------------------------------------------------------------------------- transplantation
@dataclass(frozen=True)
class Region:
    """A region of a reference image moved onto the original.

    mask: [1, 1, H, W] in [0, 1] in the reference's image coordinates.
    dy, dx: displacement in pixels of the image (positive: down / right).
    reference: index of the reference in the batch of references.
    """

    mask: torch.Tensor
    dy: int = 0
    dx: int = 0
    reference: int = 0


def shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate [N, C, H, W] by (dy, dx) cells, filling with zeros (no wrap-around)."""
    h, w = t.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return torch.zeros_like(t)
    padded = F.pad(t, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[..., y0: y0 + h, x0: x0 + w]


def transplant(styles_src: Sequence[torch.Tensor], styles_refs: Sequence[torch.Tensor],
               regions: Sequence[Region], image_size: int,
               alpha: float | Sequence[float] | torch.Tensor = 1.0) -> Styles:
    """Unaligned transplantation in W+: copy each region of its reference's stylemaps to a new
    place on the original's, at every layer's resolution.

    ``styles_src``: W+ of the original (batch 1). ``styles_refs``: W+ of the references (batch
    R). ``alpha``: blend strength (one value, or K values to get K interpolation steps as a
    batch). Regions are applied in order; later ones cover earlier ones.
    """
    if not regions:
        raise InputError("transplant needs at least one region")
    n_refs = styles_refs[0].shape[0]
    for i, reg in enumerate(regions):
        if not 0 <= reg.reference < n_refs:
            raise InputError(f"region {i} uses reference {reg.reference}, but {n_refs} reference(s) were given")
    masks = [check_mask(r.mask, f"region {i} mask") for i, r in enumerate(regions)]
    out = []
    for s, refs in zip(styles_src, styles_refs, strict=True):
        if s.shape[0] != 1:
            raise InputError("transplant edits one original at a time")
        res = s.shape[-1]
        scale = res / image_size
        a = _weights(alpha, s)
        x = s.expand(a.shape[0], -1, -1, -1)
        for reg, m in zip(regions, masks, strict=True):
            dy, dx = round(reg.dy * scale), round(reg.dx * scale)
            m_moved = shift(resize_mask(m, res).to(s.dtype), dy, dx)
            ref_moved = shift(refs[reg.reference: reg.reference + 1], dy, dx)
            x = torch.lerp(x, ref_moved, m_moved * a)
        out.append(x)
    return out
