"""The editing engine behind the web editor: stores images, projects each once, runs edits.

Every image is reduced to the model's resolution when it arrives and is identified by the
SHA-256 of those pixels, so the same picture uploaded twice (or as PNG and as lossless WebP) is
one entry. Its projection (stylemap ``w``, the W+ pyramid and the reconstruction) is computed
once and kept in a memory-bounded LRU cache; an edit then costs one generator pass per
interpolation step. The three stores (images, projections, results) are bounded in bytes.

``stylemapgan.editing`` has no projection cache of its own yet, so it lives here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from stylemapgan.editing.cache import ByteLRU
from stylemapgan.editing.operations import (
    Region,
    interpolate_w,
    interpolate_wplus,
    local_edit_w,
    local_edit_wplus,
    steps,
    transplant,
)
from stylemapgan.errors import InputError
from stylemapgan.imaging.images import from_uint8, to_uint8
from stylemapgan.nn.networks import StyleMapGAN
from stylemapgan.nn.runtime import RuntimeOptions, prepare
from stylemapgan.web.imaging import encode_png, fit_square, mask_to_data_url
from stylemapgan.web.settings import WebSettings

log = logging.getLogger(__name__)

Space = Literal["w", "wplus"]
RECORD_FORMAT = "stylemapgan-edit"
RECORD_VERSION = 1


class NotFound(InputError):
    """An id the server does not know (or no longer keeps)."""


@dataclass(frozen=True)
class StoredImage:
    id: str
    name: str
    source: str
    pixels: np.ndarray  # [S, S, 3] uint8 at the model's resolution
    png: bytes

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes + len(self.png)

    def describe(self) -> dict[str, Any]:
        size = self.pixels.shape[0]
        return {"id": self.id, "name": self.name, "source": self.source, "width": size,
                "height": size, "url": f"/api/images/{self.id}.png",
                "reconstruction": f"/api/images/{self.id}/reconstruction.png"}


@dataclass(frozen=True)
class Projection:
    w: torch.Tensor  # [1, C, S, S]
    styles: tuple[torch.Tensor, ...]  # the W+ pyramid, batch 1
    recon_png: bytes

    @property
    def nbytes(self) -> int:
        tensors = (self.w, *self.styles)
        return sum(t.numel() * t.element_size() for t in tensors) + len(self.recon_png)


@dataclass(frozen=True)
class RegionSpec:
    """One painted region: ``mask`` [S, S] in [0, 1] on reference ``reference``, moved by
    (dx, dy) image pixels onto the original."""

    reference: int
    mask: np.ndarray
    dx: int = 0
    dy: int = 0


@dataclass(frozen=True)
class EditSpec:
    original: str
    references: tuple[str, ...] = ()
    regions: tuple[RegionSpec, ...] = ()
    space: Space = "wplus"
    steps: int = 1


@dataclass
class EditResult:
    id: str
    frames: list[bytes]
    record: dict[str, Any]
    compute_ms: float
    method: str
    created: float = field(default_factory=time.time)

    @property
    def nbytes(self) -> int:
        return sum(len(f) for f in self.frames) + 4096

    def urls(self) -> dict[str, Any]:
        return {"frames": [f"/api/results/{self.id}/{k}.png" for k in range(len(self.frames))],
                "record": f"/api/results/{self.id}/record.json"}


def image_id(pixels: np.ndarray) -> str:
    h = hashlib.sha256(f"{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()[:32]


class EditEngine:
    """Owns the model and the in-memory stores. Thread-safe; model passes are serialized."""

    def __init__(self, model: StyleMapGAN, settings: WebSettings | None = None, *,
                 model_name: str = "model", model_sha256: str | None = None,
                 runtime: RuntimeOptions | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.size = model.config.size
        self.device = next(model.parameters()).device
        self.settings = settings or WebSettings()
        # A fast path (reduced precision, channels-last) runs a prepared copy of the networks;
        # float32 uses the model itself, so results equal the library's bit for bit.
        self.runtime = runtime or RuntimeOptions()
        self.runner = prepare(model, self.device, self.runtime) if self.runtime != RuntimeOptions() else None
        self.model_name = model_name
        self.model_sha256 = model_sha256
        self.images: ByteLRU[StoredImage] = ByteLRU(self.settings.image_store_bytes, lambda v: v.nbytes)
        self.projections: ByteLRU[Projection] = ByteLRU(self.settings.projection_cache_bytes,
                                                        lambda v: v.nbytes)
        self.results: ByteLRU[EditResult] = ByteLRU(self.settings.result_store_bytes,
                                                    lambda v: v.nbytes)
        self._model_lock = threading.Lock()
        self.projection_count = 0
        self.generator_passes = 0

    # ------------------------------------------------------------------ network passes
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner.project(x) if self.runner else self.model.project(x)

    def _pyramid(self, w: torch.Tensor) -> list[torch.Tensor]:
        return self.runner.pyramid(w) if self.runner else self.model.generator.pyramid(w)

    def _synthesize(self, styles: list[torch.Tensor]) -> torch.Tensor:
        return self.runner.synthesize(styles) if self.runner else self.model.generator.synthesize(styles)

    # ------------------------------------------------------------------ images
    def add_image(self, img: Image.Image, name: str, source: str = "upload") -> StoredImage:
        """Store ``img`` at the model's resolution and project it (once per content)."""
        pixels = fit_square(img, self.size)
        iid = image_id(pixels)
        stored = self.images.get(iid)
        if stored is None:
            stored = StoredImage(iid, name, source, pixels, encode_png(pixels))
            self.images.put(iid, stored)
        self.projection(iid, stored)
        return stored

    def image(self, iid: str) -> StoredImage:
        stored = self.images.get(iid)
        if stored is None:
            raise NotFound(f"unknown image id {iid[:40]!r}: it was never uploaded or has been "
                           "dropped from memory; upload it again")
        return stored

    def projection(self, iid: str, stored: StoredImage | None = None) -> Projection:
        proj = self.projections.get(iid)
        if proj is not None:
            return proj
        stored = stored or self.image(iid)
        with self._model_lock:
            proj = self.projections.get(iid)  # another thread may have just made it
            if proj is not None:
                return proj
            t0 = time.perf_counter()
            with torch.inference_mode():
                x = from_uint8(stored.pixels).to(self.device)
                w = self._project(x)
                styles = tuple(self._pyramid(w))
                recon = to_uint8(self._synthesize(list(styles)))[0]
            self.projection_count += 1
            self.generator_passes += 1
            log.info("projected image %s in %.0f ms", iid[:12], 1000 * (time.perf_counter() - t0))
        proj = Projection(w, styles, encode_png(recon))
        if not self.projections.put(iid, proj):
            log.warning("projection of %s is larger than the whole cache budget", iid[:12])
        return proj

    # ------------------------------------------------------------------ edits
    def validate(self, spec: EditSpec) -> None:
        s = self.settings
        if spec.space not in ("w", "wplus"):
            raise InputError(f"space must be 'w' or 'wplus', got {spec.space!r}")
        if not 1 <= spec.steps <= s.max_steps:
            raise InputError(f"steps must be between 1 and {s.max_steps}, got {spec.steps}")
        if len(spec.references) > s.max_references:
            raise InputError(f"at most {s.max_references} references per edit, got {len(spec.references)}")
        if len(spec.regions) > 4 * s.max_references:
            raise InputError(f"at most {4 * s.max_references} regions per edit, got {len(spec.regions)}")
        for i, r in enumerate(spec.regions):
            if not 0 <= r.reference < len(spec.references):
                raise InputError(f"region {i} uses reference {r.reference}, but the edit has "
                                 f"{len(spec.references)} reference(s)")
            if r.mask.shape != (self.size, self.size):
                raise InputError(f"region {i}: mask is {r.mask.shape}, expected {self.size}x{self.size}")
            if abs(r.dx) > self.size or abs(r.dy) > self.size:
                raise InputError(f"region {i}: offset ({r.dx}, {r.dy}) is outside the image")

    def edit(self, spec: EditSpec) -> EditResult:
        """Run one edit: the original with each region of its reference pasted (moved by its
        offset), in W or W+, as ``spec.steps`` images from the reconstruction (0) to the full
        edit (1). Costs one generator pass for the batch of steps."""
        self.validate(spec)
        t0 = time.perf_counter()
        src = self.projection(spec.original)
        refs = [self.projection(r) for r in spec.references]
        regions = [r for r in spec.regions if float(r.mask.max(initial=0.0)) > 0.0]
        t = steps(spec.steps).to(self.device)
        masks = [torch.from_numpy(r.mask)[None, None].to(self.device) for r in regions]
        with self._model_lock, torch.inference_mode():
            if not regions:
                method = "reconstruction"
                styles = [s.expand(len(t), -1, -1, -1) for s in src.styles]
            elif len(regions) == 1 and regions[0].dx == 0 and regions[0].dy == 0:
                ref = refs[regions[0].reference]
                if spec.space == "w":
                    method = "local_edit_w"
                    w_edit = local_edit_w(src.w, ref.w, masks[0])
                    styles = self._pyramid(interpolate_w(src.w, w_edit, t))
                else:
                    method = "local_edit_wplus"
                    edited = local_edit_wplus(src.styles, ref.styles, masks[0])
                    styles = interpolate_wplus(src.styles, edited, t)
            else:
                method = f"transplant_{spec.space}"
                regs = [Region(m, dy=r.dy, dx=r.dx, reference=r.reference)
                        for r, m in zip(regions, masks, strict=True)]
                if spec.space == "w":
                    ref_w = torch.cat([r.w for r in refs])
                    styles = self._pyramid(transplant([src.w], [ref_w], regs, self.size, alpha=t)[0])
                else:
                    ref_styles = [torch.cat(level) for level in zip(*(r.styles for r in refs), strict=True)]
                    styles = transplant(src.styles, ref_styles, regs, self.size, alpha=t)
            images = to_uint8(self._synthesize(list(styles)))
            self.generator_passes += 1
        frames = [encode_png(im) for im in images]
        compute_ms = 1000 * (time.perf_counter() - t0)
        rid = secrets.token_urlsafe(12)
        record = self._record(spec, regions, t, method, rid)
        result = EditResult(rid, frames, record, compute_ms, method)
        self.results.put(rid, result)
        return result

    def result(self, rid: str) -> EditResult:
        res = self.results.get(rid)
        if res is None:
            raise NotFound("unknown result id: it has been dropped from memory; run the edit again")
        return res

    def _record(self, spec: EditSpec, regions: list[RegionSpec], t: torch.Tensor, method: str,
                rid: str) -> dict[str, Any]:
        from stylemapgan import __version__

        def img(iid: str) -> dict[str, Any]:
            stored = self.images.get(iid)
            return {"id": iid, "name": stored.name if stored else None}

        return {
            "format": RECORD_FORMAT,
            "format_version": RECORD_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "stylemapgan_version": __version__,
            "model": {"name": self.model_name, "sha256": self.model_sha256,
                      "config": self.config.to_dict(), "runtime": self.runtime.describe()},
            "image_ids": "first 32 hex digits of the SHA-256 of the RGB pixels at model resolution",
            "original": img(spec.original),
            "references": [img(r) for r in spec.references],
            "space": spec.space,
            "mask_mode": "area",
            "steps": spec.steps,
            "alpha": [round(float(v), 6) for v in t.cpu()],
            "method": method,
            "regions": [{"reference": r.reference, "dx": r.dx, "dy": r.dy,
                         "coverage": round(float(r.mask.mean()), 6),
                         "mask": mask_to_data_url(r.mask)} for r in regions],
            "result": rid,
        }

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        c = self.config
        return {"model": self.model_name, "size": c.size, "stylemap": list(c.stylemap_shape),
                "num_styles": c.num_styles, "device": str(self.device),
                "precision": self.runtime.describe(),
                "max_references": self.settings.max_references, "max_steps": self.settings.max_steps,
                "max_upload_bytes": self.settings.max_upload_bytes,
                "max_pixels": self.settings.max_pixels}

    def stats(self) -> dict[str, Any]:
        return {"images": self.images.stats(), "projections": self.projections.stats(),
                "results": self.results.stats(), "projection_count": self.projection_count,
                "generator_passes": self.generator_passes}
