"""Editing as pure tensor functions on stylemaps, shared by the CLI, the web editor and metrics.

Conventions
-----------
* ``w``: a stylemap batch [N, C, S, S] (the W space); ``styles``: the W+ pyramid, a list of
  [N, C_k, R_k, R_k] tensors as returned by ``Generator.pyramid``.
* Masks are float tensors [N, 1, H, W] (or [1, 1, H, W], broadcast over the batch) in [0, 1] at
  any resolution, usually the image's; 1 selects the reference. Soft masks are allowed.
* Nothing here mutates its inputs, and nothing here needs gradients turned on or off: callers
  decide (``torch.inference_mode()`` for interactive use, gradients for optimization).

Receptive fields: :func:`edit_footprint` computes, from the architecture alone, the pixels an
edit of some stylemap cells can possibly change. With batch normalization in eval mode
(running statistics) every operation is local and pixels outside the footprint are exactly
unchanged. With layer or instance normalization (the published models) the per-sample mean
and variance are taken over the whole feature map, so a local edit also changes pixels far
away, by a small amount.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from stylemapgan.editing.regions import Region, shift
from stylemapgan.errors import InputError
from stylemapgan.nn.ops import BLUR_TAPS, up_blur_padding

if TYPE_CHECKING:
    from stylemapgan.config import ModelConfig

Styles = list[torch.Tensor]
MaskMode = Literal["area", "max"]
#: Where an edit blends: ``"w"`` = the stylemap w only, ``"wplus"`` = every per-layer stylemap
#: of the W+ pyramid at its own resolution.
Space = Literal["w", "wplus"]
SPACES: tuple[str, ...] = ("w", "wplus")


def check_space(space: str) -> Space:
    """``space`` if it is ``"w"`` or ``"wplus"``, else the one error for a bad space."""
    if space not in SPACES:
        raise InputError(f"unknown editing space {space!r}; use 'w' or 'wplus'")
    return space  # type: ignore[return-value]


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
    m = resize_mask(mask, src.shape[-1], mode).to(device=src.device, dtype=src.dtype)
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
    ``"colour"`` (or ``"color"``): the last two, at full resolution (the first image keeps its
    shapes, the second gives colours and texture; on a 64 px model "coarse" is nearly the second
    image's own reconstruction, this split visibly mixes); ``"a:b"``: layers a..b-1 (Python slice syntax, either side may be empty); or a list.
    """
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "coarse":
            idx = list(range(2, num_styles))
        elif s == "fine":
            idx = [0, 1]
        elif s in ("colour", "color"):
            idx = list(range(max(num_styles - 2, 0), num_styles))
        elif ":" in s:
            lo, _, hi = s.partition(":")
            try:
                sl = slice(int(lo) if lo else None, int(hi) if hi else None)
            except ValueError:
                raise InputError(f"bad layer range {spec!r}; use coarse, fine, colour or a:b") from None
            # A range is checked like a list: an end past the model's layers is refused, not
            # cut short (7:99 on 8 layers would silently mean 7:8).
            ends = [v for v in (sl.start, sl.stop) if v is not None]
            if any(not -num_styles <= v <= num_styles for v in ends):
                raise InputError(f"layer range {spec!r} is out of range: this model has "
                                 f"{num_styles} W+ layers (a:b takes a..b-1; a and b in "
                                 f"0..{num_styles}, or negative from the end)")
            idx = list(range(num_styles))[sl]
        else:
            try:
                idx = [int(v) for v in s.split(",")]
            except ValueError:
                raise InputError(f"bad layer selection {spec!r}; use coarse, fine, colour, a:b or 1,2,3") from None
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
    if isinstance(t, torch.Tensor):
        t = t.detach()
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
def transplant(styles_src: Sequence[torch.Tensor], styles_refs: Sequence[torch.Tensor],
               regions: Sequence[Region], image_size: int,
               alpha: float | Sequence[float] | torch.Tensor = 1.0,
               mode: MaskMode = "area") -> Styles:
    """Unaligned transplantation in W+: copy each region of its reference's stylemaps to a new
    place on the original's, at every layer's resolution (each moved by
    :meth:`~stylemapgan.editing.regions.Region.move`, the one move of a region).

    ``styles_src``: W+ of the original (batch 1). ``styles_refs``: W+ of the references (batch
    R). ``alpha``: blend strength (one value, or K values to get K interpolation steps as a
    batch). Regions are applied in order; later ones cover earlier ones. ``mode``: how each
    mask comes to a layer's resolution (``"area"`` averages, ``"max"`` max-pools).

    A region that is scaled, rotated or mirrored (:attr:`Region.affine
    <stylemapgan.editing.regions.Region.affine>`) is placed by
    :func:`~stylemapgan.editing.transform.transplant_affine` (warped stylemaps and masks); a
    pure move is a shift of whole cells, as in the paper.
    """
    if any(r.affine for r in regions):
        from stylemapgan.editing.transform import transplant_affine

        return transplant_affine(styles_src, styles_refs, regions, image_size, alpha, mode)
    if not regions:
        raise InputError("transplant needs at least one region")
    if len(styles_src) != len(styles_refs):
        raise InputError("transplant: the original's and the references' W+ pyramids have "
                         "different lengths")
    n_refs = styles_refs[0].shape[0]
    for s, r in zip(styles_src, styles_refs, strict=True):
        _check_pair(s, r, "transplant")
    for i, reg in enumerate(regions):
        if not 0 <= reg.reference < n_refs:
            raise InputError(f"region {i} uses reference {reg.reference}, but {n_refs} reference(s) were given")
    masks = [check_mask(r.mask, f"region {i} mask") for i, r in enumerate(regions)]
    out = []
    for s, refs in zip(styles_src, styles_refs, strict=True):
        if s.shape[0] != 1:
            raise InputError("transplant edits one original at a time")
        a = _weights(alpha, s)
        x = s.expand(a.shape[0], -1, -1, -1)
        for reg, m in zip(regions, masks, strict=True):
            m_moved = reg.move(resize_mask(m, s.shape[-1], mode).to(device=s.device, dtype=s.dtype),
                              image_size)
            ref_moved = reg.move(refs[reg.reference: reg.reference + 1], image_size)
            x = torch.lerp(x, ref_moved, m_moved * a)
        out.append(x)
    return out


# --------------------------------------------------------------------------- semantic directions
def apply_direction(w: torch.Tensor, direction: torch.Tensor,
                    strength: float | Sequence[float] | torch.Tensor,
                    mask: torch.Tensor | None = None, mode: MaskMode = "area") -> torch.Tensor:
    """Move stylemaps along a direction: ``w + strength * m * direction``.

    ``w``: [N, C, S, S]; ``direction``: [C, S, S] or [1, C, S, S]; ``strength``: one value, or K
    values (with N = 1) for a batch of K results. ``mask`` (any resolution) limits the move to
    the selected cells, as the reference's masked semantic manipulation does; without it the
    edit is global.
    """
    d = direction if direction.ndim == 4 else direction[None]
    if d.shape[1:] != w.shape[1:]:
        raise InputError(f"direction of shape {tuple(d.shape[1:])} does not fit stylemaps of "
                         f"shape {tuple(w.shape[1:])} (a direction learned with another model?)")
    d = d.to(device=w.device, dtype=w.dtype)
    if mask is not None:
        d = d * resize_mask(check_mask(mask), w.shape[-1], mode).to(device=w.device, dtype=w.dtype)
    return w + _weights(strength, w) * d


# --------------------------------------------------------------------------- receptive fields
# The maps below are float {0, 1} tensors [N, 1, H, W]. With ``line=True`` they are single rows
# [N, 1, 1, W] and every kernel acts along W only: all the networks' kernels are square and
# separable in support, so the reach along one axis is the same computation, far cheaper.
def _dilate3(m: torch.Tensor, line: bool = False) -> torch.Tensor:
    """Cells a 3x3 convolution (padding 1) lets a change at ``m`` reach."""
    return F.max_pool2d(m, (1, 3) if line else 3, stride=1, padding=(0, 1) if line else 1)


def _up_reach(m: torch.Tensor, kernel_size: int, line: bool = False) -> torch.Tensor:
    """Cells of the doubled map that a stride-2 transposed conv (``kernel_size``) followed by
    the 4-tap blur lets a change at ``m`` reach: the layer's own geometry with all-ones
    weights (every tap of a trained network is nonzero)."""
    k, taps = kernel_size, len(BLUR_TAPS)
    kh, th = (1, 1) if line else (k, taps)
    y = F.conv_transpose2d(m, torch.ones(1, 1, kh, k, dtype=m.dtype, device=m.device),
                           stride=(1, 2) if line else 2)
    p0, p1 = up_blur_padding(k)
    y = F.pad(y, (p0, p1) if line else (p0, p1, p0, p1))
    y = F.conv2d(y, torch.ones(1, 1, th, taps, dtype=m.dtype, device=m.device))
    return (y > 0).to(m.dtype)


def _as_cells(changed: torch.Tensor) -> torch.Tensor:
    c = changed if changed.ndim == 4 else changed.reshape(-1, 1, *changed.shape[-2:])
    return (c.detach().float().abs().amax(dim=1, keepdim=True) > 0).float().cpu()


def pyramid_footprint(config: ModelConfig, changed_w: torch.Tensor, *,
                      line: bool = False) -> list[torch.Tensor]:
    """W+ cells that a change of the ``changed_w`` cells of ``w`` can reach through the
    stylemap resizer (3x3 convs and upsampling convs). ``changed_w``: [N, 1, S, S] (nonzero =
    changed); returns one bool map per W+ layer."""
    x = _as_cells(changed_w)
    res = config.style_resolutions()
    out = []
    for i, r in enumerate(res):
        x = _up_reach(x, 3, line) if i > 0 and r > res[i - 1] else _dilate3(x, line)
        out.append(x > 0)
    return out


def synthesis_footprint(config: ModelConfig, changed_styles: Sequence[torch.Tensor], *,
                        line: bool = False) -> torch.Tensor:
    """Pixels [N, 1, size, size] (bool) that changes of the given W+ cells can reach.

    ``changed_styles``: one map per W+ layer at that layer's resolution, nonzero where the
    stylemap changed. Follows the synthesis network: each modulated layer reads its stylemap
    through 3x3 gamma/beta convs; 3x3 convs, upsampling convs (transposed conv + blur) and the
    1x1 upsampling skips carry changes on. Exact (never too small) when the normalization is
    local (batch norm in eval mode); see the module notes for layer normalization.
    """
    if len(changed_styles) != config.num_styles:
        raise InputError(f"expected {config.num_styles} W+ maps, got {len(changed_styles)}")
    c = [_as_cells(m) for m in changed_styles]
    for m, r in zip(c, config.style_resolutions(), strict=True):
        if m.shape[-1] != r:
            raise InputError(f"W+ change map of size {m.shape[-1]} where {r} was expected")
    n = max(m.shape[0] for m in c)
    c = [m.expand(n, -1, -1, -1) for m in c]

    def d3(m: torch.Tensor) -> torch.Tensor:
        return _dilate3(m, line)

    x = d3(d3(c[0]))                                   # conv0: modulation, 3x3 conv
    for i in range(config.num_doublings):
        a = _up_reach(torch.maximum(x, d3(c[2 * i + 1])), 3, line)   # upsampling styled conv
        b = d3(torch.maximum(a, d3(c[2 * i + 2])))                   # styled 3x3 conv
        x = torch.maximum(b, _up_reach(x, 1, line))                  # + 1x1 upsampling skip
    x = torch.maximum(x, d3(c[-1]))                    # to-RGB: modulation, 1x1 conv
    return x > 0


def edit_footprint(config: ModelConfig, mask: torch.Tensor, space: Space = "wplus",
                   mode: MaskMode = "area") -> torch.Tensor:
    """Pixels [N, 1, size, size] (bool) that a local edit with ``mask`` can change: the
    mask's cells at each layer, grown by the receptive field of everything downstream."""
    mask = check_mask(mask)
    if check_space(space) == "w":
        styles = pyramid_footprint(config, resize_mask(mask, config.stylemap_size, mode))
    else:
        styles = [resize_mask(mask, r, mode) for r in config.style_resolutions()]
    return synthesis_footprint(config, styles)


def influence_border(config: ModelConfig, space: Space = "wplus") -> list[int]:
    """How far (in image pixels) past its own footprint (``size / r`` pixels square) a change
    of one stylemap cell can reach, for each W+ layer (``space="wplus"``) or for a cell of
    ``w`` (``space="w"``, one value); clipped by the image border. Measured on a cell in the
    middle of the map, along one axis (the reach is the same along both)."""
    res = [config.stylemap_size] if check_space(space) == "w" else config.style_resolutions()
    out = []
    for k, r in enumerate(res):
        cell = torch.zeros(1, 1, 1, r)
        cell[..., r // 2] = 1
        if space == "w":
            fp = synthesis_footprint(config, pyramid_footprint(config, cell, line=True), line=True)
        else:
            maps = [torch.zeros(1, 1, 1, q) for q in config.style_resolutions()]
            maps[k] = cell
            fp = synthesis_footprint(config, maps, line=True)
        xs = torch.nonzero(fp[0, 0, 0]).flatten()
        px = config.size // r
        lo, hi = (r // 2) * px, (r // 2 + 1) * px - 1
        out.append(int(max(lo - xs.min(), xs.max() - hi)))
    return out


__all__ = [
    "SPACES", "MaskMode", "Region", "Space", "Styles", "apply_direction", "check_mask",
    "check_space", "edit_footprint",
    "influence_border", "interpolate_w", "interpolate_wplus", "layer_selection", "local_edit_w",
    "local_edit_wplus", "pyramid_footprint", "resize_mask", "shift", "steps", "style_mix",
    "synthesis_footprint", "transplant",
]
