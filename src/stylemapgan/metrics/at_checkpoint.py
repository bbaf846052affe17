"""The metrics ``train --set metrics=reconstruction,fid`` computes at each checkpoint.

:class:`CheckpointMetrics` is made once when training starts (so missing weights stop the run
before its first step) and computes the chosen registered metrics on the validation images with
the EMA networks. The training loop writes what :meth:`CheckpointMetrics.compute` returns:
``{"step": N, "metrics": {...}}`` lines in ``log.jsonl`` and ``metrics/NAME/KEY`` TensorBoard
scalars. Nothing here touches the random state training uses, so a run with metrics trains
bit for bit like one without.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from stylemapgan.errors import ConfigError
from stylemapgan.metrics.context import MetricContext
from stylemapgan.metrics.registry import MetricRegistry, default_registry, training_metric_names

log = logging.getLogger(__name__)

PRETRAINED_LPIPS = ("vgg", "alex")


def check_weights(config: Any, registry: MetricRegistry | None = None) -> None:
    """Raise :class:`~stylemapgan.formats.weights.WeightsMissingError` (naming ``stylemapgan
    weights fetch``) when a metric of ``config.metrics`` needs feature-network weights that are
    not in the cache: cheap (no file is read), so a command can check before it makes a run
    folder."""
    from stylemapgan.formats.weights import LPIPS_WEIGHTS, weights_path

    reg = registry or default_registry
    needs = set().union(*(reg.get(n).needs for n in training_metric_names(config.metrics, reg)))
    if "inception" in needs:
        weights_path("inception", verify=False)
    if "lpips" in needs and config.perceptual in PRETRAINED_LPIPS:
        weights_path(LPIPS_WEIGHTS[config.perceptual], verify=False)


@dataclass
class _Networks:
    """The EMA generator and encoder as the model the metrics take."""

    generator: torch.nn.Module
    encoder: torch.nn.Module

    @property
    def config(self) -> Any:
        return self.generator.config

    def project(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(images))


def _finite(value: Any) -> Any:
    """NaN / Inf -> None, so every log.jsonl line stays valid JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class CheckpointMetrics:
    """Registered metrics of the EMA networks on the validation images.

    ``names``: ``TrainConfig.metrics``; ``images``: the validation Dataset (float tensors
    ``[3, R, R]`` in [-1, 1]); ``perceptual`` / ``perceptual_net``: the run's LPIPS setting and
    network. ``reconstruction`` reports LPIPS with that network when it is a pretrained one
    (``vgg``, ``alex``; loaded here when the loss does not use it) and none for ``none`` or
    ``random:*``. FID metrics load the Inception weights now, and compute the validation
    images' statistics once per training session.
    """

    def __init__(self, names: str, images: torch.utils.data.Dataset | None, *,
                 device: torch.device | str, batch_size: int, seed: int = 0,
                 perceptual: str = "none", perceptual_net: torch.nn.Module | None = None,
                 registry: MetricRegistry | None = None) -> None:
        self.registry = registry or default_registry
        self.names = training_metric_names(names, self.registry)
        if self.names and (images is None or len(images) == 0):
            raise ConfigError(f"--set metrics={names}: the metrics are computed on the validation "
                              "images, and there are none; set val_images > 0 or give --val-data")
        self.images, self.device, self.batch_size, self.seed = images, device, batch_size, seed
        needs = set().union(*(self.registry.get(n).needs for n in self.names))
        from stylemapgan.formats.weights import load_inception, load_lpips

        self.lpips = None
        if "lpips" in needs and perceptual in PRETRAINED_LPIPS:
            self.lpips = perceptual_net if perceptual_net is not None else load_lpips(
                perceptual, device=device)
        self.inception = load_inception(device=device) if "inception" in needs else None
        self._shared: dict[str, Any] = {}  # the validation set's FID statistics, once

    @classmethod
    def of_run(cls, config: Any, images: torch.utils.data.Dataset | None, *,
               device: torch.device | str, batch_size: int,
               perceptual_net: torch.nn.Module | None = None) -> CheckpointMetrics:
        """From a training config (``metrics``, ``seed`` and ``perceptual`` are read)."""
        return cls(config.metrics, images, device=device, batch_size=batch_size,
                   seed=config.seed, perceptual=config.perceptual, perceptual_net=perceptual_net)

    def _batches(self) -> Iterator[torch.Tensor]:
        n = len(self.images)
        for s in range(0, n, self.batch_size):
            yield torch.stack([self.images[i] for i in range(s, min(n, s + self.batch_size))])

    def compute(self, generator: torch.nn.Module,
                encoder: torch.nn.Module) -> tuple[dict[str, Any], dict[str, float]]:
        """``(record, scalars)``: the results by metric name (non-finite numbers as None) for
        ``log.jsonl``, and their finite numbers as ``metrics/NAME/KEY`` for TensorBoard."""
        ctx = MetricContext(
            _Networks(generator, encoder), self._batches, len(self.images), device=self.device,
            lpips=self.lpips, inception=self.inception, planned=tuple(self.names),
            seed=self.seed, batch_size=self.batch_size, shared=dict(self._shared))
        record: dict[str, Any] = {}
        scalars: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for name in self.names:
                result = self.registry.calc(name, ctx)
                record[name] = _finite(result.results)
                scalars.update(result.scalars())
                log.info("metric %s: %.1f s", name, result.seconds)
        if "fid_reference" in ctx.shared:  # the validation images do not change
            self._shared["fid_reference"] = ctx.shared["fid_reference"]
        return record, scalars
