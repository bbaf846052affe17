"""Training settings: :class:`TrainConfig`, the allowed choices, ``--set`` overrides.

* :class:`TrainConfig` — everything about a run except the architecture (loss weights,
  optimizer, precision, schedule of logs, images and checkpoints), validated on creation.
* :data:`PERCEPTUAL_CHOICES`, :data:`AMP_CHOICES` — the values ``perceptual`` and ``amp`` take;
  :data:`LOSS_NAMES` — the names of the loss terms a training step reports.
* :data:`RESUMABLE_CHANGES` / :data:`FIXED_ON_RESUME` — the settings a resumed run may / may
  not change.
* :func:`parse_overrides` — ``key=value`` strings into ModelConfig / TrainConfig changes.
* :class:`TrainingError` — training cannot go on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ConfigError, StyleMapGANError

__all__ = [
    "AMP_CHOICES",
    "FIXED_ON_RESUME",
    "LOSS_NAMES",
    "PERCEPTUAL_CHOICES",
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "TrainingError",
    "parse_overrides",
]

PERCEPTUAL_CHOICES = ("vgg", "alex", "none", "random:vgg", "random:alex", "random:tiny")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
LOSS_NAMES = ("adv", "w_rec", "d", "d_rec", "r1", "x_rec", "perceptual", "e_adv")


class TrainingError(StyleMapGANError):
    """Training cannot go on (diverged, inconsistent resume)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the architecture (:class:`ModelConfig`).

    Loss weights (0 disables a term):
    ``lambda_adv`` G's adversarial loss on random samples; ``lambda_w_rec`` E's stylemap
    reconstruction of samples; ``lambda_d`` D's logistic loss (reals vs samples);
    ``lambda_d_rec`` D's domain-guided term (reconstructions as fakes); ``r1_gamma`` the R1
    penalty weight; ``lambda_x_rec`` image MSE of reconstructions; ``lambda_perceptual`` LPIPS
    of reconstructions; ``lambda_e_adv`` the adversarial loss on reconstructions for E and G.

    EMA of G and E: ``ema_decay`` is the limit of the per-step decay (0.999, the reference's);
    ``ema_rampup`` warms it up as StyleGAN2-ADA does: the EMA's half-life, in images, is at
    most ``ema_rampup`` times the images seen so far, so early EMA weights forget the random
    initialization (see :func:`~stylemapgan.training.loop.ema_decay_at`); 0 keeps the decay
    fixed from the first step.

    ``metrics``: registered metrics (``reconstruction,fid``; see
    :mod:`stylemapgan.metrics.registry`) computed on the validation images with the EMA
    networks at each checkpoint (:class:`~stylemapgan.metrics.CheckpointMetrics`); empty: none.
    """

    iterations: int = 312_500  # 5M images at batch 16, as the paper's models
    batch_size: int = 16  # total over all processes
    lr: float = 0.002
    beta1: float = 0.0
    beta2: float = 0.99
    lambda_adv: float = 1.0
    lambda_w_rec: float = 1.0
    lambda_d: float = 1.0
    lambda_d_rec: float = 1.0
    lambda_x_rec: float = 1.0
    lambda_perceptual: float = 1.0
    lambda_e_adv: float = 1.0
    r1_gamma: float = 10.0
    r1_interval: int = 16
    ema_decay: float = 0.999
    ema_rampup: float = 0.05
    flip: bool = True
    perceptual: str = "vgg"
    amp: str = "auto"
    channels_last: str = "auto"
    seed: int = 0
    workers: int = 2
    val_images: int = 64
    val_every: int = 5_000
    image_every: int = 1_000
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    log_every: int = 50
    grid_size: int = 16
    metrics: str = ""  # registered metrics computed at each checkpoint, comma-separated

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid train config: {msg}")

        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int):
                if not isinstance(v, int) or isinstance(v, bool):
                    raise bad(f"{f.name} must be an integer, got {v!r}")
            elif f.type in ("float", float):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise bad(f"{f.name} must be a finite number, got {v!r}")
            elif f.type in ("bool", bool):
                if not isinstance(v, bool):
                    raise bad(f"{f.name} must be true or false, got {v!r}")
            elif f.type in ("str", str) and not isinstance(v, str):
                raise bad(f"{f.name} must be a string, got {v!r}")
        positive = ("iterations", "batch_size", "r1_interval", "keep_checkpoints", "grid_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "val_images", "val_every", "image_every", "checkpoint_every",
                     "log_every", "seed"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise bad(f"lr must be > 0, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in (*(f"lambda_{n}" for n in ("adv", "w_rec", "d", "d_rec", "x_rec",
                                                 "perceptual", "e_adv")), "r1_gamma"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0 (0 disables the term), got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise bad(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_rampup < 0:
            raise bad(f"ema_rampup must be >= 0 (0 turns the warm-up off), got {self.ema_rampup}")
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise bad(f"perceptual must be one of {', '.join(PERCEPTUAL_CHOICES)}, "
                      f"got {self.perceptual!r}")
        if self.amp not in AMP_CHOICES:
            raise bad(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise bad(f"channels_last must be auto, on or off, got {self.channels_last!r}")
        if self.metrics.strip():
            from stylemapgan.errors import InputError
            from stylemapgan.metrics.registry import training_metric_names

            try:
                training_metric_names(self.metrics)
            except InputError as exc:
                raise bad(str(exc)) from None

    @property
    def d_lazy_ratio(self) -> float:
        return self.r1_interval / (self.r1_interval + 1) if self.r1_gamma > 0 else 1.0

    @property
    def uses_perceptual(self) -> bool:
        return self.perceptual != "none" and self.lambda_perceptual > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A saved config (``config.json``, a checkpoint). Configs written before the EMA
        warm-up existed trained without it, so a missing ``ema_rampup`` reads as 0 and their
        resume stays exact."""
        data = {"ema_rampup": 0.0, **data}
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"invalid train config: unknown key(s) {', '.join(unknown)}")
        return cls(**data)


#: TrainConfig keys that stay fixed for the life of a run: ``batch_size`` (step k reads images
#: [k*B, (k+1)*B) of the seeded data stream, so another B reads other images and breaks
#: ``images_seen``), ``seed`` (initial weights, noise, data order, validation split) and
#: ``val_images`` (the train / validation split, hence the data order). The model config
#: (the networks' shapes) is fixed too.
FIXED_ON_RESUME = ("batch_size", "seed", "val_images")

#: TrainConfig keys that may change when a run is resumed: everything that does not change the
#: networks' shapes or the data and noise a step sees (learning rate and betas, loss weights,
#: R1, EMA decay, precision, augmentation, the perceptual network, workers, iterations and the
#: log / image / validation / checkpoint schedule). A resume that changes nothing continues
#: bit for bit; each change is recorded in the run's history (``config.json``).
RESUMABLE_CHANGES = tuple(f.name for f in fields(TrainConfig) if f.name not in FIXED_ON_RESUME)


def _field_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(cls)}


def _convert(key: str, text: str, type_name: str) -> Any:
    t = type_name.replace(" ", "")
    low = text.strip().lower()
    if "None" in t and low in ("none", "null"):
        return None
    base = t.replace("|None", "").replace("None|", "")
    if base == "bool":
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={text}: expected true or false")
    if base == "int":
        try:
            return int(text.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected an integer") from None
    if base == "float":
        try:
            v = float(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected a number") from None
        if not math.isfinite(v):
            raise ConfigError(f"--set {key}={text}: expected a finite number")
        return v
    return text.strip()


def parse_overrides(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``["key=value", ...]`` -> (model config changes, train config changes).

    Keys are ModelConfig or TrainConfig field names, optionally prefixed ``model.`` or
    ``train.``; values are converted to the field's type. Raises ConfigError (one line) for
    unknown keys and unparsable values.
    """
    mtypes, ttypes = _field_types(ModelConfig), _field_types(TrainConfig)
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set batch_size=8")
        scope = None
        if key.startswith(("model.", "train.")):
            scope, key = key.split(".", 1)
        if scope != "train" and key in mtypes:
            model[key] = _convert(key, value, mtypes[key])
        elif scope != "model" and key in ttypes:
            train[key] = _convert(key, value, ttypes[key])
        else:
            known = sorted(mtypes) if scope == "model" else sorted(ttypes) if scope == "train" \
                else sorted(mtypes) + sorted(ttypes)
            close = [k for k in known if key in k or k in key][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--set: unknown setting {key!r}{hint}; known settings: "
                              f"{', '.join(known)}")
    return model, train
