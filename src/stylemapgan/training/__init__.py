"""Training StyleMapGAN on an image collection, one CPU to many GPUs.

* :mod:`.config` — :class:`TrainConfig`, the choices of its settings, ``--set`` overrides
  (:func:`parse_overrides`), :data:`RESUMABLE_CHANGES` / :data:`FIXED_ON_RESUME`,
  :class:`TrainingError`.
* :mod:`.distributed` — :class:`DistInfo`, :func:`init_distributed`,
  :func:`shutdown_distributed`, :func:`broadcast_object` (torchrun process groups).
* :mod:`.sampling` — the seeded noise streams, validation split and data order
  (:class:`StepBatchSampler`) that make resuming exact.
* :mod:`.checkpoints` — training checkpoints: write (only finite states), find, read, restore,
  export as a model.
* :mod:`.losses` — the loss terms and the loss of each training phase, as pure functions,
  and :class:`~stylemapgan.training.losses.TrainingStages` (G, E and D as one DDP module).
* :mod:`.loop` — :class:`Trainer` (the loop, mixed precision, EMA, logs, images) and
  :func:`new_run_dir`.

The names below are re-exported here; the loss functions are used as
``stylemapgan.training.losses``.
"""

from stylemapgan.training import losses
from stylemapgan.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    NoCheckpointError,
    NonFiniteStateError,
    last_good_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    model_from_checkpoint,
    nonfinite_tensors,
    read_checkpoint,
)
from stylemapgan.training.config import (
    AMP_CHOICES,
    FIXED_ON_RESUME,
    LOSS_NAMES,
    PERCEPTUAL_CHOICES,
    RESUMABLE_CHANGES,
    TrainConfig,
    TrainingError,
    parse_overrides,
)
from stylemapgan.training.distributed import (
    DistInfo,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from stylemapgan.training.loop import (
    StepReport,
    Trainer,
    build_perceptual,
    cpu_has_native_bf16,
    ema_decay_at,
    ema_update,
    new_run_dir,
    resolve_amp,
)
from stylemapgan.training.sampling import StepBatchSampler, split_indices

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
    "resolve_amp",
    "shutdown_distributed",
    "split_indices",
]
