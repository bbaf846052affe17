"""The training loop: :class:`Trainer` runs StyleMapGAN's full objective, single-process or
distributed (torchrun), with checkpoints that resume exactly.

One iteration (all weights settable in :class:`~stylemapgan.training.config.TrainConfig`,
0 disables a term; the losses of each phase are the pure functions of
:mod:`stylemapgan.training.losses`):

1. G adversarial: non-saturating loss on D(G(F(z))) -> step G (mapping, resizer, synthesis).
2. Stylemap reconstruction: MSE(E(G(w)), w) with image and w detached -> step E.
3. D: logistic loss on reals vs G(F(z')), plus the domain-guided term where reconstructions
   G(E(x)) are fakes too -> step D.
4. Lazy R1 on reals every ``r1_interval`` iterations (gamma/2 * penalty * interval) -> step D.
5. E and G jointly: MSE(x, G(E(x))) + LPIPS(x, G(E(x))) + non-saturating loss on G(E(x))
   -> step E and G.
6. EMA of G and E (:func:`ema_update`), its decay warmed up over the first images
   (:func:`ema_decay_at`).

Adam with betas (0, 0.99) for G and E; D's learning rate and betas are scaled by
interval/(interval+1) for the lazy R1 (as in StyleGAN2).

Randomness: the latents z and the flips of every step are drawn from generators seeded by
(seed, rank, step) and the data order is a fixed function of (seed, epoch)
(:mod:`stylemapgan.training.sampling`), so a run resumed from a checkpoint
(:mod:`stylemapgan.training.checkpoints`) sees exactly the same data and noise as an
uninterrupted one.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the process group is initialized from the
environment (:mod:`stylemapgan.training.distributed`); the networks train as one
DistributedDataParallel module (:class:`~stylemapgan.training.losses.TrainingStages`) whose
forward runs one stage; the global batch is split evenly across ranks and only rank 0 writes
files.

Run folder safety (rank 0; the caller holds the folder lock, as ``stylemapgan train`` does):
leftover temporary files of killed writes are removed when a run starts; a resume rolls the
folder back to the checkpoint it continues from (``log.jsonl`` lines, image grids and
TensorBoard events of later steps, through ``SummaryWriter(purge_step=...)``), so every step is
recorded once; a checkpoint is written only when the whole training state is finite; settings
that leave the networks' shapes and the data order alone may change on resume
(:data:`~stylemapgan.training.config.RESUMABLE_CHANGES`), each change recorded in the run's
``history``; a run folder without any checkpoint yet is started again from step 0. DataLoader
workers die with the training process (Linux: ``PR_SET_PDEATHSIG``).

Also here: mixed precision (:func:`resolve_amp`, :func:`cpu_has_native_bf16`), the LPIPS
network (:func:`build_perceptual`), TensorBoard events, and :func:`new_run_dir`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ConfigError
from stylemapgan.files import atomic_write
from stylemapgan.metrics import CheckpointMetrics
from stylemapgan.nn.networks import Discriminator, Encoder, Generator
from stylemapgan.training import losses
from stylemapgan.training.checkpoints import (
    NoCheckpointError,
    checkpoint_path,
    describe_names,
    last_good_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    nonfinite_tensors,
    remove_temporary_files,
    restore_checkpoint,
    write_checkpoint,
)
from stylemapgan.training.config import (
    FIXED_ON_RESUME,
    LOSS_NAMES,
    RESUMABLE_CHANGES,
    TrainConfig,
    TrainingError,
)
from stylemapgan.training.distributed import DistInfo
from stylemapgan.training.init import InitialWeights, check_architecture
from stylemapgan.training.sampling import (
    STREAM_FLIP,
    STREAM_GRID,
    STREAM_Z,
    STREAM_Z2,
    StepBatchSampler,
    seeded_generator,
    split_indices,
)
from stylemapgan.utils import exit_with_parent

__all__ = [
    "StepReport",
    "Trainer",
    "build_perceptual",
    "cpu_has_native_bf16",
    "ema_decay_at",
    "ema_update",
    "new_run_dir",
    "resolve_amp",
]

log = logging.getLogger(__name__)


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


def ema_decay_at(step: int, batch_size: int, decay: float, rampup: float) -> float:
    """The EMA decay of training step ``step`` (0-based), warmed up as in StyleGAN2-ADA.

    ``decay`` per step of ``batch_size`` images means a half-life of
    ``batch_size * ln(0.5) / ln(decay)`` images (0.999 at batch 16: 11,085 images, 693 steps).
    With ``rampup > 0`` the half-life is also at most ``rampup`` times the images seen after
    this step, so the EMA starts as a copy of the networks and lags at most that fraction of
    training behind: at batch 16 and rampup 0.05 the decay is 0.87 at step 100, 0.986 at step
    1,000, 0.9972 at step 5,000 and the full 0.999 from step 13,856 on.
    """
    if rampup <= 0 or decay <= 0:
        return decay
    half_life = rampup * (step + 1) * batch_size
    return min(decay, 0.5 ** (batch_size / half_life))


def _exit_with_parent(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker dies with the training process
    (:func:`stylemapgan.utils.exit_with_parent`; PyTorch's own watchdog notices only after
    seconds). It draws no random numbers, so seeding is unchanged."""
    exit_with_parent()


# Temporary files of atomic_write (``.NAME.RANDOM.tmp``) for the files of a run folder.
_RUN_TMP_RE = re.compile(r"^\.(config\.json|log\.jsonl)\.[^/]*\.tmp$")
_IMAGE_TMP_RE = re.compile(r"^\.(reals|samples-\d{8,}|reconstructions-\d{8,})\.png\.[^/]*\.tmp$")
_IMAGE_RE = re.compile(r"^(samples|reconstructions)-(\d{8,})\.png$")


# --------------------------------------------------------------------------- logging helpers
class _EventWriter:
    """TensorBoard scalars and images through torch.utils.tensorboard (rank 0 only).

    ``purge_step``: a resumed run's first step past its checkpoint; TensorBoard then hides the
    events of earlier sessions from that step on (they were logged after the checkpoint and
    are replayed now)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: JSONL and PNGs still work
            log.warning("tensorboard is not installed; no TensorBoard events are written "
                        "(pip install tensorboard)")
            self._w = None
            return
        self._w = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

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
    """The LPIPS network for ``TrainConfig.perceptual`` (None for "none"): ``vgg`` and ``alex``
    with the real weights from the cache (``stylemapgan weights fetch``; a missing file raises
    :class:`~stylemapgan.formats.weights.WeightsMissingError` naming that command).

    ``random:vgg|alex|tiny`` are randomly initialized networks for tests and benchmarks only.
    """
    if name == "none":
        return None
    if name.startswith("random:"):
        from stylemapgan.nn.perceptual import LPIPS

        return LPIPS.random_init(name.split(":", 1)[1], seed=0)
    from stylemapgan.formats.weights import load_lpips

    return load_lpips(name)


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
    resume: continue from the newest usable checkpoint in ``run_dir`` (readable and finite).
        ``config`` may differ from the checkpoint's in the settings of
        :data:`~stylemapgan.training.config.RESUMABLE_CHANGES` (each change is appended to
        :attr:`history`); a run folder with ``config.json`` but no checkpoint yet is started
        again from step 0 (:attr:`resumed_from` stays None). The run folder is rolled back to
        the checkpoint's step (see the module docstring).
    extra_info: JSON-able facts stored in config.json and checkpoints (dataset, command).

    While a Trainer writes ``run_dir`` no other process may: hold
    ``stylemapgan.files.folder_lock(run_dir)`` around it (``stylemapgan train`` does).
    """

    def __init__(self, model_config: ModelConfig, config: TrainConfig,
                 dataset: torch.utils.data.Dataset, run_dir: str | os.PathLike[str] | None, *,
                 dist_info: DistInfo | None = None,
                 val_dataset: torch.utils.data.Dataset | None = None,
                 perceptual: nn.Module | None = None, resume: bool = False,
                 extra_info: dict[str, Any] | None = None,
                 init_weights: InitialWeights | None = None) -> None:
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
        #: Where the initial weights came from (``--init-from``), or None for a fresh start.
        self.init_source: dict[str, Any] | None = None
        if init_weights is not None and not resume:
            check_architecture(model_config, init_weights.config,
                               str(init_weights.source.get("file", "")))
            fresh = init_weights.apply({"generator": self.generator, "encoder": self.encoder,
                                        "discriminator": self.discriminator,
                                        "g_ema": self.g_ema, "e_ema": self.e_ema})
            self.init_source = dict(init_weights.source)
            self.extra_info["init_from"] = self.init_source
            log.info("started from %s (%s)%s", self.init_source.get("file"),
                     self.init_source.get("kind"),
                     f"; fresh {', '.join(fresh)} (not in that file)" if fresh else "")
            self.init_source["fresh"] = fresh
        self.stages = losses.TrainingStages(self.generator, self.encoder, self.discriminator)
        self.stages_ddp: nn.Module = self.stages
        #: Compute G(E(real)) once per iteration for phases 3 and 5 (the same tensor, so the
        #: same results; one generator and encoder forward fewer). Off under
        #: DistributedDataParallel, which needs each backward to follow exactly one forward;
        #: ``benchmarks/train_throughput.py --baseline`` turns it off to time the old step.
        self.share_reconstruction = not self.dist.distributed
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.stages_ddp = DDP(self.stages, find_unused_parameters=True,
                                  broadcast_buffers=False, **kw)

        hp = self._optimizer_settings()
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=hp["g"][0], betas=hp["g"][1])
        self.e_opt = torch.optim.Adam(self.encoder.parameters(), lr=hp["e"][0], betas=hp["e"][1])
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=hp["d"][0],
                                      betas=hp["d"][1])
        self.scaler = None
        if self.amp_dtype == torch.float16:  # fp16 needs loss scaling; bf16 does not
            scaler_cls = getattr(torch.amp, "GradScaler", None)
            self.scaler = scaler_cls("cuda") if scaler_cls else torch.cuda.amp.GradScaler()

        if perceptual is None and c.uses_perceptual:
            perceptual = build_perceptual(c.perceptual)
        self.percept = (perceptual.to(self.device).eval().requires_grad_(False)
                        if perceptual is not None else None)
        #: The registered metrics ``--set metrics=...`` computes at each checkpoint (rank 0).
        self.checkpoint_metrics = CheckpointMetrics.of_run(
            c, self.val_data, device=self.device, batch_size=self.local_batch,
            perceptual_net=self.percept) if c.metrics and self.dist.is_main else None

        self.step = 0
        self.wall_time = 0.0  # training seconds over all sessions of this run
        #: Settings changed on resume: ``{"step", "key", "old", "new"}`` each (step: the
        #: iterations done when the change took effect); saved in config.json and checkpoints.
        self.history: list[dict[str, Any]] = []
        #: The checkpoint a resumed run continues from (None: a new run, or one started again).
        self.resumed_from: Path | None = None
        self.loader_iter: Iterator | None = None
        self._writer: _EventWriter | None = None
        self._purge_step: int | None = None
        if self.run_dir is not None and self.dist.is_main:
            self._remove_temporary_files()
        if resume:
            self._resume()

    # ----------------------------------------------------------------- helpers
    def _optimizer_settings(self) -> dict[str, tuple[float, tuple[float, float]]]:
        """(lr, betas) of the G, E and D optimizers; D's are scaled for the lazy R1."""
        c = self.config
        ratio = c.d_lazy_ratio
        return {"g": (c.lr, (c.beta1, c.beta2)), "e": (c.lr, (c.beta1, c.beta2)),
                "d": (c.lr * ratio, (c.beta1**ratio, c.beta2**ratio))}

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
            worker_init_fn=_exit_with_parent if w > 0 else None,
        )
        return iter(loader)

    def _real_batch(self, step: int) -> torch.Tensor:
        if self.loader_iter is None:
            self.loader_iter = self._loader()
        x = next(self.loader_iter).to(self.device, non_blocking=True)
        if self.config.flip:
            gen = seeded_generator(self.config.seed, self.dist.rank, step, STREAM_FLIP)
            mask = (torch.rand(x.shape[0], generator=gen) < 0.5).to(self.device)
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _z(self, step: int, stream: int) -> torch.Tensor:
        gen = seeded_generator(self.config.seed, self.dist.rank, step, stream)
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
            phase, fake, w = losses.generator_phase(stages, self._z(step, STREAM_Z),
                                                    lambda_adv=c.lambda_adv,
                                                    autocast=self._autocast)
            out.update(phase.terms)
            self._backward_step(phase.loss, self.g_opt)
        elif c.lambda_w_rec > 0:
            with torch.no_grad(), self._autocast():
                w = g.mapping(self._z(step, STREAM_Z))
                fake = g(w)
        if c.lambda_w_rec > 0:
            phase = losses.stylemap_phase(stages, fake, w, lambda_w_rec=c.lambda_w_rec,
                                          autocast=self._autocast)
            out.update(phase.terms)
            self._backward_step(phase.loss, self.e_opt)
        del fake, w

        # 3. D: reals vs samples, plus reconstructions as fakes (domain-guided). The
        # reconstructions G(E(x)) are the ones phase 5 learns from (D's steps in between leave
        # E and G alone), so they are computed once, with their graph, when both phases run.
        use_p = self.percept is not None and c.lambda_perceptual > 0
        reconstruct = c.lambda_x_rec > 0 or use_p or c.lambda_e_adv > 0
        shared_rec = None
        _set_requires_grad(d, True)
        if c.lambda_d > 0 or c.lambda_d_rec > 0:
            with torch.no_grad(), self._autocast():
                fake2 = g(g.mapping(self._z(step, STREAM_Z2)))
            if c.lambda_d_rec > 0 and reconstruct and self.share_reconstruction:
                with self._autocast():
                    shared_rec = stages("reconstruct_image", real)
                rec = shared_rec.detach()
            elif c.lambda_d_rec > 0:
                with torch.no_grad(), self._autocast():
                    rec = g(e(real))
            else:
                rec = None
            phase = losses.discriminator_phase(stages, real, fake2, rec, lambda_d=c.lambda_d,
                                               lambda_d_rec=c.lambda_d_rec,
                                               autocast=self._autocast)
            out.update(phase.terms)
            self._backward_step(phase.loss, self.d_opt)
            del fake2, rec

        # 4. Lazy R1 (float32: the penalty needs the input gradient unscaled).
        if c.r1_gamma > 0 and step % c.r1_interval == 0:
            phase = losses.r1_phase(stages, real, gamma=c.r1_gamma, interval=c.r1_interval)
            out.update(phase.terms)
            self.d_opt.zero_grad(set_to_none=True)
            phase.loss.backward()
            self.d_opt.step()
        _set_requires_grad(d, False)

        # 5. E and G reconstruct reals: pixels, perception, realism.
        if reconstruct:
            phase = losses.reconstruction_phase(
                stages, real, self.percept if use_p else None, lambda_x_rec=c.lambda_x_rec,
                lambda_perceptual=c.lambda_perceptual, lambda_e_adv=c.lambda_e_adv,
                autocast=self._autocast, rec=shared_rec)
            out.update(phase.terms)
            self._backward_step(phase.loss, self.e_opt, self.g_opt)
        del shared_rec
        _set_requires_grad(d, True)

        # 6. EMA, warmed up over the first images.
        decay = ema_decay_at(self.step, c.batch_size, c.ema_decay, c.ema_rampup)
        ema_update(self.g_ema, g, decay)
        ema_update(self.e_ema, e, decay)
        self.step += 1
        return {k: v.detach() for k, v in out.items()}

    # ----------------------------------------------------------------- validation and images
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Reconstruction MSE, colour drift (the mean absolute per-image, per-channel error of
        the clamped reconstructions) and LPIPS (when a perceptual network is loaded) of the EMA
        networks on the held-out images."""
        if self.val_data is None:
            return {}
        mse_sum, lp_sum, drift_sum, n = 0.0, 0.0, 0.0, 0
        loader = torch.utils.data.DataLoader(self.val_data, batch_size=self.local_batch)
        for x in loader:
            x = x.to(self.device)
            rec = self.g_ema(self.e_ema(x)).float()
            mse_sum += (rec - x).square().flatten(1).mean(1).sum().item()
            # Colour drift: the per-image, per-channel mean error, absolute, averaged.
            drift_sum += (rec.clamp(-1, 1) - x).mean(dim=(2, 3)).abs().mean(1).sum().item()
            if self.percept is not None:
                lp_sum += self.percept(x, rec).float().sum().item()
            n += x.shape[0]
        res = {"val/mse": mse_sum / n, "val/drift": drift_sum / n}
        if self.percept is not None:
            res["val/lpips"] = lp_sum / n
        return res

    def _grid_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.config.grid_size
        z = torch.randn(k, self.model_config.stylemap_channels,
                        generator=seeded_generator(self.config.seed, STREAM_GRID))
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
            self._writer = _EventWriter(self.run_dir, purge_step=self._purge_step)
            self._purge_step = None
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
            "history": self.history,
        }

    def _checkpointed(self) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        modules = {"generator": self.generator, "encoder": self.encoder,
                   "discriminator": self.discriminator, "g_ema": self.g_ema,
                   "e_ema": self.e_ema}
        return modules, {"g": self.g_opt, "e": self.e_opt, "d": self.d_opt}

    def nonfinite_state(self) -> list[str]:
        """The tensors of the training state (G, E, D, the EMAs, the optimizers' moments, the
        loss scaler) that hold NaN or Inf; empty when it can be checkpointed."""
        modules, optimizers = self._checkpointed()
        live: dict[str, torch.Tensor] = {}
        for prefix, module in modules.items():
            for k, v in module.state_dict().items():
                live[f"{prefix}.{k}"] = v
        for name, opt in optimizers.items():
            for pid, st in opt.state_dict()["state"].items():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        live[f"optim.{name}.{pid}.{k}"] = v
        bad = nonfinite_tensors(live)
        if self.scaler is not None:
            bad += [f"scaler.{k}" for k, v in self.scaler.state_dict().items()
                    if isinstance(v, float) and not np.isfinite(v)]
        return bad

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/ckpt-STEP.safetensors`` atomically (rank 0) and keep the newest
        ``keep_checkpoints``. Raises
        :class:`~stylemapgan.training.checkpoints.NonFiniteStateError` (and writes nothing)
        when the training state holds NaN or Inf."""
        if self.run_dir is None or not self.dist.is_main:
            return None
        modules, optimizers = self._checkpointed()
        path = write_checkpoint(
            checkpoint_path(self.run_dir, self.step), modules=modules, optimizers=optimizers,
            state=self._run_state(),
            scaler_state=self.scaler.state_dict() if self.scaler is not None else None)
        for _, old in list_checkpoints(self.run_dir)[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        log.info("saved checkpoint %s", path)
        return path

    def _last_good_hint(self) -> str:
        """Where to go on after a divergence: the newest checkpoint that is really finite."""
        good = last_good_checkpoint(self.run_dir) if self.run_dir is not None else None
        lower = f"{self.config.lr / 10:g}"
        if good is None:
            tail = (f"; `stylemapgan train --resume {self.run_dir} --set lr={lower}` starts the "
                    "run again from step 0" if self.run_dir is not None else "")
            return "no checkpoint was written before that" + tail
        step, path = good
        return (f"the last good checkpoint is {path} (step {step}); resume from it with --resume "
                f"after lowering lr or changing amp, e.g. `stylemapgan train --resume "
                f"{self.run_dir} --set lr={lower}`")

    # ----------------------------------------------------------------- resuming
    def _remove_temporary_files(self) -> None:
        """Delete what killed atomic writes left in the run folder (only our temp names)."""
        assert self.run_dir is not None
        removed = remove_temporary_files(self.run_dir)
        for folder, pattern in ((self.run_dir, _RUN_TMP_RE),
                                (self.run_dir / "images", _IMAGE_TMP_RE)):
            if folder.is_dir():
                for p in folder.iterdir():
                    if pattern.match(p.name) and p.is_file():
                        p.unlink(missing_ok=True)
                        removed += 1
        if removed:
            log.warning("%s: removed %d temporary file(s) left by an interrupted write",
                        self.run_dir, removed)

    def _config_changes(self, saved: TrainConfig, step: int) -> list[dict[str, Any]]:
        return [{"step": step, "key": f.name, "old": getattr(saved, f.name),
                 "new": getattr(self.config, f.name)}
                for f in fields(TrainConfig) if getattr(saved, f.name) != getattr(self.config, f.name)]

    def _resume(self) -> None:
        assert self.run_dir is not None
        try:
            tensors, state, path = latest_checkpoint(self.run_dir, require_finite=True)
        except NoCheckpointError:
            if not (self.run_dir / "config.json").is_file():
                raise
            self._restart()
            return
        saved_model, mine = state["model_config"], self.model_config.to_dict()
        if saved_model != mine:
            keys = sorted(k for k in {*saved_model, *mine} if saved_model.get(k) != mine.get(k))
            raise TrainingError(f"{path}: cannot resume with a changed model ({', '.join(keys)}): "
                                "the model settings define the networks' shapes; start a new "
                                "run instead")
        step = int(state["step"])
        changes = self._config_changes(TrainConfig.from_dict(state["train_config"]), step)
        fixed = [h for h in changes if h["key"] not in RESUMABLE_CHANGES]
        if fixed:
            what = ", ".join(f"{h['key']} ({h['old']!r} -> {h['new']!r})" for h in fixed)
            raise TrainingError(
                f"cannot resume with changed settings {what}: {', '.join(FIXED_ON_RESUME)} fix "
                "the data order, the noise and the validation split, so the run would not go on "
                "as the same run (start a new run instead); every other training setting may "
                "change on resume")
        modules, optimizers = self._checkpointed()
        restore_checkpoint(tensors, state, modules=modules, optimizers=optimizers,
                           scaler=self.scaler, where=str(path))
        # The optimizers take this run's (possibly changed) learning rates and betas; unchanged
        # settings give the same numbers, so an unchanged resume stays exact.
        for name, opt in optimizers.items():
            lr, betas = self._optimizer_settings()[name]
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, betas
        self.step = step
        self.wall_time = float(state["wall_time"])
        self.history = [h for h in state.get("history", []) if int(h.get("step", 0)) < step]
        self.history += changes
        self.resumed_from = path
        if self.dist.is_main:
            self._roll_back_run_folder(step)
        log.info("resumed from %s at step %d", path, self.step)
        for h in changes:
            log.info("changed on resume at step %d: %s %r -> %r", step, h["key"], h["old"], h["new"])

    def _restart(self) -> None:
        """Resume of a run folder without any checkpoint: train it again from step 0."""
        assert self.run_dir is not None
        try:
            saved = json.loads((self.run_dir / "config.json").read_text(encoding="utf-8"))
            self.history = self._config_changes(TrainConfig.from_dict(saved["train"]), 0)
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            self.history = []
        if self.dist.is_main:
            self._roll_back_run_folder(0)
        log.info("%s: no checkpoint was written yet; training it again from step 0 with its "
                 "recorded config", self.run_dir)

    def _roll_back_run_folder(self, step: int) -> None:
        """Forget what the run folder recorded after ``step`` (the checkpoint resumed from):
        log.jsonl lines (and a line cut short by a kill), image grids, unusable newer
        checkpoints (renamed ``*.unusable``) and, through ``purge_step``, TensorBoard events."""
        assert self.run_dir is not None
        path = self.run_dir / "log.jsonl"
        if path.is_file():
            kept, dropped = [], 0
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    dropped += bool(line.strip())
                    continue
                s = record.get("step") if isinstance(record, dict) else None
                if isinstance(s, int) and s > step:
                    dropped += 1
                else:
                    kept.append(line)
            if dropped:
                with atomic_write(path, overwrite=True) as tmp:
                    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
                log.info("%s: dropped %d line(s) logged after step %d", path, dropped, step)
        img_dir = self.run_dir / "images"
        if img_dir.is_dir():
            for p in img_dir.iterdir():
                m = _IMAGE_RE.match(p.name)
                if m and int(m.group(2)) > step:
                    p.unlink(missing_ok=True)
        for s, p in list_checkpoints(self.run_dir):
            if s > step:
                p.replace(p.with_name(p.name + ".unusable"))
                log.warning("%s is damaged or holds NaN/Inf values; renamed to %s.unusable",
                            p, p.name)
        # Events from step+1 on (from 0 when starting again: the step-0 images come again).
        self._purge_step = step + 1 if step > 0 else 0

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
                "history": self.history,
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

        Raises :class:`TrainingError` if a loss becomes NaN or Inf, or if the training state
        (weights, EMAs, optimizer moments) holds NaN or Inf when a checkpoint is due (that
        checkpoint is not written); the message names the newest checkpoint that is entirely
        finite, which ``--resume`` continues from.
        """
        c = self.config
        main = self.dist.is_main and self.run_dir is not None
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.write_run_config()
            if self.step == 0:
                self.write_images(write_reals=True)
            if self.step == 0 and self.init_source is not None:
                # The starting point of the curve, and a checkpoint that holds the initial
                # weights: a resume never needs the --init-from file again.
                val = self.validate() if c.val_every else {}
                if val:
                    self._log_line({"step": 0, "validation": val})
                    self._events().scalars(0, val)
        if self.step == 0 and self.init_source is not None and c.checkpoint_every:
            self.save_checkpoint()
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
                    raise TrainingError(
                        f"loss {', '.join(bad)} became NaN/Inf in iteration {self.step}; "
                        f"training stopped; {self._last_good_hint()}")
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
                    # The losses can be finite while the state is not (e.g. Adam's second
                    # moments overflowed): such a state is never a checkpoint.
                    bad = self.nonfinite_state()
                    flag = self._reduce_mean(torch.tensor([float(bool(bad))], device=self.device))
                    if bad or bool(flag.item() > 0):
                        raise TrainingError(
                            f"the training state holds NaN/Inf values after iteration {step} "
                            f"although the losses are finite ({describe_names(bad) or 'on another process'}); "
                            f"its checkpoint was not written; training stopped; "
                            f"{self._last_good_hint()}")
                    self.save_checkpoint()
                    if main and self.checkpoint_metrics is not None:
                        record, scalars = self.checkpoint_metrics.compute(self.g_ema, self.e_ema)
                        self._log_line({"step": step, "metrics": record})
                        self._events().scalars(step, scalars)
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

