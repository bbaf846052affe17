"""A loaded model ready for editing: project once, keep the stylemaps, edit with one generator
pass. Shared by the command line, the web editor and notebooks.

>>> ed = Editor.load("celeba_hq.safetensors")
>>> w_src, w_ref = ed.project(images)                 # encoder once per distinct image
>>> out = ed.local_edit(w_src[None], w_ref[None], mask, space="wplus")   # images [1, 3, H, W]

Every editing method takes stylemaps ``w`` ([N, C, S, S] or a single [C, S, S]) and returns
images in [-1, 1] (a batch of K for K interpolation steps or strengths); none of them runs
the encoder. :meth:`Editor.project` caches by image content (or a key you give), so
projecting the same image again costs nothing. The pure stylemap arithmetic lives in
:mod:`stylemapgan.editing`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stylemapgan.editing import operations as E
from stylemapgan.errors import InputError
from stylemapgan.nn.networks import StyleMapGAN

log = logging.getLogger(__name__)

Strength = float | Sequence[float] | torch.Tensor


def content_key(image: torch.Tensor) -> str:
    """SHA-256 of an image tensor's values (dtype and shape included)."""
    t = image.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class RefineResult:
    """Result of :func:`refine_stylemaps`: the best stylemap per image and its losses."""

    w: torch.Tensor
    initial_loss: list[float]
    final_loss: list[float]
    initial_mse: list[float]
    final_mse: list[float]
    history: list[float] = field(default_factory=list)


def refine_stylemaps(generator: torch.nn.Module, images: torch.Tensor, w_init: torch.Tensor, *,
                     steps: int = 100, lr: float = 0.03, mse_weight: float = 1.0,
                     lpips_weight: float = 0.0, lpips: torch.nn.Module | None = None,
                     callback: Callable[[int, float], None] | None = None) -> RefineResult:
    """Optimize stylemaps so that G(w) reproduces ``images`` (the optimization-based projection
    of the paper's Table 3), starting from the encoder's output ``w_init``.

    Loss per image: ``mse_weight * mean((G(w) - x)^2) + lpips_weight * LPIPS(G(w), x)``,
    minimized with Adam on ``w`` only (the generator's weights get no gradients). Images are
    independent (the loss is a sum of per-image terms and Adam works per element), so the
    result does not depend on the batch. Returns the lowest-loss ``w`` seen for each image.
    ``lpips`` is needed when ``lpips_weight > 0`` (see :class:`stylemapgan.perceptual.LPIPS`).
    """
    if steps < 0:
        raise InputError(f"refine steps must be >= 0, got {steps}")
    if lpips_weight < 0 or mse_weight < 0 or not lpips_weight + mse_weight > 0:
        raise InputError("refine: the loss weights must be >= 0 and not both 0")
    if lpips_weight > 0 and lpips is None:
        raise InputError("refine: lpips_weight > 0 needs an LPIPS network")
    x = images.detach()
    w = w_init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)

    def losses(w_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = generator(w_)
        mse = (out - x).square().flatten(1).mean(1)
        total = mse_weight * mse
        if lpips_weight > 0:
            total = total + lpips_weight * lpips(out, x).reshape(-1)
        return total, mse

    best_w = w.detach().clone()
    history: list[float] = []
    with torch.enable_grad():
        total, mse = losses(w)
        init_total, init_mse = total.detach().clone(), mse.detach().clone()
        best = init_total.clone()
        best_mse = init_mse.clone()
        for step in range(steps):
            (grad,) = torch.autograd.grad(total.sum(), [w])
            w.grad = grad
            opt.step()
            total, mse = losses(w)
            t = total.detach()
            better = t < best
            best = torch.where(better, t, best)
            best_mse = torch.where(better, mse.detach(), best_mse)
            best_w[better] = w.detach()[better]
            history.append(float(t.mean()))
            if callback is not None:
                callback(step + 1, float(t.mean()))
    return RefineResult(best_w, init_total.tolist(), best.tolist(), init_mse.tolist(),
                        best_mse.tolist(), history)


class Editor:
    """A StyleMapGAN model wrapped for editing.

    Parameters
    ----------
    model: the networks (e.g. from :func:`stylemapgan.checkpoint.load_model`), in eval mode.
    batch_size: most images per generator or encoder pass (long interpolations are split).
    cache_size: how many projected stylemaps :meth:`project` keeps (least recently used
        ones are dropped first).
    """

    def __init__(self, model: StyleMapGAN, *, batch_size: int = 16, cache_size: int = 1024) -> None:
        self.model = model
        self.config = model.config
        self.batch_size = max(1, int(batch_size))
        self.cache_size = max(0, int(cache_size))
        self._cache: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.encoder_images = 0  # images the encoder has seen (for callers and tests)
        self.generator_images = 0

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "auto",
             **kwargs: Any) -> Editor:
        from stylemapgan.formats.checkpoint import load_model
        from stylemapgan.utils import resolve_device

        return cls(load_model(path, device=resolve_device(device)), **kwargs)

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self.model.generator.mean_stylemap.device

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def num_styles(self) -> int:
        return self.config.num_styles

    def _w(self, w: torch.Tensor, what: str = "stylemap") -> torch.Tensor:
        if not isinstance(w, torch.Tensor):
            raise InputError(f"{what} must be a tensor")
        if w.ndim == 3:
            w = w[None]
        if w.ndim != 4 or tuple(w.shape[1:]) != self.config.stylemap_shape:
            raise InputError(f"{what} must be [N, {', '.join(map(str, self.config.stylemap_shape))}],"
                             f" got {tuple(w.shape)}")
        return w.to(device=self.device, dtype=self.model.generator.mean_stylemap.dtype)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 3:
            images = images[None]
        s = self.size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise InputError(f"images must be [N, 3, {s}, {s}] in [-1, 1], got {tuple(images.shape)}")
        return images.to(device=self.device, dtype=self.model.generator.mean_stylemap.dtype)

    # ----------------------------------------------------------------- projection
    def project(self, images: torch.Tensor, keys: Sequence[Hashable] | None = None) -> torch.Tensor:
        """Stylemaps [N, C, S, S] of images [N, 3, size, size] in [-1, 1]; the encoder runs only
        for images whose key (default: a hash of the pixels) is not cached yet."""
        images = self._images(images)
        if keys is None:
            keys = [content_key(im) for im in images]
        if len(keys) != len(images):
            raise InputError(f"{len(keys)} keys for {len(images)} images")
        found: dict[Hashable, torch.Tensor] = {k: self._cache[k] for k in keys if k in self._cache}
        todo: dict[Hashable, int] = {}
        for i, k in enumerate(keys):
            if k not in found and k not in todo:
                todo[k] = i  # one encoder pass per distinct key
        pending = list(todo.items())
        with torch.inference_mode():
            for j in range(0, len(pending), self.batch_size):
                part = pending[j: j + self.batch_size]
                ws = self.model.project(images[[i for _, i in part]])
                self.encoder_images += len(part)
                for (k, _), w in zip(part, ws, strict=True):
                    found[k] = w.clone()
        for k in dict.fromkeys(keys):
            self.remember(k, found[k])
        return torch.stack([found[k] for k in keys])

    def remember(self, key: Hashable, w: torch.Tensor) -> None:
        """Put a stylemap [C, S, S] into the projection cache (e.g. one read from a file)."""
        if self.cache_size == 0:
            return
        self._cache[key] = self._w(w)[0].detach()
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def cached(self, key: Hashable) -> torch.Tensor | None:
        """The cached stylemap [C, S, S] for ``key``, or None."""
        return self._cache.get(key)

    def refine(self, images: torch.Tensor, w_init: torch.Tensor | None = None, *, steps: int = 100,
               lr: float = 0.03, mse_weight: float = 1.0, lpips_weight: float = 0.0,
               lpips: torch.nn.Module | None = None,
               callback: Callable[[int, float], None] | None = None) -> RefineResult:
        """Encoder output refined by optimization (see :func:`refine_stylemaps`)."""
        images = self._images(images)
        w0 = self.project(images) if w_init is None else self._w(w_init)
        if lpips is not None:
            lpips = lpips.to(self.device)
        return refine_stylemaps(self.model.generator, images, w0, steps=steps, lr=lr,
                                mse_weight=mse_weight, lpips_weight=lpips_weight, lpips=lpips,
                                callback=callback)

    # ----------------------------------------------------------------- rendering
    def pyramid(self, w: torch.Tensor) -> E.Styles:
        """W -> W+ (one stylemap per synthesis layer)."""
        with torch.inference_mode():
            return self.model.generator.pyramid(self._w(w))

    def render(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Images from stylemaps ``w`` [N, C, S, S] or from a W+ pyramid (list of tensors),
        in chunks of ``batch_size``."""
        g = self.model.generator
        with torch.inference_mode():
            styles = g.pyramid(self._w(x)) if isinstance(x, torch.Tensor) else list(x)
            if len(styles) != self.num_styles:
                raise InputError(f"expected {self.num_styles} W+ stylemaps, got {len(styles)}")
            n = styles[0].shape[0]
            out = []
            for i in range(0, n, self.batch_size):
                out.append(g.synthesize([s[i: i + self.batch_size].to(self.device) for s in styles]))
            self.generator_images += n
            return torch.cat(out)

    def reconstruct(self, w: torch.Tensor) -> torch.Tensor:
        return self.render(self._w(w))

    def generate(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        with torch.inference_mode():
            w = self.model.generator.truncate(self.model.generator.mapping(z.to(self.device)), truncation)
        return self.render(w)

    # ----------------------------------------------------------------- edits
    def local_edit(self, w_src: torch.Tensor, w_ref: torch.Tensor, mask: torch.Tensor, *,
                   space: str = "wplus", mode: E.MaskMode = "area",
                   t: Strength | None = None) -> torch.Tensor:
        """Eq. 2: the reference inside ``mask``, the source outside. ``t`` (K values in
        [0, 1]) gives K images from the source reconstruction (0) to the full edit (1)."""
        w_src, w_ref = self._w(w_src, "source"), self._w(w_ref, "reference")
        mask = E.check_mask(mask).to(self.device)
        with torch.inference_mode():
            if space == "w":
                w_edit = E.local_edit_w(w_src, w_ref, mask, mode)
                if t is not None:
                    w_edit = E.interpolate_w(w_src, w_edit, t)
                return self.render(w_edit)
            if space != "wplus":
                raise InputError(f"unknown space {space!r}; use 'w' or 'wplus'")
            s_src, s_ref = self.pyramid(w_src), self.pyramid(w_ref)
            styles = E.local_edit_wplus(s_src, s_ref, mask, mode)
            if t is not None:
                styles = E.interpolate_wplus(s_src, styles, t)
            return self.render(styles)

    def mix(self, w_a: torch.Tensor, w_b: torch.Tensor, layers: str | Sequence[int]) -> torch.Tensor:
        """W+ of ``a`` with the selected layers (coarse, fine, a:b or a list) from ``b``."""
        idx = E.layer_selection(layers, self.num_styles)
        return self.render(E.style_mix(self.pyramid(w_a), self.pyramid(w_b), idx))

    def interpolate(self, w_a: torch.Tensor, w_b: torch.Tensor, t: int | Strength = 8, *,
                    space: str = "w") -> torch.Tensor:
        """Images along the line from ``a`` to ``b``: ``t`` steps (an int, endpoints included)
        or explicit weights. In W (lerp of ``w``) or W+ (lerp of every per-layer stylemap)."""
        w_a, w_b = self._w(w_a), self._w(w_b)
        weights = E.steps(t) if isinstance(t, int) else t
        with torch.inference_mode():
            if space == "w":
                return self.render(E.interpolate_w(w_a, w_b, weights))
            if space != "wplus":
                raise InputError(f"unknown space {space!r}; use 'w' or 'wplus'")
            return self.render(E.interpolate_wplus(self.pyramid(w_a), self.pyramid(w_b), weights))

    def transplant(self, w_src: torch.Tensor, w_refs: torch.Tensor, regions: Sequence[E.Region], *,
                   space: str = "wplus", alpha: Strength = 1.0) -> torch.Tensor:
        """Unaligned transplantation: each region of its reference moved onto the original.
        ``alpha`` with K values gives K interpolation steps."""
        w_src, w_refs = self._w(w_src, "original"), self._w(w_refs, "references")
        regions = [E.Region(r.mask.to(self.device), r.dy, r.dx, r.reference) for r in regions]
        with torch.inference_mode():
            if space == "w":
                return self.render(E.transplant([w_src], [w_refs], regions, self.size, alpha)[0])
            if space != "wplus":
                raise InputError(f"unknown space {space!r}; use 'w' or 'wplus'")
            return self.render(E.transplant(self.pyramid(w_src), self.pyramid(w_refs), regions,
                                            self.size, alpha))

    def apply_direction(self, w: torch.Tensor, direction: torch.Tensor, strength: Strength, *,
                        mask: torch.Tensor | None = None, mode: E.MaskMode = "area") -> torch.Tensor:
        """``w + strength * direction`` (inside ``mask`` only, if given)."""
        w = self._w(w)
        if mask is not None:
            mask = E.check_mask(mask).to(self.device)
        with torch.inference_mode():
            return self.render(E.apply_direction(w, direction, strength, mask, mode))


def grid_columns(n: int, limit: int = 8) -> int:
    """Columns for a grid of ``n`` tiles: one row up to ``limit``, else near-square rows."""
    return n if n <= limit else min(limit, math.ceil(math.sqrt(n)))
