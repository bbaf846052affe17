"""The paper's metrics as a library: a registry of named metrics and one module per family.

* :mod:`.registry` — :func:`register_metric`, :func:`calc_metric`, :func:`list_metrics`: metrics
  by name, as stylegan3's ``metric_main`` (``stylemapgan evaluate`` and ``train --set
  metrics=...`` only pick names and write the results).
* :mod:`.context` — :class:`MetricContext`: the model, images, feature networks and settings a
  metric reads.
* Families: :mod:`.reconstruction` (MSE, LPIPS, colour drift), :mod:`.fid` (FID, FID_lerp, cached
  dataset statistics), :mod:`.editing` (MSE_src / MSE_ref of local edits, the detectability
  proxy), :mod:`.runtime` (seconds per image; :func:`time_calls`, the benchmarks' timer).
* :mod:`.triples` — edit triples from files; :mod:`.at_checkpoint` — the metrics of a
  training run's checkpoints.

Everything takes tensors or iterables of batches (``[B, 3, H, W]`` in ``[-1, 1]``), so it does
not depend on how images are stored. Generated images are clamped to [-1, 1] (what an image
file holds) before every metric. Edits are made with the same functions as the editor
(:mod:`stylemapgan.editing`); metrics never import training, the command line or the web
editor. The names below load their module on first use (PEP 562): naming or checking metrics
does not import PyTorch. The functions ``reconstruction`` and ``runtime`` share their module's
name, so they are imported from it: ``from stylemapgan.metrics.reconstruction import
reconstruction``.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    **dict.fromkeys(("MetricContext", "ProgressFactory"), "context"),
    **dict.fromkeys(("MetricRegistry", "MetricResult", "MetricSpec", "builtin_registry",
                     "calc_metric", "default_registry", "is_valid_metric", "list_metrics",
                     "register_metric", "training_metric_names"), "registry"),
    **dict.fromkeys(("Batches", "Progress"), "_batches"),
    **dict.fromkeys(("GaussianStats", "StatsAccumulator", "content_hash", "dataset_stats",
                     "extract_features", "extractor_id", "features_stats", "fid_generation",
                     "fid_lerp", "frechet_distance", "gaussian_stats", "generated_batches",
                     "lerp_batches", "project_all", "small_sample_note", "trace_sqrt_product"),
                    "fid"),
    "colour_errors": "reconstruction",
    **dict.fromkeys(("EditBatch", "average_precision", "detectability", "edit_images",
                     "local_editing", "logistic_regression", "masked_errors"), "editing"),
    **dict.fromkeys(("device_name", "time_calls"), "runtime"),
    **dict.fromkeys(("Triple", "check_triples", "edit_batches", "load_triple", "read_triples"),
                    "triples"),
    **dict.fromkeys(("CheckpointMetrics", "check_weights"), "at_checkpoint"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = sorted(_HOMES)
