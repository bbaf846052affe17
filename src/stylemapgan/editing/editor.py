"""The one editing engine: a loaded model that projects once, keeps the stylemaps and edits with
one generator pass. The command line, the web editor, the metrics and notebooks all use it.

>>> ed = Editor.load("celeba_hq.safetensors")
>>> w = ed.project(images)                             # [N, C, S, S]; encoder once per image
>>> out = ed.local_edit(w[:1], w[1:2], mask, space="wplus")   # images [1, 3, H, W] in [-1, 1]

Every editing method takes stylemaps ``w`` ([N, C, S, S] or a single [C, S, S]) or cached
:class:`Projection` objects (which carry their W+ pyramid) and returns images in [-1, 1] (a
batch of K for K interpolation steps or strengths); none of them runs the encoder. The stylemap
arithmetic itself is in :mod:`stylemapgan.editing.operations`.

Projection cache: :meth:`Editor.project` and :meth:`Editor.projection` key each image by its
content (or a key you give) and keep the result in a least-recently-used cache bounded in bytes
(``cache_bytes``), so projecting the same image again costs nothing. Each image is encoded on
its own, so a stylemap does not depend on which other images shared its call (batched
convolutions differ in the last bits) and a cached value equals a fresh one.

Fast path: with ``runtime=RuntimeOptions(...)`` (reduced precision, channels-last) every network
pass runs through a prepared copy of the networks (:class:`stylemapgan.nn.runtime.Runner`);
without it the model itself runs in float32, the reference.

Thread safety: network passes are serialized by a lock, so one Editor can serve several threads
(the web editor does).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stylemapgan.editing import operations as E
from stylemapgan.editing.cache import ByteLRU
from stylemapgan.editing.regions import Region
from stylemapgan.errors import InputError
from stylemapgan.nn.networks import StyleMapGAN
from stylemapgan.nn.runtime import Runner, RuntimeOptions, prepare

log = logging.getLogger(__name__)

Strength = float | Sequence[float] | torch.Tensor
MiB = 1 << 20
#: Default byte budget of the projection cache.
DEFAULT_CACHE_BYTES = 256 * MiB


def content_key(image: torch.Tensor) -> str:
    """SHA-256 of an image tensor's values (dtype and shape included)."""
    t = image.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Projection:
    """A projected image: its stylemap ``w`` [1, C, S, S] and W+ pyramid (batch 1)."""

    w: torch.Tensor
    styles: tuple[torch.Tensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w, *self.styles))


@dataclass(frozen=True)
class PaintedEdit:
    """What :meth:`Editor.paint` made: ``frames`` [K, S, S, 3] uint8, the ``method`` used
    (reconstruction, local_edit_w/wplus, transplant_w/wplus) and the indices of the regions
    that were used (the non-empty ones)."""

    frames: Any
    method: str
    used: list[int]


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
    ``lpips`` is needed when ``lpips_weight > 0`` (see :class:`stylemapgan.nn.perceptual.LPIPS`).
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
    model: the networks in eval mode (e.g. from :func:`stylemapgan.formats.checkpoint.load_model`);
        the Editor does not change them.
    batch_size: most images per generator pass (long interpolations are split).
    cache_bytes: memory budget of the projection cache (least recently used entries go first;
        0 turns the cache off).
    runtime: fast-path options (:class:`~stylemapgan.nn.runtime.RuntimeOptions`); None or the
        float32 defaults run the model itself.
    """

    def __init__(self, model: StyleMapGAN, *, batch_size: int = 16,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 runtime: RuntimeOptions | None = None) -> None:
        self.model = model
        self.config = model.config
        self.batch_size = max(1, int(batch_size))
        self.runtime = runtime or RuntimeOptions()
        self.runner: Runner | None = (prepare(model, self.device, self.runtime)
                                      if self.runtime != RuntimeOptions() else None)
        self.cache: ByteLRU[Projection] = ByteLRU(max(0, int(cache_bytes)), lambda p: p.nbytes)
        self._lock = threading.RLock()
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

    def _w(self, w: torch.Tensor | Projection, what: str = "stylemap") -> torch.Tensor:
        if isinstance(w, Projection):
            return w.w
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

    # ----------------------------------------------------------------- network passes
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            self.encoder_images += x.shape[0]
            return self.runner.project(x) if self.runner else self.model.project(x)

    def pyramid(self, w: torch.Tensor | Projection) -> E.Styles:
        """W -> W+ (one stylemap per synthesis layer). Computed one stylemap at a time, so a
        pyramid does not depend on the batch it came in (a cached one equals a fresh one)."""
        if isinstance(w, Projection):
            return list(w.styles)
        w = self._w(w)
        with self._lock, torch.inference_mode():
            run = self.runner.pyramid if self.runner else self.model.generator.pyramid
            if w.shape[0] == 1:
                return list(run(w))
            return [torch.cat(level) for level in zip(*(run(w[i: i + 1]) for i in range(len(w))),
                                                      strict=True)]

    def _synthesize(self, styles: Sequence[torch.Tensor]) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            g = self.model.generator
            return self.runner.synthesize(styles) if self.runner else g.synthesize(list(styles))

    # ----------------------------------------------------------------- projection
    def projection(self, image: torch.Tensor, key: Hashable | None = None) -> Projection:
        """The :class:`Projection` of one image [3, size, size] (or [1, 3, size, size]) in
        [-1, 1]; from the cache when ``key`` (default: a hash of the pixels) is known."""
        x = self._images(image)
        if x.shape[0] != 1:
            raise InputError(f"projection() takes one image, got {x.shape[0]}")
        key = content_key(x[0]) if key is None else key
        found = self.cache.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self.cache.get(key)  # another thread may have just made it
            if found is not None:
                return found
            w = self._encode(x).clone()
            proj = Projection(w, tuple(s.clone() for s in self.pyramid(w)))
            if not self.cache.put(key, proj) and self.cache.max_bytes > 0:
                log.warning("a projection (%d bytes) is larger than the whole cache budget",
                            proj.nbytes)
        return proj

    def project(self, images: torch.Tensor, keys: Sequence[Hashable] | None = None) -> torch.Tensor:
        """Stylemaps [N, C, S, S] of images [N, 3, size, size] in [-1, 1]; the encoder runs only
        for images whose key (default: a hash of the pixels) is not cached yet, once each."""
        images = self._images(images)
        if keys is None:
            keys = [content_key(im) for im in images]
        if len(keys) != len(images):
            raise InputError(f"{len(keys)} keys for {len(images)} images")
        done: dict[Hashable, torch.Tensor] = {}
        for k in dict.fromkeys(keys):  # what is cached is taken before anything new is added
            found = self.cache.get(k)
            if found is not None:
                done[k] = found.w[0]
        for i, k in enumerate(keys):
            if k not in done:
                done[k] = self.projection(images[i], k).w[0]
        return torch.stack([done[k] for k in keys])

    def remember(self, key: Hashable, w: torch.Tensor) -> Projection:
        """Put a stylemap [C, S, S] into the projection cache (e.g. one read from a file)."""
        w = self._w(w)[:1].detach().clone()
        proj = Projection(w, tuple(s.clone() for s in self.pyramid(w)))
        self.cache.put(key, proj)
        return proj

    def cached(self, key: Hashable) -> torch.Tensor | None:
        """The cached stylemap [C, S, S] for ``key``, or None."""
        found = self.cache.get(key)
        return None if found is None else found.w[0]

    def refine(self, images: torch.Tensor, w_init: torch.Tensor | None = None, *, steps: int = 100,
               lr: float = 0.03, mse_weight: float = 1.0, lpips_weight: float = 0.0,
               lpips: torch.nn.Module | None = None,
               callback: Callable[[int, float], None] | None = None) -> RefineResult:
        """Encoder output refined by optimization (see :func:`refine_stylemaps`); runs the
        float32 model (gradients), not the fast path."""
        images = self._images(images)
        w0 = self.project(images) if w_init is None else self._w(w_init)
        if lpips is not None:
            lpips = lpips.to(self.device)
        with self._lock:
            return refine_stylemaps(self.model.generator, images, w0, steps=steps, lr=lr,
                                    mse_weight=mse_weight, lpips_weight=lpips_weight, lpips=lpips,
                                    callback=callback)

    # ----------------------------------------------------------------- rendering
    def render(self, x: torch.Tensor | Projection | Sequence[torch.Tensor]) -> torch.Tensor:
        """Images from stylemaps ``w`` [N, C, S, S], a :class:`Projection` or a W+ pyramid
        (list of tensors), in chunks of ``batch_size``."""
        styles = self.pyramid(x) if isinstance(x, (torch.Tensor, Projection)) else list(x)
        if len(styles) != self.num_styles:
            raise InputError(f"expected {self.num_styles} W+ stylemaps, got {len(styles)}")
        n = styles[0].shape[0]
        out = []
        for i in range(0, n, self.batch_size):
            out.append(self._synthesize([s[i: i + self.batch_size].to(self.device) for s in styles]))
        self.generator_images += n
        return torch.cat(out)

    def reconstruct(self, w: torch.Tensor | Projection) -> torch.Tensor:
        """G(w): the image a stylemap (or projection) stands for."""
        return self.render(w)

    # ----------------------------------------------------------------- edits
    def _mask(self, mask: torch.Tensor) -> torch.Tensor:
        return E.check_mask(mask).to(self.device)

    def local_edit(self, src: torch.Tensor | Projection, ref: torch.Tensor | Projection,
                   mask: torch.Tensor, *, space: E.Space = "wplus", mode: E.MaskMode = "area",
                   t: Strength | None = None) -> torch.Tensor:
        """Eq. 2: the reference inside ``mask``, the source outside. ``t`` (K values in
        [0, 1]) gives K images from the source reconstruction (0) to the full edit (1)."""
        w_src, w_ref = self._w(src, "source"), self._w(ref, "reference")
        mask = self._mask(mask)
        with torch.inference_mode():
            if E.check_space(space) == "w":
                w_edit = E.local_edit_w(w_src, w_ref, mask, mode)
                if t is not None:
                    w_edit = E.interpolate_w(w_src, w_edit, t)
                return self.render(w_edit)
            s_src, s_ref = self.pyramid(src), self.pyramid(ref)
            styles = E.local_edit_wplus(s_src, s_ref, mask, mode)
            if t is not None:
                styles = E.interpolate_wplus(s_src, styles, t)
            return self.render(styles)

    def mix(self, a: torch.Tensor | Projection, b: torch.Tensor | Projection,
            layers: str | Sequence[int]) -> torch.Tensor:
        """W+ of ``a`` with the selected layers (coarse, fine, a:b or a list) from ``b``."""
        idx = E.layer_selection(layers, self.num_styles)
        return self.render(E.style_mix(self.pyramid(a), self.pyramid(b), idx))

    def interpolate(self, a: torch.Tensor | Projection, b: torch.Tensor | Projection,
                    t: int | Strength = 8, *, space: E.Space = "w") -> torch.Tensor:
        """Images along the line from ``a`` to ``b``: ``t`` steps (an int, endpoints included)
        or explicit weights. In W (lerp of ``w``) or W+ (lerp of every per-layer stylemap)."""
        w_a, w_b = self._w(a), self._w(b)
        weights = E.steps(t) if isinstance(t, int) else t
        with torch.inference_mode():
            if E.check_space(space) == "w":
                return self.render(E.interpolate_w(w_a, w_b, weights))
            return self.render(E.interpolate_wplus(self.pyramid(a), self.pyramid(b), weights))

    def _refs(self, refs: torch.Tensor | Sequence[Projection]) -> tuple[torch.Tensor, E.Styles]:
        if isinstance(refs, torch.Tensor):
            w = self._w(refs, "references")
            return w, self.pyramid(w)
        if not refs:
            raise InputError("transplant needs at least one reference")
        w = torch.cat([self._w(r) for r in refs])
        styles = [torch.cat(level) for level in zip(*(self.pyramid(r) for r in refs), strict=True)]
        return w, styles

    def transplant(self, src: torch.Tensor | Projection,
                   refs: torch.Tensor | Sequence[Projection], regions: Sequence[Region], *,
                   space: E.Space = "wplus", alpha: Strength = 1.0,
                   mode: E.MaskMode = "area") -> torch.Tensor:
        """Unaligned transplantation: each region of its reference moved (and scaled, rotated,
        mirrored: ``Region(mask, dx=.., dy=.., scale=.., angle=.., flip="h")``) onto the
        original. ``alpha`` with K values gives K interpolation steps; ``mode``: how masks
        come to each stylemap (``"area"`` or ``"max"``; also bilinear or nearest warps)."""
        w_src = self._w(src, "original")
        w_refs, ref_styles = self._refs(refs)
        regions = [r.to(self.device) for r in regions]
        with torch.inference_mode():
            if E.check_space(space) == "w":
                return self.render(E.transplant([w_src], [w_refs], regions, self.size, alpha,
                                                mode)[0])
            return self.render(E.transplant(self.pyramid(src), ref_styles, regions, self.size,
                                            alpha, mode))

    def edit_regions(self, src: torch.Tensor | Projection,
                     refs: torch.Tensor | Sequence[Projection], regions: Sequence[Region], *,
                     space: E.Space = "wplus", t: Strength | None = None,
                     mode: E.MaskMode = "area") -> tuple[torch.Tensor, str]:
        """Painted regions of references onto the source, as the web editor sends them: no
        region -> the reconstruction; one region that does not move -> :meth:`local_edit`;
        otherwise :meth:`transplant`. ``t``: K weights from the reconstruction (0) to the
        full edit (1). Returns (images [K, 3, H, W], the method used)."""
        space = E.check_space(space)
        k = 1 if t is None else len(torch.as_tensor(t).reshape(-1))
        if not regions:
            styles = [s.expand(k, -1, -1, -1) for s in self.pyramid(src)]
            return self.render(styles), "reconstruction"
        if len(regions) == 1 and not regions[0].moved:
            r = regions[0]
            ref = refs[r.reference: r.reference + 1] if isinstance(refs, torch.Tensor) else refs[r.reference]
            return (self.local_edit(src, ref, r.mask, space=space, mode=mode, t=t),
                    f"local_edit_{space}")
        alpha = 1.0 if t is None else t
        # Moves alone keep the area-averaged masks web records were made with before regions
        # could be scaled, rotated or mirrored (so those records replay to the same bytes).
        tmode = mode if any(r.affine for r in regions) else "area"
        return (self.transplant(src, refs, regions, space=space, alpha=alpha, mode=tmode),
                f"transplant_{space}")

    def paint(self, src: torch.Tensor | Projection, refs: torch.Tensor | Sequence[Projection],
              regions: Sequence[Region], *, space: E.Space = "wplus", steps: int = 1,
              mode: E.MaskMode = "area") -> PaintedEdit:
        """The web editor's edit: ``regions`` of ``refs`` onto ``src`` as ``steps`` frames
        from the reconstruction to the full edit (:meth:`edit_regions`), empty regions left
        out. The web editor and the replay of its records (:meth:`replay_web_record`) both
        run this, so they give the same pixels."""
        from stylemapgan.imaging.images import to_uint8

        E.check_space(space)
        used = [i for i, r in enumerate(regions) if not r.is_empty]
        images, method = self.edit_regions(src, refs, [regions[i] for i in used], space=space,
                                           t=E.steps(steps), mode=mode)
        return PaintedEdit(to_uint8(images), method, used)

    def replay_web_record(self, record: dict[str, Any], where: str = "record") -> PaintedEdit:
        """Run the edit a web editor record describes (its embedded images and masks, see
        :func:`stylemapgan.editing.record.decode_embedded`) as the web editor ran it."""
        from stylemapgan.editing.record import decode_embedded
        from stylemapgan.imaging.images import from_uint8

        spec = decode_embedded(record, self.size, where)
        self.batch_size = max(1, spec.batch_size)
        projections = [self.projection(from_uint8(im)) for im in spec.images]
        return self.paint(projections[0], projections[1:], spec.regions, space=spec.space,
                          steps=spec.steps, mode=spec.mask_mode)

    def apply_direction(self, w: torch.Tensor | Projection, direction: torch.Tensor,
                        strength: Strength, *, mask: torch.Tensor | None = None,
                        mode: E.MaskMode = "area") -> torch.Tensor:
        """``w + strength * direction`` (inside ``mask`` only, if given)."""
        w = self._w(w)
        if mask is not None:
            mask = self._mask(mask)
        with torch.inference_mode():
            return self.render(E.apply_direction(w, direction, strength, mask, mode))


def grid_columns(n: int, limit: int = 8) -> int:
    """Columns for a grid of ``n`` tiles: one row up to ``limit``, else near-square rows."""
    return n if n <= limit else min(limit, math.ceil(math.sqrt(n)))
