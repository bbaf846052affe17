"""FID family: Gaussian statistics of Inception features, the Frechet distance, cached dataset
statistics, and the two FIDs of the paper.

* FID: Frechet distance between Gaussians fitted (mean, unbiased covariance, float64) to
  Inception pool3 features of two image sets. ``fid_generation``: random samples G(F(z)) vs the
  dataset; ``fid_lerp``: images decoded from ``lerp(E(x_a), E(x_b), lambda)`` for random pairs
  (a != b) of dataset images and ``lambda ~ U(0, 1)``, vs the dataset.

Registered as the metrics ``fid`` and ``fid_lerp`` (:func:`calc_fid`, :func:`calc_fid_lerp`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stylemapgan.errors import InputError
from stylemapgan.metrics._batches import Batches, Progress, check_batch, tick
from stylemapgan.metrics.context import MetricContext
from stylemapgan.utils import seeded_normal

log = logging.getLogger(__name__)

MAX_FID_SAMPLES = 50_000  # the default sample count: the reference set's size, at most this


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
        x = check_batch(x, "feature extraction")
        yield extractor(x.to(device)).to("cpu", torch.float64)
        tick(progress, x.shape[0])


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
        x = check_batch(x, "content hash")
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
                    tick(progress, n)
                    return stats, info
            except Exception as exc:  # a damaged cache entry is recomputed, not fatal
                log.warning("ignoring unreadable FID statistics cache %s (%s)", path, exc)
    stats = features_stats(make_batches(), extractor, device, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stats.save(path)
    return stats, info


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
        ws.append(model.encoder(check_batch(x, "projection").to(device)).cpu())
        tick(progress, x.shape[0])
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



# --------------------------------------------------------------------------- registered metrics
def reference_stats(ctx: MetricContext) -> tuple[GaussianStats, dict[str, Any]]:
    """Feature statistics of the context's FID reference set (computed once per context, read
    from ``ctx.stats_cache`` when there) and where they came from."""

    def compute() -> tuple[GaussianStats, dict[str, Any]]:
        if ctx.inception is None:
            raise InputError("FID needs the Inception network (stylemapgan weights fetch)")
        n = ctx.num_fid_images if ctx.num_fid_images is not None else ctx.num_images
        with ctx.bar(n, "FID reference statistics") as progress:
            return dataset_stats(ctx.reference_images, ctx.inception, device=ctx.device,
                                 cache_dir=ctx.stats_cache, progress=progress)

    return ctx.once("fid_reference", compute)


def _num_samples(ctx: MetricContext, real: GaussianStats) -> int:
    return ctx.fid_samples or min(real.count, MAX_FID_SAMPLES)


def calc_fid(ctx: MetricContext) -> dict[str, Any]:
    """The ``fid`` metric: :func:`fid_generation` with ``ctx.fid_samples`` samples (default:
    as many as reference images, at most 50,000)."""
    real, _ = reference_stats(ctx)
    n = _num_samples(ctx, real)
    with ctx.bar(n, "FID samples") as progress:
        return fid_generation(ctx.model, ctx.inception, real, n, batch_size=ctx.batch_size,
                              seed=ctx.seed, truncation=ctx.truncation, device=ctx.device,
                              progress=progress)


def calc_fid_lerp(ctx: MetricContext) -> dict[str, Any]:
    """The ``fid_lerp`` metric: :func:`fid_lerp` of the evaluation images, ``ctx.lerp_samples``
    interpolations (default: as for ``fid``)."""
    if ctx.num_images < 2:
        raise InputError("FID_lerp needs at least 2 dataset images")
    real, _ = reference_stats(ctx)
    n = ctx.lerp_samples or _num_samples(ctx, real)
    with ctx.bar(n, "FID_lerp samples") as progress:
        return fid_lerp(ctx.model, ctx.images(), ctx.inception, real, n,
                        batch_size=ctx.batch_size, seed=ctx.seed, device=ctx.device,
                        progress=progress)
