"""Training StyleMapGAN on an image collection, one CPU to many GPUs.

* :mod:`.config` — :class:`TrainConfig`, the choices of its settings, ``--set`` overrides
  (:func:`parse_overrides`), :data:`RESUMABLE_CHANGES` / :data:`FIXED_ON_RESUME`,
  :class:`TrainingError`.
* :mod:`.distributed` — :class:`DistInfo`, :func:`init_distributed`,
  :func:`shutdown_distributed`, :func:`broadcast_object` (torchrun process groups), the
  gradient all-reduce and the per-interval loss reduction.
* :mod:`.sampling` — the seeded noise streams, validation split and data order
  (:class:`StepBatchSampler`) that make resuming exact.
* :mod:`.checkpoints` — training checkpoints: write (only finite states), find, read, restore,
  export as a model.
* :mod:`.losses` — the loss terms and the loss of each training phase, as pure functions
  of the networks.
* :mod:`.run_folder` — the run folder: config.json (:func:`read_run_config`), log.jsonl,
  TensorBoard events, temporary-file cleanup, rollback on resume, :func:`new_run_dir`.
* :mod:`.loop` — :class:`Trainer`: the iteration, validation, images and the loop;
  :mod:`.resume` its checkpoint half (write only finite states, resume exactly); :mod:`.ema`
  the moving averages of G and E. Mixed precision: :mod:`stylemapgan.nn.precision` (:func:`resolve_amp`,
  :func:`cpu_has_native_bf16`, re-exported here).

The names below are re-exported here (each loads its module on first use); the loss functions
are used as ``stylemapgan.training.losses``.
"""

from __future__ import annotations

import importlib
from typing import Any

# The names below load their module on first use (PEP 562), so that importing the light
# ``stylemapgan.training.config`` (the command line's --help lists its settings) does not
# import PyTorch.
_HOMES = {
    "losses": None,
    **dict.fromkeys(("CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "NoCheckpointError",
                     "NonFiniteStateError", "last_good_checkpoint", "latest_checkpoint",
                     "list_checkpoints", "model_from_checkpoint", "nonfinite_tensors",
                     "read_checkpoint"), "checkpoints"),
    **dict.fromkeys(("AMP_CHOICES", "FIXED_ON_RESUME", "LOSS_NAMES", "PERCEPTUAL_CHOICES",
                     "RESUMABLE_CHANGES", "TrainConfig", "TrainingError", "parse_overrides"),
                    "config"),
    **dict.fromkeys(("DistInfo", "broadcast_object", "init_distributed",
                     "shutdown_distributed"), "distributed"),
    **dict.fromkeys(("StepReport", "Trainer", "build_perceptual"), "loop"),
    **dict.fromkeys(("ema_decay_at", "ema_update"), "ema"),
    **dict.fromkeys(("new_run_dir", "read_run_config"), "run_folder"),
    **dict.fromkeys(("cpu_has_native_bf16", "resolve_amp"), "stylemapgan.nn.precision"),
    **dict.fromkeys(("StepBatchSampler", "split_indices"), "sampling"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = _HOMES[name]
    if home is None:
        return importlib.import_module(f"{__name__}.{name}")
    module = home if home.startswith("stylemapgan.") else f"{__name__}.{home}"
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AMP_CHOICES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "FIXED_ON_RESUME",
    "LOSS_NAMES",
    "PERCEPTUAL_CHOICES",
    "RESUMABLE_CHANGES",
    "DistInfo",
    "NoCheckpointError",
    "NonFiniteStateError",
    "StepBatchSampler",
    "StepReport",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "broadcast_object",
    "build_perceptual",
    "cpu_has_native_bf16",
    "ema_decay_at",
    "ema_update",
    "init_distributed",
    "last_good_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "losses",
    "model_from_checkpoint",
    "new_run_dir",
    "nonfinite_tensors",
    "parse_overrides",
    "read_checkpoint",
    "read_run_config",
    "resolve_amp",
    "shutdown_distributed",
    "split_indices",
]
