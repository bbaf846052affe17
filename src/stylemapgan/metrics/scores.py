"""The paper's evaluation metrics as functions of a model, feature networks and image batches.

Everything here takes tensors or iterables of batches (``[B, 3, H, W]`` in ``[-1, 1]``), so it
does not depend on how images are stored; ``stylemapgan evaluate`` wires it to datasets.

Definitions
-----------
* Reconstruction (Table 2/3): for each image x, ``MSE = mean over (C, H, W) of
  (x - G(E(x)))^2`` on values in [-1, 1], and ``LPIPS(x, G(E(x)))``; both averaged over images.
* FID: Frechet distance between Gaussians fitted (mean, unbiased covariance, float64) to
  Inception pool3 features of two image sets. ``fid_generation``: random samples G(F(z)) vs the
  dataset; ``fid_lerp``: images decoded from ``lerp(E(x_a), E(x_b), lambda)`` for random pairs
  (a != b) of dataset images and ``lambda ~ U(0, 1)``, vs the dataset.
* Local editing (Table 4), for a source x_s, a reference x_r and a mask m in [0, 1] (1 = take
  from the reference), edited image e = G(blend(E(x_s), E(x_r), m)):
  ``MSE_src = sum((1 - m) * (e - x_s)^2) / (3 * sum(1 - m))`` (error outside the mask against
  the original source) and ``MSE_ref = sum(m * (e - x_r)^2) / (3 * sum(m))`` (error inside the
  mask against the original reference); sums over pixels and channels, i.e. per-pixel-channel
  means weighted by the (soft) mask. A triple whose mask is empty (or full) has no MSE_ref (or
  MSE_src) and is left out of that average. Reported: the mean over triples, and per part.
* Detectability: average precision of a real-vs-edited classifier. This is a *proxy*: an
  L2-regularized logistic regression on Inception features, trained on one half of the
  real/edited images and scored on the held-out half - not the paper's CNNDetection network.
* Runtime: seconds per image for projection + generation (batch 1), median of repeats.

Generated images are clamped to [-1, 1] (what an image file holds) before every metric.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stylemapgan.editing.editor import Editor
from stylemapgan.editing.operations import check_space
from stylemapgan.errors import InputError
from stylemapgan.utils import seeded_normal

log = logging.getLogger(__name__)

Batches = Iterable[torch.Tensor]
Progress = Callable[[int], Any] | None  # called with the number of images just processed


def _tick(progress: Progress, n: int) -> None:
    if progress is not None:
        progress(n)


def _check_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{what}: expected image batches [B, 3, H, W], got {shape}")
    return x


# --------------------------------------------------------------------------- Gaussian statistics
STATS_FORMAT = "stylemapgan-fid-stats"  # the format tag of GaussianStats files
STATS_VERSION = 1  # files of version 0 (before the tag) have no tag and are read too


@dataclass
class GaussianStats:
    """Mean and unbiased covariance (float64) of ``count`` feature vectors.

    ``factor`` (optional, ``[D, k]`` with ``sigma = factor @ factor.T``) is kept when there are
    no more samples than dimensions: it makes the Frechet distance of small sets cheap.
    """

    mu: torch.Tensor
    sigma: torch.Tensor
    count: int
    factor: torch.Tensor | None = None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a ``stylemapgan-fid-stats`` file (replacing ``path``), atomically."""
        from stylemapgan.files import write_tagged

        tensors = {"mu": self.mu, "sigma": self.sigma}
        if self.factor is not None:
            tensors["factor"] = self.factor
        write_tagged(path, tensors, fmt=STATS_FORMAT, version=STATS_VERSION,
                     metadata={"count": str(self.count)}, overwrite=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GaussianStats:
        """Read a file written by :meth:`save` (also an untagged one of earlier versions);
        :class:`InputError` naming the file for anything else."""
        from stylemapgan.files import read_tagged

        found = read_tagged(path, fmt=STATS_FORMAT, version=STATS_VERSION,
                            what="FID statistics file", untagged_version=0,
                            fix="delete it to compute the statistics again")
        t = found.tensors
        try:
            count = int(found.metadata.get("count", ""))
            return cls(t["mu"], t["sigma"], count, t.get("factor"))
        except (KeyError, ValueError):
            raise InputError(f"{found.path}: damaged FID statistics file (no mu, sigma or "
                             "count); delete it to compute the statistics again") from None


class StatsAccumulator:
    """Streaming mean / covariance in float64 (features shifted by the first batch's mean, so
    large offsets do not cost precision). Rows are also kept while there are no more of them
    than dimensions, for :attr:`GaussianStats.factor`."""

    def __init__(self) -> None:
        self.count = 0
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        self._rows: list[torch.Tensor] | None = []

    def update(self, features: torch.Tensor) -> None:
        if features.ndim != 2:
            raise InputError(f"features must be [N, D], got {tuple(features.shape)}")
        f = features.detach().to("cpu", torch.float64)
        if not torch.isfinite(f).all():
            raise InputError("features contain NaN or Inf (did the images contain NaN?)")
        if self._shift is None:
            self._shift = f.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        elif f.shape[1] != self._shift.shape[0]:
            raise InputError(f"feature size changed from {self._shift.shape[0]} to {f.shape[1]}")
        d = f - self._shift
        self._sum += d.sum(0)
        self._outer += d.T @ d
        self.count += f.shape[0]
        if self._rows is not None:
            self._rows.append(f)
            if self.count > f.shape[1]:
                self._rows = None

    def finalize(self) -> GaussianStats:
        if self.count < 2 or self._shift is None:
            raise InputError(f"FID needs at least 2 images per set, got {self.count}")
        n = self.count
        m = self._sum / n
        sigma = (self._outer - n * torch.outer(m, m)) / (n - 1)
        mu = self._shift + m
        factor = None
        if self._rows is not None:
            factor = (torch.cat(self._rows) - mu).T / math.sqrt(n - 1)
        return GaussianStats(mu, (sigma + sigma.T) / 2, n, factor)


def gaussian_stats(features: torch.Tensor) -> GaussianStats:
    acc = StatsAccumulator()
    acc.update(features)
    return acc.finalize()


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(a)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def _sqrt_eigsum(sym: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh((sym + sym.T) / 2).clamp_min(0).sqrt().sum()


def trace_sqrt_product(a: GaussianStats, b: GaussianStats) -> torch.Tensor:
    """``tr((S_a S_b)^(1/2))``: for any factorization ``S_a = L L^T`` it equals the sum of
    square roots of the eigenvalues of the symmetric PSD matrix ``L^T S_b L`` (same nonzero
    spectrum as ``S_a S_b``), or the nuclear norm of ``L_a^T L_b`` when both have factors."""
    if a.factor is not None and b.factor is not None:
        return torch.linalg.svdvals(a.factor.double().T @ b.factor.double()).sum()
    if b.factor is not None:
        a, b = b, a
    if a.factor is not None:
        return _sqrt_eigsum(a.factor.double().T @ b.sigma.double() @ a.factor.double())
    for x, y in ((a, b), (b, a)):  # the trace is symmetric in a and b: factor whichever is PD
        low, info = torch.linalg.cholesky_ex(x.sigma.double())
        if int(info) == 0:
            return _sqrt_eigsum(low.T @ y.sigma.double() @ low)
    low = _sqrtm_psd(a.sigma.double())  # both singular: the symmetric square root is a factor
    return _sqrt_eigsum(low.T @ b.sigma.double() @ low)


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` in float64.

    The trace term comes from a symmetric PSD eigenproblem (:func:`trace_sqrt_product`), which
    stays stable for the rank-deficient covariances of fewer samples than dimensions.
    """
    for s in (a, b):
        if s.count < 2:
            raise InputError(f"FID needs at least 2 images per set, got {s.count}")
    if a.mu.shape != b.mu.shape:
        raise InputError(f"feature sizes differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    mu1, mu2 = a.mu.double(), b.mu.double()
    fd = ((mu1 - mu2).square().sum() + torch.trace(a.sigma.double()) + torch.trace(b.sigma.double())
          - 2 * trace_sqrt_product(a, b))
    return float(fd.clamp_min(0))


def small_sample_note(*stats: GaussianStats) -> str | None:
    """A warning text when a set has no more samples than feature dimensions."""
    dim = stats[0].mu.shape[0]
    low = min(s.count for s in stats)
    if low <= dim:
        return (f"only {low} samples for {dim}-d features: the covariance is rank-deficient and "
                "FID is biased upward; compare only numbers with equal sample counts")
    return None


# --------------------------------------------------------------------------- features, caching
@torch.no_grad()
def extract_features(batches: Batches, extractor: torch.nn.Module, device: torch.device | str = "cpu",
                     progress: Progress = None) -> Iterator[torch.Tensor]:
    """Features ``[B, D]`` (CPU, float64) of each image batch."""
    for x in batches:
        x = _check_batch(x, "feature extraction")
        yield extractor(x.to(device)).to("cpu", torch.float64)
        _tick(progress, x.shape[0])


def features_stats(batches: Batches, extractor: torch.nn.Module, device: torch.device | str = "cpu",
                   progress: Progress = None) -> GaussianStats:
    acc = StatsAccumulator()
    for f in extract_features(batches, extractor, device, progress):
        acc.update(f)
    return acc.finalize()


def content_hash(batches: Batches) -> tuple[str, int]:
    """SHA-256 of the images as 8-bit values, in order, and their count: identifies a dataset's
    content (at its evaluation resolution) whatever file it came from."""
    h = hashlib.sha256()
    n = 0
    for x in batches:
        x = _check_batch(x, "content hash")
        q = x.detach().to("cpu", torch.float32).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        for img in q:  # per image, so the batching does not matter
            h.update(f"{tuple(img.shape)}".encode())
            h.update(img.contiguous().numpy().tobytes())
        n += x.shape[0]
    return h.hexdigest(), n


def extractor_id(extractor: torch.nn.Module) -> str:
    """What identifies a feature network's output: its weights' checksum, else its name."""
    return str(getattr(extractor, "weights_sha256", None) or getattr(extractor, "name", None)
               or type(extractor).__name__)


def dataset_stats(make_batches: Callable[[], Batches], extractor: torch.nn.Module, *,
                  device: torch.device | str = "cpu", cache_dir: str | os.PathLike[str] | None = None,
                  progress: Progress = None) -> tuple[GaussianStats, dict[str, Any]]:
    """Feature statistics of a dataset, cached by content.

    ``make_batches()`` must yield the same images each time it is called: with ``cache_dir``
    the images are first hashed (cheap) and the statistics are read from
    ``cache_dir/<key>.safetensors`` when present; the key covers the image content, the
    feature network's weights and input size. Returns the stats and ``{"cache": "hit"|"miss"|
    "off", "key": ..., "path": ...}``.
    """
    info: dict[str, Any] = {"cache": "off"}
    path = None
    if cache_dir is not None:
        digest, n = content_hash(make_batches())
        if n < 2:
            raise InputError(f"FID needs at least 2 dataset images, got {n}")
        key_src = f"v1|{digest}|{n}|{extractor_id(extractor)}|{getattr(extractor, 'input_size', '')}"
        key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
        path = Path(cache_dir) / f"{key}.safetensors"
        info = {"cache": "miss", "key": key, "path": str(path), "content_sha256": digest}
        if path.is_file():
            try:
                stats = GaussianStats.load(path)
                if stats.count == n:
                    info["cache"] = "hit"
                    _tick(progress, n)
                    return stats, info
            except Exception as exc:  # a damaged cache entry is recomputed, not fatal
                log.warning("ignoring unreadable FID statistics cache %s (%s)", path, exc)
    stats = features_stats(make_batches(), extractor, device, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stats.save(path)
    return stats, info


# --------------------------------------------------------------------------- reconstruction
@torch.no_grad()
def colour_errors(real: torch.Tensor, rec: torch.Tensor) -> dict[str, Any]:
    """How far reconstructions ``rec`` are from ``real`` ([N, C, H, W], same range), in float64:
    ``mse`` (mean per-image MSE), ``signed`` (the mean signed error of each channel over all
    images: a colour cast; negative = darker) and ``drift`` (the mean over images and channels
    of the absolute per-image, per-channel mean error: how far each image's colours shift)."""
    if real.shape != rec.shape or real.dim() != 4:
        raise InputError(f"colour_errors: shapes {tuple(real.shape)} and {tuple(rec.shape)} "
                         "must be equal [N, C, H, W]")
    diff = rec.double() - real.double()
    per_image = diff.mean(dim=(2, 3))  # [N, C]
    return {"mse": float(diff.square().mean(dim=(1, 2, 3)).mean()),
            "signed": [float(v) for v in per_image.mean(0)],
            "drift": float(per_image.abs().mean())}


@torch.no_grad()
def reconstruction(model: torch.nn.Module, batches: Batches, lpips: torch.nn.Module | None = None,
                   device: torch.device | str = "cpu", progress: Progress = None) -> dict[str, Any]:
    """Mean per-image MSE (values in [-1, 1]) and LPIPS between x and G(E(x)), and the colour
    drift of the reconstructions (see :func:`colour_errors`: ``drift``, ``signed_rgb``)."""
    mse: list[torch.Tensor] = []
    lp: list[torch.Tensor] = []
    shift: list[torch.Tensor] = []
    for x in batches:
        x = _check_batch(x, "reconstruction").to(device)
        y = model.generator(model.encoder(x)).to(x.dtype).clamp(-1, 1)
        mse.append((y - x).square().mean(dim=(1, 2, 3)).double().cpu())
        shift.append((y.double() - x.double()).mean(dim=(2, 3)).cpu())
        if lpips is not None:
            lp.append(lpips(x, y).double().cpu())
        _tick(progress, x.shape[0])
    if not mse:
        raise InputError("reconstruction: no images")
    m = torch.cat(mse)
    per_image = torch.cat(shift)
    out: dict[str, Any] = {"mse": float(m.mean()), "mse_std": float(m.std()) if len(m) > 1 else 0.0,
                           "count": len(m), "drift": float(per_image.abs().mean()),
                           "signed_rgb": [float(v) for v in per_image.mean(0)]}
    if lpips is not None:
        l_ = torch.cat(lp)
        out.update(lpips=float(l_.mean()), lpips_std=float(l_.std()) if len(l_) > 1 else 0.0)
    return out


# --------------------------------------------------------------------------- FID variants
@torch.no_grad()
def generated_batches(model: torch.nn.Module, num: int, batch_size: int = 16, seed: int = 0,
                      truncation: float = 1.0, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Random images G(F(z)), z of sample i drawn from seed ``seed + i`` alone."""
    g = model.generator
    c = g.config.stylemap_channels
    for start in range(0, num, batch_size):
        idx = range(start, min(num, start + batch_size))
        z = torch.cat([seeded_normal(seed + i, (1, c)) for i in idx]).to(device)
        yield g.generate(z, truncation=truncation).clamp(-1, 1)


def fid_generation(model: torch.nn.Module, extractor: torch.nn.Module, real: GaussianStats,
                   num_samples: int, *, batch_size: int = 16, seed: int = 0, truncation: float = 1.0,
                   device: torch.device | str = "cpu", progress: Progress = None) -> dict[str, Any]:
    """FID of ``num_samples`` random images against the dataset statistics ``real``."""
    fake = features_stats(generated_batches(model, num_samples, batch_size, seed, truncation, device),
                          extractor, device, progress)
    return {"fid": frechet_distance(fake, real), "num_samples": fake.count,
            "num_real": real.count, "truncation": truncation, "note": small_sample_note(fake, real)}


@torch.no_grad()
def project_all(model: torch.nn.Module, batches: Batches, device: torch.device | str = "cpu",
                progress: Progress = None) -> torch.Tensor:
    """Stylemaps E(x) of every image, on the CPU ``[N, C, S, S]``."""
    ws = []
    for x in batches:
        ws.append(model.encoder(_check_batch(x, "projection").to(device)).cpu())
        _tick(progress, x.shape[0])
    if not ws:
        raise InputError("projection: no images")
    return torch.cat(ws)


@torch.no_grad()
def lerp_batches(model: torch.nn.Module, w: torch.Tensor, num: int, batch_size: int = 16,
                 seed: int = 0, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Images G(lerp(w_a, w_b, lambda)) for ``num`` random pairs a != b and lambda ~ U(0, 1)."""
    n = w.shape[0]
    if n < 2:
        raise InputError("FID_lerp needs at least 2 projected images")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, n, (num,), generator=gen)
    b = (a + torch.randint(1, n, (num,), generator=gen)) % n  # uniform over the others
    lam = torch.rand(num, generator=gen)
    for s in range(0, num, batch_size):
        sl = slice(s, min(num, s + batch_size))
        t = lam[sl].view(-1, 1, 1, 1).to(w.dtype)
        yield model.generator(torch.lerp(w[a[sl]], w[b[sl]], t).to(device)).clamp(-1, 1)


def fid_lerp(model: torch.nn.Module, image_batches: Batches, extractor: torch.nn.Module,
             real: GaussianStats, num_samples: int, *, batch_size: int = 16, seed: int = 0,
             device: torch.device | str = "cpu", progress: Progress = None) -> dict[str, Any]:
    """FID of W interpolations of projected images against ``real``."""
    w = project_all(model, image_batches, device)
    fake = features_stats(lerp_batches(model, w, num_samples, batch_size, seed, device),
                          extractor, device, progress)
    return {"fid_lerp": frechet_distance(fake, real), "num_samples": fake.count,
            "num_projected": int(w.shape[0]), "num_real": real.count,
            "note": small_sample_note(fake, real)}


# --------------------------------------------------------------------------- local editing
@dataclass
class EditBatch:
    """Sources, references ``[B, 3, H, W]``, masks ``[B, 1, H, W]`` (1 = reference) and an
    optional part label per triple."""

    src: torch.Tensor
    ref: torch.Tensor
    mask: torch.Tensor
    parts: Sequence[str] = field(default_factory=list)


def masked_errors(edited: torch.Tensor, src: torch.Tensor, ref: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triple ``(MSE_src, MSE_ref)`` as defined in the module docstring; NaN where the
    region is empty. Mask ``[B, 1, H, W]`` at image resolution."""
    m = mask.to(torch.float64)
    e, s, r = edited.double(), src.double(), ref.double()
    ch = e.shape[1]
    outside = (1 - m).sum(dim=(1, 2, 3)) * ch
    inside = m.sum(dim=(1, 2, 3)) * ch
    err_src = ((1 - m) * (e - s).square()).sum(dim=(1, 2, 3))
    err_ref = (m * (e - r).square()).sum(dim=(1, 2, 3))
    nan = torch.full_like(outside, float("nan"))
    mse_src = torch.where(outside > 0, err_src / outside.clamp_min(1e-12), nan)
    mse_ref = torch.where(inside > 0, err_ref / inside.clamp_min(1e-12), nan)
    return mse_src, mse_ref


@torch.no_grad()
def edit_images(model: torch.nn.Module, src: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor,
                space: str = "wplus", mask_mode: str = "area") -> torch.Tensor:
    """G(blend(E(src), E(ref), mask)) with the blend in W+ (every layer) or W, clamped: each
    triple through :meth:`stylemapgan.editing.Editor.local_edit`, the same call the command
    line and the web editor make, so the metric measures the edit users get."""
    check_space(space)
    editor = Editor(model, cache_bytes=0)
    w_s, w_r = editor.project(src), editor.project(ref)
    masks = mask if mask.shape[0] == src.shape[0] else mask.expand(src.shape[0], -1, -1, -1)
    return torch.cat([editor.local_edit(w_s[i], w_r[i], masks[i: i + 1], space=space,
                                        mode=mask_mode)
                      for i in range(src.shape[0])]).clamp(-1, 1)


def _nanmean(values: Sequence[float]) -> tuple[float | None, int]:
    good = [v for v in values if not math.isnan(v)]
    return (sum(good) / len(good) if good else None), len(good)


def local_editing(model: torch.nn.Module, batches: Iterable[EditBatch], *, space: str = "wplus",
                  mask_mode: str = "area", device: torch.device | str = "cpu",
                  extractor: torch.nn.Module | None = None, progress: Progress = None) -> dict[str, Any]:
    """MSE_src / MSE_ref over edit triples (overall and per part). With ``extractor``, also
    returns the features of the real sources and of the edited images (keys ``_real_features``
    and ``_edited_features``) for :func:`detectability`."""
    src_err: list[float] = []
    ref_err: list[float] = []
    parts: list[str] = []
    real_f, edit_f = [], []
    for b in batches:
        src = _check_batch(b.src, "local editing source").to(device)
        ref = _check_batch(b.ref, "local editing reference").to(device)
        if ref.shape != src.shape:
            raise InputError(f"local editing: source {tuple(src.shape)} and reference "
                             f"{tuple(ref.shape)} differ in shape")
        mask = b.mask.to(device)
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != src.shape[0] \
                or mask.shape[-2:] != src.shape[-2:]:
            raise InputError(f"local editing: masks must be [B, 1, H, W] matching the images "
                             f"{tuple(src.shape)}, got {tuple(mask.shape)}")
        edited = edit_images(model, src, ref, mask, space, mask_mode).to(src.dtype)
        es, er = masked_errors(edited, src, ref, mask)
        src_err += es.cpu().tolist()
        ref_err += er.cpu().tolist()
        labels = list(b.parts) if b.parts else ["all"] * src.shape[0]
        if len(labels) != src.shape[0]:
            raise InputError("local editing: one part label per triple is needed")
        parts += labels
        if extractor is not None:
            with torch.no_grad():
                real_f.append(extractor(src).to("cpu", torch.float64))
                edit_f.append(extractor(edited).to("cpu", torch.float64))
        _tick(progress, src.shape[0])
    if not src_err:
        raise InputError("local editing: no triples")
    mse_src, n_src = _nanmean(src_err)
    mse_ref, n_ref = _nanmean(ref_err)
    per_part = {}
    for p in sorted(set(parts)):
        ps, _ = _nanmean([v for v, q in zip(src_err, parts, strict=True) if q == p])
        pr, _ = _nanmean([v for v, q in zip(ref_err, parts, strict=True) if q == p])
        per_part[p] = {"mse_src": ps, "mse_ref": pr, "count": parts.count(p)}
    out: dict[str, Any] = {
        "mse_src": mse_src, "mse_ref": mse_ref, "count": len(src_err),
        "count_mse_src": n_src, "count_mse_ref": n_ref, "space": space, "mask_mode": mask_mode,
        "per_part": per_part,
    }
    if len(per_part) > 1:
        vals_s = [v["mse_src"] for v in per_part.values() if v["mse_src"] is not None]
        vals_r = [v["mse_ref"] for v in per_part.values() if v["mse_ref"] is not None]
        out["mse_src_mean_over_parts"] = sum(vals_s) / len(vals_s) if vals_s else None
        out["mse_ref_mean_over_parts"] = sum(vals_r) / len(vals_r) if vals_r else None
    if extractor is not None:
        out["_real_features"] = torch.cat(real_f)
        out["_edited_features"] = torch.cat(edit_f)
    return out


# --------------------------------------------------------------------------- detectability
def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision, ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in
    decreasing order (tied scores form one threshold), positives = ``labels == 1``."""
    s = scores.detach().double().flatten().cpu()
    y = labels.detach().flatten().cpu().bool()
    if s.numel() != y.numel():
        raise InputError("average precision: scores and labels differ in length")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise InputError("average precision needs at least one positive")
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order].double()
    tp = torch.cumsum(y, 0)
    fp = torch.cumsum(1 - y, 0)
    # the last index of every group of equal scores is a threshold
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - prev) * precision).sum())


def logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2,
                        steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularized logistic regression (float64, L-BFGS). Returns weights and bias."""
    x = x.double()
    y = y.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def detectability(real: torch.Tensor, edited: torch.Tensor, *, seed: int = 0,
                  l2: float = 1e-2) -> dict[str, Any]:
    """AP (in %) of a logistic-regression real-vs-edited classifier on held-out features.

    Each set is split in half at random (seeded): the classifier (features standardized with
    the training half's statistics) is fit on one half and scored on the other, then the
    halves swap; AP is computed over all held-out scores (edited = positive). 50% is chance
    for balanced sets; lower is better (harder to detect).
    """
    n_r, n_e = real.shape[0], edited.shape[0]
    if min(n_r, n_e) < 4:
        raise InputError(f"detectability needs at least 4 real and 4 edited images, got {n_r} and {n_e}")
    gen = torch.Generator().manual_seed(seed)
    pr, pe = torch.randperm(n_r, generator=gen), torch.randperm(n_e, generator=gen)
    folds = [(pr[: n_r // 2], pe[: n_e // 2]), (pr[n_r // 2:], pe[n_e // 2:])]
    scores, labels = [], []
    for k in range(2):
        tr_r, tr_e = folds[k]
        te_r, te_e = folds[1 - k]
        x_tr = torch.cat([real[tr_r], edited[tr_e]]).double()
        y_tr = torch.cat([torch.zeros(len(tr_r)), torch.ones(len(tr_e))])
        mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
        x_tr = (x_tr - mean) / std
        x_te = (torch.cat([real[te_r], edited[te_e]]).double() - mean) / std
        if x_tr.shape[0] < x_tr.shape[1]:
            # The L2-regularized solution lies in the span of the training rows: solving in an
            # orthonormal basis of that span is exact and much cheaper.
            basis = torch.linalg.qr(x_tr.T).Q
            x_tr, x_te = x_tr @ basis, x_te @ basis
        w, b = logistic_regression(x_tr, y_tr, l2=l2)
        scores.append(x_te @ w + b)
        labels.append(torch.cat([torch.zeros(len(te_r)), torch.ones(len(te_e))]))
    ap = average_precision(torch.cat(scores), torch.cat(labels))
    return {"ap": 100.0 * ap, "num_real": n_r, "num_edited": n_e,
            "chance": 100.0 * n_e / (n_r + n_e),
            "method": "proxy: L2 logistic regression on Inception pool3 features, 2-fold held-out "
                      "(not the paper's CNNDetection classifier)"}


# --------------------------------------------------------------------------- runtime
def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA)"
    return f"cpu ({torch.get_num_threads()} threads)"


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def runtime(model: torch.nn.Module, image: torch.Tensor, *, repeats: int = 10, warmup: int = 2,
            device: torch.device | str = "cpu", reference: torch.Tensor | None = None,
            mask: torch.Tensor | None = None, space: str = "wplus") -> dict[str, Any]:
    """Median seconds for one image: projection + generation; with ``reference`` and ``mask``
    also a local edit (two projections, blend, generation)."""
    x = _check_batch(image, "runtime")[:1].to(device)
    out: dict[str, Any] = {"device": device_name(device), "repeats": repeats}

    def timed(fn: Callable[[], Any]) -> float:
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    out["seconds"] = timed(lambda: model.generator(model.encoder(x)))
    if reference is not None and mask is not None:
        r = reference[:1].to(device)
        m = mask[:1].to(device)
        out["edit_seconds"] = timed(lambda: edit_images(model, x, r, m, space))
    return out


__all__ = [
    "Batches", "EditBatch", "GaussianStats", "Progress", "StatsAccumulator", "average_precision",
    "colour_errors", "content_hash", "dataset_stats", "detectability", "device_name", "edit_images",
    "extract_features", "extractor_id", "features_stats", "fid_generation", "fid_lerp",
    "frechet_distance", "gaussian_stats", "generated_batches", "lerp_batches", "local_editing",
    "logistic_regression", "masked_errors", "project_all", "reconstruction", "runtime",
    "small_sample_note", "trace_sqrt_product",
]
