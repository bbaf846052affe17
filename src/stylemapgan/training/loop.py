"""StyleMapGAN training: the full objective, single-process or distributed (torchrun), with
checkpoints that resume exactly.

One iteration (all weights settable in :class:`TrainConfig`, 0 disables a term):

1. G adversarial: non-saturating loss on D(G(F(z))) -> step G (mapping, resizer, synthesis).
2. Stylemap reconstruction: MSE(E(G(w)), w) with image and w detached -> step E.
3. D: logistic loss on reals vs G(F(z')), plus the domain-guided term where reconstructions
   G(E(x)) are fakes too -> step D.
4. Lazy R1 on reals every ``r1_interval`` iterations (gamma/2 * penalty * interval) -> step D.
5. E and G jointly: MSE(x, G(E(x))) + LPIPS(x, G(E(x))) + non-saturating loss on G(E(x))
   -> step E and G.
6. EMA of G and E.

Adam with betas (0, 0.99) for G and E; D's learning rate and betas are scaled by
interval/(interval+1) for the lazy R1 (as in StyleGAN2).

Randomness: the latents z and the flips of every step are drawn from generators seeded by
(seed, rank, step), and the data order is a fixed function of (seed, epoch), so a run resumed
from a checkpoint sees exactly the same data and noise as an uninterrupted one.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the process group is initialized from the
environment (NCCL on GPUs, gloo on CPU); the networks train as one DistributedDataParallel
module whose forward runs one stage; the global batch is split evenly across ranks and only
rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ConfigError, ModelFileError, StyleMapGANError
from stylemapgan.files import atomic_write
from stylemapgan.nn.networks import Discriminator, Encoder, Generator, StyleMapGAN
from stylemapgan.training import losses

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "stylemapgan-train-checkpoint"
CHECKPOINT_VERSION = 1
PERCEPTUAL_CHOICES = ("vgg", "alex", "none", "random:vgg", "random:alex", "random:tiny")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
LOSS_NAMES = ("adv", "w_rec", "d", "d_rec", "r1", "x_rec", "perceptual", "e_adv")
_CKPT_RE = re.compile(r"^ckpt-(\d{8,})\.safetensors$")


class TrainingError(StyleMapGANError):
    """Training cannot go on (diverged, inconsistent resume)."""


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the architecture (:class:`ModelConfig`).

    Loss weights (0 disables a term):
    ``lambda_adv`` G's adversarial loss on random samples; ``lambda_w_rec`` E's stylemap
    reconstruction of samples; ``lambda_d`` D's logistic loss (reals vs samples);
    ``lambda_d_rec`` D's domain-guided term (reconstructions as fakes); ``r1_gamma`` the R1
    penalty weight; ``lambda_x_rec`` image MSE of reconstructions; ``lambda_perceptual`` LPIPS
    of reconstructions; ``lambda_e_adv`` the adversarial loss on reconstructions for E and G.
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
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise bad(f"perceptual must be one of {', '.join(PERCEPTUAL_CHOICES)}, "
                      f"got {self.perceptual!r}")
        if self.amp not in AMP_CHOICES:
            raise bad(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise bad(f"channels_last must be auto, on or off, got {self.channels_last!r}")

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
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"invalid train config: unknown key(s) {', '.join(unknown)}")
        return cls(**data)


#: TrainConfig keys that may change when a run is resumed (they do not affect the math).
RESUMABLE_CHANGES = ("iterations", "workers", "val_every", "image_every", "checkpoint_every",
                     "keep_checkpoints", "log_every")


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


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Set up the process group when launched by torchrun (WORLD_SIZE > 1), else nothing.

    NCCL on CUDA devices (one per process, cuda:LOCAL_RANK), gloo on the CPU. The rendezvous
    address and port come from torchrun's environment; nothing is hard-coded.
    """
    from stylemapgan.utils import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                              "device(s) on this node; lower --nproc_per_node")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=30))
    log.info("rank %d/%d on %s (%s)", rank, world, dev, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _broadcast_object(obj: Any, dist_info: DistInfo) -> Any:
    if not dist_info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- randomness
def _seed_for(*parts: int) -> int:
    """A 63-bit seed that depends on all ``parts`` (seed, rank, step, stream...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
               & ((1 << 63) - 1))


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed_for(*parts))


_STREAM_Z, _STREAM_Z2, _STREAM_FLIP, _STREAM_EPOCH, _STREAM_SPLIT, _STREAM_GRID = range(6)


def split_indices(n: int, val_images: int, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``val_images`` images (a seeded random choice) for validation."""
    if val_images <= 0:
        return list(range(n)), []
    if n < 2:
        return list(range(n)), []
    val_count = min(val_images, n // 10) if n < 2 * val_images else val_images
    val_count = max(val_count, 1) if n >= 10 else 0
    perm = torch.randperm(n, generator=_generator(seed, _STREAM_SPLIT)).tolist()
    val = sorted(perm[:val_count])
    held = set(val)
    return [i for i in range(n) if i not in held], val


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Indices of this rank's share of each step's batch, from ``start_step`` on, forever.

    The data is an endless stream of epochs, each a permutation of ``indices`` seeded by
    (seed, epoch); step k takes global positions [k*B, (k+1)*B) of the stream and rank r the
    r-th of the world_size equal parts. The order depends only on the seed and the global
    batch size, not on the number of processes, and resuming at step k is exact.
    """

    def __init__(self, indices: Sequence[int], global_batch: int, rank: int, world_size: int,
                 seed: int, start_step: int = 0) -> None:
        if global_batch % world_size:
            raise ConfigError(f"batch_size {global_batch} is not divisible by the number of "
                              f"processes ({world_size})")
        self.indices = list(indices)
        self.global_batch, self.local_batch = global_batch, global_batch // world_size
        self.rank, self.seed, self.start_step = rank, seed, start_step
        self._epoch, self._perm = -1, None

    def _at(self, pos: int) -> int:
        n = len(self.indices)
        epoch, offset = divmod(pos, n)
        if epoch != self._epoch:
            self._perm = torch.randperm(n, generator=_generator(self.seed, _STREAM_EPOCH, epoch)).tolist()
            self._epoch = epoch
        return self.indices[self._perm[offset]]

    def batch(self, step: int) -> list[int]:
        start = step * self.global_batch + self.rank * self.local_batch
        return [self._at(p) for p in range(start, start + self.local_batch)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:  # effectively infinite; DataLoader asks only for its repr
        return 2**62


# --------------------------------------------------------------------------- the stages module
class TrainingStages(nn.Module):
    """G, E and D in one module whose ``forward(stage, ...)`` runs one stage of an iteration,
    so that DistributedDataParallel sees exactly one forward per backward."""

    def __init__(self, generator: Generator, encoder: Encoder, discriminator: Discriminator) -> None:
        super().__init__()
        self.generator, self.encoder, self.discriminator = generator, encoder, discriminator

    def forward(self, stage: str, *args: torch.Tensor):
        g, e, d = self.generator, self.encoder, self.discriminator
        if stage == "sample":  # z -> (image, w, D(image))
            (z,) = args
            w = g.mapping(z)
            fake = g(w)
            return fake, w, d(fake)
        if stage == "encode_sample":  # detached image -> E(image)
            (fake,) = args
            return e(fake)
        if stage == "discriminate":  # reals, samples, reconstructions -> three D logit sets
            real, fake, rec = args
            return d(real), d(fake), (d(rec) if rec is not None else None)
        if stage == "r1":  # reals (requiring grad) -> (penalty, D(real))
            (real,) = args
            pred = d(real)
            return losses.r1_penalty(pred, real), pred
        if stage == "reconstruct":  # reals -> (G(E(x)), D(G(E(x))))
            (real,) = args
            rec = g(e(real))
            return rec, d(rec)
        raise ValueError(f"unknown stage {stage!r}")


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


@torch.no_grad()
def ema_update(ema: nn.Module, src: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * src`` for parameters; buffers are copied."""
    ema_params = [p for _, p in ema.named_parameters()]
    src_params = [p.detach() for _, p in src.named_parameters()]
    torch._foreach_lerp_(ema_params, src_params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), src.buffers(), strict=True):
        b_ema.copy_(b)


# --------------------------------------------------------------------------- checkpoints
def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer,
                       tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd["param_groups"]]
    return {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(prefix: str, meta: dict[str, Any],
                         tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    pre = prefix + "."
    for name, t in tensors.items():
        if name.startswith(pre):
            pid, key = name[len(pre):].split(".", 1)
            state.setdefault(int(pid), {})[key] = t
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, path)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A training checkpoint's tensors and its metadata (JSON)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: unreadable training checkpoint "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not a stylemapgan training checkpoint")
    try:
        state = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: training checkpoint metadata is damaged") from None
    if int(meta.get("format_version", "0")) > CHECKPOINT_VERSION:
        raise ModelFileError(f"{path}: checkpoint format is newer than this stylemapgan; upgrade")
    return tensors, state


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The newest readable checkpoint of a run (a damaged newest one is skipped with a warning)."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise ModelFileError(f"{run_dir}: no checkpoints found (looked in "
                             f"{Path(run_dir) / 'checkpoints'}); is this a training run folder?")
    errors = []
    for _, path in reversed(ckpts):
        try:
            tensors, state = read_checkpoint(path)
            return tensors, state, path
        except ModelFileError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
            errors.append(str(exc))
    raise ModelFileError(f"{run_dir}: no readable checkpoint ({errors[0]})")


def _sub_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    pre = prefix + "."
    return {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}


def model_from_checkpoint(tensors: dict[str, torch.Tensor], state: dict[str, Any],
                          ema: bool = True) -> StyleMapGAN:
    """The (EMA) generator and encoder of a training checkpoint as a StyleMapGAN model."""
    from stylemapgan.formats.checkpoint import build_empty, strict_load

    config = ModelConfig.from_dict(state["model_config"])
    model = build_empty(lambda: StyleMapGAN(config))
    g, e = ("g_ema", "e_ema") if ema else ("generator", "encoder")
    strict_load(model.generator, _sub_state(tensors, g), f"checkpoint {g}")
    strict_load(model.encoder, _sub_state(tensors, e), f"checkpoint {e}")
    return model


# --------------------------------------------------------------------------- logging helpers
class _EventWriter:
    """TensorBoard scalars and images through torch.utils.tensorboard (rank 0 only)."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: JSONL and PNGs still work
            log.warning("tensorboard is not installed; no TensorBoard events are written "
                        "(pip install tensorboard)")
            self._w = None
            return
        self._w = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._w is not None:
            for k, v in values.items():
                self._w.add_scalar(k, v, step)

    def image(self, step: int, tag: str, array: np.ndarray) -> None:
        if self._w is not None:
            self._w.add_image(tag, array, step, dataformats="HWC")

    def flush(self) -> None:
        if self._w is not None:
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


def build_perceptual(name: str) -> nn.Module | None:
    """The LPIPS network for ``TrainConfig.perceptual`` (None for "none").

    ``random:vgg|alex|tiny`` are randomly initialized networks for tests and benchmarks only.
    """
    if name == "none":
        return None
    from stylemapgan.nn.perceptual import LPIPS

    if name.startswith("random:"):
        return LPIPS.random_init(name.split(":", 1)[1], seed=0)
    return LPIPS.from_pretrained(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), where bfloat16
    autocast is 2-3x faster than float32; elsewhere it is emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:  # pragma: no cover - defensive
            pass
    return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full float32).

    ``auto`` picks bfloat16 on CUDA devices that support it, else float16 on CUDA; on the CPU
    bfloat16 when the CPU has native bfloat16 instructions, else float32.
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=off on the CPU")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bfloat16; use amp=fp16 or amp=off")
    return torch.bfloat16


# --------------------------------------------------------------------------- the trainer
@dataclass
class StepReport:
    step: int  # iterations completed
    losses: dict[str, float]
    seconds_per_step: float


class Trainer:
    """Owns the networks, optimizers, data stream and run directory of one training run.

    Parameters
    ----------
    model_config, config: architecture and training settings.
    dataset: a Dataset of float tensors [3, R, R] in [-1, 1] (``data.open_dataset``).
    run_dir: where config, logs, images and checkpoints go (written by rank 0 only); None
        writes nothing (benchmarks).
    dist_info: from :func:`init_distributed`; defaults to one CPU process.
    val_dataset: held-out images; by default ``config.val_images`` are split off ``dataset``.
    perceptual: an LPIPS-like module to use instead of building ``config.perceptual``
        (tests inject tiny random networks this way).
    resume: continue from the newest checkpoint in ``run_dir``.
    extra_info: JSON-able facts stored in config.json and checkpoints (dataset, command).
    """

    def __init__(self, model_config: ModelConfig, config: TrainConfig,
                 dataset: torch.utils.data.Dataset, run_dir: str | os.PathLike[str] | None, *,
                 dist_info: DistInfo | None = None,
                 val_dataset: torch.utils.data.Dataset | None = None,
                 perceptual: nn.Module | None = None, resume: bool = False,
                 extra_info: dict[str, Any] | None = None) -> None:
        self.model_config, self.config = model_config, config
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.extra_info = dict(extra_info or {})
        c = config
        if c.batch_size % self.dist.world_size:
            raise ConfigError(f"batch_size {c.batch_size} is not divisible by the number of "
                              f"processes ({self.dist.world_size}); change --set batch_size")
        self.local_batch = c.batch_size // self.dist.world_size
        self.amp_dtype = resolve_amp(c.amp, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest

        # Data: a held-out validation split unless a separate validation set is given.
        n = len(dataset)
        if n < 1:
            raise ConfigError("the dataset is empty")
        if val_dataset is None:
            train_idx, val_idx = split_indices(n, c.val_images, c.seed)
            self.val_data = torch.utils.data.Subset(dataset, val_idx) if val_idx else None
        else:
            train_idx = list(range(n))
            count = min(len(val_dataset), c.val_images)
            self.val_data = torch.utils.data.Subset(val_dataset, range(count)) if count else None
        self.dataset, self.train_indices = dataset, train_idx

        # Networks: the same seed on every rank gives identical initial weights (drawn without
        # touching the caller's global random state).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.generator = Generator(model_config).to(self.device)
            self.encoder = Encoder(model_config).to(self.device)
            self.discriminator = Discriminator(model_config).to(self.device)
        # channels_last speeds up the CPU convolutions (oneDNN) by up to 1.7x; on CUDA it is
        # left to the user (on).
        self.channels_last = c.channels_last == "on" or (
            c.channels_last == "auto" and self.device.type == "cpu")
        if self.channels_last:
            for m in (self.generator, self.encoder, self.discriminator):
                m.to(memory_format=torch.channels_last)
        self.g_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.e_ema = copy.deepcopy(self.encoder).eval().requires_grad_(False)
        self.stages = TrainingStages(self.generator, self.encoder, self.discriminator)
        self.stages_ddp: nn.Module = self.stages
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.stages_ddp = DDP(self.stages, find_unused_parameters=True,
                                  broadcast_buffers=False, **kw)

        betas = (c.beta1, c.beta2)
        ratio = c.d_lazy_ratio
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=c.lr, betas=betas)
        self.e_opt = torch.optim.Adam(self.encoder.parameters(), lr=c.lr, betas=betas)
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=c.lr * ratio,
                                      betas=(c.beta1**ratio, c.beta2**ratio))
        self.scaler = None
        if self.amp_dtype == torch.float16:  # fp16 needs loss scaling; bf16 does not
            scaler_cls = getattr(torch.amp, "GradScaler", None)
            self.scaler = scaler_cls("cuda") if scaler_cls else torch.cuda.amp.GradScaler()

        if perceptual is None and c.uses_perceptual:
            perceptual = build_perceptual(c.perceptual)
        self.percept = (perceptual.to(self.device).eval().requires_grad_(False)
                        if perceptual is not None else None)

        self.step = 0
        self.wall_time = 0.0  # training seconds over all sessions of this run
        self.loader_iter: Iterator | None = None
        self._writer: _EventWriter | None = None
        if resume:
            self._resume()

    # ----------------------------------------------------------------- helpers
    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _backward_step(self, loss: torch.Tensor, *opts: torch.optim.Optimizer) -> None:
        for o in opts:
            o.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            for o in opts:
                self.scaler.step(o)
            self.scaler.update()
        else:
            loss.backward()
            for o in opts:
                o.step()

    def _loader(self) -> Iterator[torch.Tensor]:
        sampler = StepBatchSampler(self.train_indices, self.config.batch_size, self.dist.rank,
                                   self.dist.world_size, self.config.seed, start_step=self.step)
        w = self.config.workers
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=w,
            pin_memory=self.device.type == "cuda", persistent_workers=w > 0,
            prefetch_factor=2 if w > 0 else None,
        )
        return iter(loader)

    def _real_batch(self, step: int) -> torch.Tensor:
        if self.loader_iter is None:
            self.loader_iter = self._loader()
        x = next(self.loader_iter).to(self.device, non_blocking=True)
        if self.config.flip:
            gen = _generator(self.config.seed, self.dist.rank, step, _STREAM_FLIP)
            mask = (torch.rand(x.shape[0], generator=gen) < 0.5).to(self.device)
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _z(self, step: int, stream: int) -> torch.Tensor:
        gen = _generator(self.config.seed, self.dist.rank, step, stream)
        return torch.randn(self.local_batch, self.model_config.stylemap_channels,
                           generator=gen).to(self.device)

    # ----------------------------------------------------------------- one iteration
    def train_step(self) -> dict[str, torch.Tensor]:
        """Run one iteration (stages 1-6); returns the loss terms it computed (0-d tensors,
        unweighted; R1 only on regularization steps)."""
        c, step = self.config, self.step
        stages = self.stages_ddp
        g, e, d = self.generator, self.encoder, self.discriminator
        out: dict[str, torch.Tensor] = {}
        real = self._real_batch(step)

        # 1. G adversarial on random samples; 2. E recovers their stylemaps.
        _set_requires_grad(d, False)
        fake = w = None
        if c.lambda_adv > 0:
            with self._autocast():
                fake, w, pred = stages("sample", self._z(step, _STREAM_Z))
            out["adv"] = losses.generator_adversarial(pred)
            self._backward_step(out["adv"] * c.lambda_adv, self.g_opt)
        elif c.lambda_w_rec > 0:
            with torch.no_grad(), self._autocast():
                w = g.mapping(self._z(step, _STREAM_Z))
                fake = g(w)
        if c.lambda_w_rec > 0:
            with self._autocast():
                w_hat = stages("encode_sample", fake.detach())
            out["w_rec"] = losses.mse(w_hat, w.detach())
            self._backward_step(out["w_rec"] * c.lambda_w_rec, self.e_opt)
        del fake, w

        # 3. D: reals vs samples, plus reconstructions as fakes (domain-guided).
        _set_requires_grad(d, True)
        if c.lambda_d > 0 or c.lambda_d_rec > 0:
            with torch.no_grad(), self._autocast():
                fake2 = g(g.mapping(self._z(step, _STREAM_Z2)))
                rec = g(e(real)) if c.lambda_d_rec > 0 else None
            with self._autocast():
                real_pred, fake_pred, rec_pred = stages("discriminate", real, fake2, rec)
            out["d"] = losses.discriminator_logistic(real_pred, fake_pred)
            loss = out["d"] * c.lambda_d
            del real_pred, fake_pred
            if rec_pred is not None:
                out["d_rec"] = losses.discriminator_fake(rec_pred)
                loss = loss + out["d_rec"] * c.lambda_d_rec
            self._backward_step(loss, self.d_opt)
            del fake2, rec

        # 4. Lazy R1 (float32: the penalty needs the input gradient unscaled).
        if c.r1_gamma > 0 and step % c.r1_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            penalty, pred = stages("r1", real_r1)
            out["r1"] = penalty
            loss = c.r1_gamma / 2 * penalty * c.r1_interval + 0 * pred.float().sum()
            self.d_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.d_opt.step()
        _set_requires_grad(d, False)

        # 5. E and G reconstruct reals: pixels, perception, realism.
        use_p = self.percept is not None and c.lambda_perceptual > 0
        if c.lambda_x_rec > 0 or use_p or c.lambda_e_adv > 0:
            with self._autocast():
                rec, rec_pred = stages("reconstruct", real)
                if use_p:
                    out["perceptual"] = self.percept(real, rec).float().mean()
            out["x_rec"] = losses.mse(rec, real)
            out["e_adv"] = losses.generator_adversarial(rec_pred)
            loss = out["x_rec"] * c.lambda_x_rec + out["e_adv"] * c.lambda_e_adv
            if use_p:
                loss = loss + out["perceptual"] * c.lambda_perceptual
            self._backward_step(loss, self.e_opt, self.g_opt)
            del rec, rec_pred
        _set_requires_grad(d, True)

        # 6. EMA.
        ema_update(self.g_ema, g, c.ema_decay)
        ema_update(self.e_ema, e, c.ema_decay)
        self.step += 1
        return {k: v.detach() for k, v in out.items()}

    # ----------------------------------------------------------------- validation and images
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Reconstruction MSE (and LPIPS when a perceptual network is loaded) of the EMA
        networks on the held-out images."""
        if self.val_data is None:
            return {}
        mse_sum, lp_sum, n = 0.0, 0.0, 0
        loader = torch.utils.data.DataLoader(self.val_data, batch_size=self.local_batch)
        for x in loader:
            x = x.to(self.device)
            rec = self.g_ema(self.e_ema(x)).float()
            mse_sum += (rec - x).square().flatten(1).mean(1).sum().item()
            if self.percept is not None:
                lp_sum += self.percept(x, rec).float().sum().item()
            n += x.shape[0]
        res = {"val/mse": mse_sum / n}
        if self.percept is not None:
            res["val/lpips"] = lp_sum / n
        return res

    def _grid_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.config.grid_size
        z = torch.randn(k, self.model_config.stylemap_channels,
                        generator=_generator(self.config.seed, _STREAM_GRID))
        source = self.val_data if self.val_data is not None else torch.utils.data.Subset(
            self.dataset, self.train_indices)
        reals = torch.stack([source[i] for i in range(min(k, len(source)))])
        return z, reals

    @torch.no_grad()
    def write_images(self, write_reals: bool = False) -> None:
        from stylemapgan.imaging.images import make_grid, save_png, to_uint8

        if self.run_dir is None:
            return
        z, reals = self._grid_inputs()
        img_dir = self.run_dir / "images"
        if write_reals:
            grid = make_grid(to_uint8(reals))
            save_png(grid, img_dir / "reals.png", overwrite=True)
            self._events().image(self.step, "reals", grid)
        samples = self.g_ema(self.g_ema.mapping(z.to(self.device)))
        recon = self.g_ema(self.e_ema(reals.to(self.device)))
        for tag, imgs in (("samples", samples), ("reconstructions", recon)):
            grid = make_grid(to_uint8(imgs))
            save_png(grid, img_dir / f"{tag}-{self.step:08d}.png", overwrite=True)
            self._events().image(self.step, tag, grid)

    def _events(self) -> _EventWriter:
        if self._writer is None:
            assert self.run_dir is not None
            self._writer = _EventWriter(self.run_dir)
        return self._writer

    # ----------------------------------------------------------------- checkpoints
    def _run_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "images_seen": self.step * self.config.batch_size,
            "wall_time": self.wall_time,
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "world_size": self.dist.world_size,
            "info": self.extra_info,
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/ckpt-STEP.safetensors`` atomically (rank 0) and keep the newest
        ``keep_checkpoints``."""
        from safetensors.torch import save_file

        if self.run_dir is None or not self.dist.is_main:
            return None
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (("generator", self.generator), ("encoder", self.encoder),
                               ("discriminator", self.discriminator), ("g_ema", self.g_ema),
                               ("e_ema", self.e_ema)):
            for k, v in module.state_dict().items():
                tensors[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
        state = self._run_state()
        state["optimizers"] = {name: _flatten_optimizer(f"optim.{name}", opt, tensors)
                               for name, opt in (("g", self.g_opt), ("e", self.e_opt),
                                                 ("d", self.d_opt))}
        tensors["rng.torch_cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        np_state = np.random.get_state()
        state["rng"] = {
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        meta = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_VERSION),
                "state": json.dumps(state)}
        path = self.run_dir / "checkpoints" / f"ckpt-{self.step:08d}.safetensors"
        with atomic_write(path, overwrite=True) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        for _, old in list_checkpoints(self.run_dir)[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        log.info("saved checkpoint %s", path)
        return path

    def _resume(self) -> None:
        assert self.run_dir is not None
        tensors, state, path = latest_checkpoint(self.run_dir)
        if state["model_config"] != self.model_config.to_dict():
            raise TrainingError(f"{path}: the checkpoint's model config differs from this run's")
        saved = TrainConfig.from_dict(state["train_config"])
        changed = [f.name for f in fields(TrainConfig)
                   if getattr(saved, f.name) != getattr(self.config, f.name)
                   and f.name not in RESUMABLE_CHANGES]
        if changed:
            raise TrainingError(f"cannot resume with changed settings {', '.join(changed)}; only "
                                f"{', '.join(RESUMABLE_CHANGES)} may change")
        from stylemapgan.formats.checkpoint import strict_load

        for prefix, module in (("generator", self.generator), ("encoder", self.encoder),
                               ("discriminator", self.discriminator), ("g_ema", self.g_ema),
                               ("e_ema", self.e_ema)):
            strict_load(module, _sub_state(tensors, prefix), f"{path} ({prefix})")
        for name, opt in (("g", self.g_opt), ("e", self.e_opt), ("d", self.d_opt)):
            opt.load_state_dict(_unflatten_optimizer(f"optim.{name}", state["optimizers"][name],
                                                     tensors))
        torch.set_rng_state(tensors["rng.torch_cpu"])
        cuda_states = [tensors[k] for k in sorted(
            (k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
        py = state["rng"]["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npst = state["rng"]["numpy"]
        np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.wall_time = float(state["wall_time"])
        log.info("resumed from %s at step %d", path, self.step)

    def check_ranks_in_sync(self) -> None:
        """Distributed runs: verify that every rank holds the same weights (a float64 checksum
        of G, E and D); raises TrainingError if not."""
        if not self.dist.distributed:
            return
        import torch.distributed as dist

        with torch.no_grad():
            sums = torch.stack([
                torch.stack([p.double().sum() for p in m.parameters()]).sum()
                for m in (self.generator, self.encoder, self.discriminator)])
        gathered = [torch.zeros_like(sums) for _ in range(self.dist.world_size)]
        dist.all_gather(gathered, sums)
        if any(not torch.equal(g, gathered[0]) for g in gathered[1:]):
            raise TrainingError(f"the processes' weights differ at step {self.step}; distributed "
                                "training is out of sync (please report this)")

    # ----------------------------------------------------------------- the loop
    def _reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.dist.distributed:
            import torch.distributed as dist

            values = values.clone()
            dist.all_reduce(values)
            values /= self.dist.world_size
        return values

    def _log_line(self, record: dict[str, Any]) -> None:
        assert self.run_dir is not None
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_run_config(self) -> None:
        """config.json: the resolved model and training configs and facts about the run."""
        if self.run_dir is None or not self.dist.is_main:
            return
        data = {"model": self.model_config.to_dict(), "train": self.config.to_dict(),
                "world_size": self.dist.world_size, "device": str(self.device),
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
                "train_images": len(self.train_indices),
                "val_images": len(self.val_data) if self.val_data is not None else 0,
                **self.extra_info}
        path = self.run_dir / "config.json"
        with atomic_write(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def train(self, progress: Callable[[StepReport], None] | None = None) -> int:
        """Train until ``config.iterations``; returns the final step.

        Raises :class:`TrainingError` if a loss becomes NaN or Inf; the newest checkpoint
        written before that is left untouched.
        """
        c = self.config
        main = self.dist.is_main and self.run_dir is not None
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.write_run_config()
            if self.step == 0:
                self.write_images(write_reals=True)
        names = list(LOSS_NAMES)
        sums = torch.zeros(len(names), device=self.device)
        counts = torch.zeros(len(names), device=self.device)
        t_log = time.perf_counter()
        steps_since_log = 0
        try:
            while self.step < c.iterations:
                t0 = time.perf_counter()
                values = self.train_step()
                zero = torch.zeros((), device=self.device)
                vec = self._reduce_mean(torch.stack([values.get(k, zero).float() for k in names]))
                finite = torch.isfinite(vec)
                if not bool(finite.all()):
                    bad = [n for n, ok in zip(names, finite.tolist(), strict=True) if not ok]
                    last = list_checkpoints(self.run_dir) if self.run_dir is not None else []
                    where = (f"the last good checkpoint is {last[-1][1]} (step {last[-1][0]}); "
                             "resume from it with --resume after lowering lr or changing amp"
                             if last else "no checkpoint was written before that")
                    raise TrainingError(
                        f"loss {', '.join(bad)} became NaN/Inf in iteration {self.step}; "
                        f"training stopped; {where}")
                done = torch.tensor([k in values for k in names], dtype=counts.dtype,
                                    device=self.device)
                sums += vec * done
                counts += done
                dt = time.perf_counter() - t0
                self.wall_time += dt
                steps_since_log += 1
                step = self.step
                if progress is not None and self.dist.is_main:
                    progress(StepReport(step, {k: v for k, v in zip(names, vec.tolist(), strict=True)
                                               if k in values}, dt))
                at_end = step >= c.iterations
                if c.log_every and (step % c.log_every == 0 or at_end):
                    now = time.perf_counter()
                    means = (sums / counts.clamp(min=1)).tolist()
                    seen = counts.tolist()
                    if main:
                        record = {"step": step, "images_seen": step * c.batch_size,
                                  "wall_time": round(self.wall_time, 3),
                                  "sec_per_iter": (now - t_log) / max(steps_since_log, 1),
                                  "losses": {k: m for k, m, n in zip(names, means, seen, strict=True)
                                             if n > 0}}
                        if self.device.type == "cuda":
                            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                        self._log_line(record)
                        self._events().scalars(step, {f"loss/{k}": v for k, v in record["losses"].items()})
                        self._events().scalars(step, {"timing/sec_per_iter": record["sec_per_iter"]})
                    sums.zero_()
                    counts.zero_()
                    t_log, steps_since_log = now, 0
                if main and c.image_every and (step % c.image_every == 0 or at_end):
                    self.write_images()
                if main and c.val_every and (step % c.val_every == 0 or at_end):
                    val = self.validate()
                    if val:
                        self._log_line({"step": step, "validation": val})
                        self._events().scalars(step, val)
                if c.checkpoint_every and (step % c.checkpoint_every == 0 or at_end):
                    self.check_ranks_in_sync()
                    self.save_checkpoint()
                if main and self._writer is not None:
                    self._writer.flush()
                if self.dist.distributed and (
                        (c.val_every and step % c.val_every == 0)
                        or (c.image_every and step % c.image_every == 0)
                        or (c.checkpoint_every and step % c.checkpoint_every == 0)):
                    import torch.distributed as dist

                    dist.barrier()
            if self.dist.distributed:  # everyone waits for rank 0's last writes
                import torch.distributed as dist

                dist.barrier()
        finally:
            self.loader_iter = None  # stops DataLoader worker processes
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self.step


def new_run_dir(outdir: str | os.PathLike[str], name: str) -> Path:
    """``outdir/NNNNN-name`` with the next free number."""
    out = Path(outdir)
    taken = [int(m.group(1)) for p in (out.iterdir() if out.is_dir() else [])
             if (m := re.match(r"^(\d{5,})-", p.name))]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    return out / f"{(max(taken) + 1) if taken else 0:05d}-{safe}"


__all__ = [
    "DistInfo",
    "StepBatchSampler",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "build_perceptual",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "model_from_checkpoint",
    "new_run_dir",
    "parse_overrides",
    "read_checkpoint",
]
