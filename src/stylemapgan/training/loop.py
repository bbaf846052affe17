"""The training loop: :class:`Trainer` runs StyleMapGAN's full objective, single-process or
distributed (torchrun), with checkpoints that resume exactly.

One iteration (:meth:`Trainer.train_step`; all weights settable in
:class:`~stylemapgan.training.config.TrainConfig`, 0 disables a term; the losses of each phase
are the pure functions of :mod:`stylemapgan.training.losses`, which call G, E and D directly):

1. G adversarial: non-saturating loss on D(G(F(z))) -> step G (mapping, resizer, synthesis).
2. Stylemap reconstruction: MSE(E(G(w)), w) with image and w detached -> step E.
3. D: logistic loss on reals vs G(F(z')), plus the domain-guided term where reconstructions
   G(E(x)) are fakes too -> step D.
4. Lazy R1 on reals every ``r1_interval`` iterations (gamma/2 * penalty * interval) -> step D.
5. E and G jointly: MSE(x, G(E(x))) + LPIPS(x, G(E(x))) + non-saturating loss on G(E(x))
   -> step E and G. G(E(x)) is computed once, with its graph, for phases 3 and 5.
6. EMA of G and E (:func:`ema_update`), its decay warmed up over the first images
   (:func:`ema_decay_at`).

Adam with betas (0, 0.99) for G and E; D's learning rate and betas are scaled by
interval/(interval+1) for the lazy R1 (as in StyleGAN2). Mixed precision follows
:func:`stylemapgan.nn.precision.resolve_amp`.

Randomness (:mod:`stylemapgan.training.sampling`): the latents z and the flips of every step
are drawn for the global batch from generators seeded by (seed, step, stream), and the data
order is a fixed function of (seed, epoch); each process takes the rows of its samples. So a
sample's noise does not depend on the number of processes, and a run resumed from a checkpoint
(:mod:`stylemapgan.training.checkpoints`) sees exactly the same data and noise as an
uninterrupted one.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the process group is initialized from the
environment (:mod:`stylemapgan.training.distributed`); every process holds the same networks,
trains on its share of the global batch and averages each phase's gradients over the
processes before its optimizer step (:func:`~stylemapgan.training.distributed.average_gradients`,
R1 included). With a minibatch-stddev group that divides the per-process batch, W processes
compute what one process computes on the global batch. Only rank 0 writes files.

Losses stay on the device between log intervals: they are summed there and reduced over the
processes and read by the host once per interval (and before images, validation and
checkpoints); a NaN or Inf loss is then reported with the iteration it first appeared in.

The run folder (:mod:`stylemapgan.training.run_folder`, rank 0; the caller holds the folder
lock, as ``stylemapgan train`` does): leftover temporary files are removed when a run starts; a
resume rolls the folder back to the checkpoint it continues from, so every step is recorded
once; a checkpoint is written only when the whole training state is finite; settings that
leave the networks' shapes and the data order alone may change on resume
(:data:`~stylemapgan.training.config.RESUMABLE_CHANGES`), each change recorded in the run's
``history``; a run folder without any checkpoint yet is started again from step 0. DataLoader
workers die with the training process (Linux: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ConfigError
from stylemapgan.metrics import CheckpointMetrics
from stylemapgan.nn.networks import Discriminator, Encoder, Generator
from stylemapgan.nn.precision import resolve_amp
from stylemapgan.training import losses
from stylemapgan.training.config import (
    TrainConfig,
    TrainingError,
)
from stylemapgan.training.distributed import DistInfo, LossMeter, average_gradients
from stylemapgan.training.ema import ema_decay_at, ema_update
from stylemapgan.training.init import InitialWeights, check_architecture
from stylemapgan.training.resume import Checkpointing
from stylemapgan.training.run_folder import RunFolder
from stylemapgan.training.sampling import (
    STREAM_FLIP,
    STREAM_GRID,
    STREAM_Z,
    STREAM_Z2,
    StepBatchSampler,
    local_rows,
    seeded_generator,
    split_indices,
    step_generator,
)
from stylemapgan.utils import exit_with_parent

__all__ = ["StepReport", "Trainer", "build_perceptual", "ema_decay_at", "ema_update"]

log = logging.getLogger(__name__)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _exit_with_parent(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker dies with the training process
    (:func:`stylemapgan.utils.exit_with_parent`; PyTorch's own watchdog notices only after
    seconds). It draws no random numbers, so seeding is unchanged."""
    exit_with_parent()


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


@dataclass
class StepReport:
    step: int  # iterations completed
    #: The mean of each loss term over the last completed log interval (over all processes);
    #: read from the device once per interval, so it changes only then (empty before the first).
    losses: dict[str, float]
    seconds_per_step: float


class Trainer(Checkpointing):
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
        #: The files of the run folder (rank 0 only; None elsewhere and without a run_dir).
        self.folder = RunFolder(self.run_dir) if (
            self.run_dir is not None and self.dist.is_main) else None
        self.extra_info = dict(extra_info or {})
        c = config
        if c.batch_size % self.dist.world_size:
            raise ConfigError(f"batch_size {c.batch_size} is not divisible by the number of "
                              f"processes ({self.dist.world_size}); change --set batch_size")
        self.local_batch = c.batch_size // self.dist.world_size
        self._rows = local_rows(self.dist.rank, self.dist.world_size)
        self.amp_dtype = resolve_amp(c.amp, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest
        self._split_data(dataset, val_dataset)
        self._build_networks(init_weights if not resume else None)
        self.nets = losses.Networks(self.generator, self.encoder, self.discriminator)
        #: Compute G(E(real)) once per iteration for phases 3 and 5 (the same tensor, so the
        #: same results; one generator and encoder forward fewer);
        #: ``benchmarks/train_throughput.py --baseline`` turns it off to time the old step.
        self.share_reconstruction = True

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
        self._last_losses: dict[str, float] = {}
        if self.folder is not None:
            self.folder.remove_temporary_files()
        if resume:
            self._resume()

    # ----------------------------------------------------------------- construction
    def _split_data(self, dataset: torch.utils.data.Dataset,
                    val_dataset: torch.utils.data.Dataset | None) -> None:
        """A held-out validation split unless a separate validation set is given."""
        c, n = self.config, len(dataset)
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

    def _build_networks(self, init_weights: InitialWeights | None) -> None:
        """G, E, D and the EMA copies: the same seed on every rank gives identical initial
        weights (drawn without touching the caller's global random state); ``init_weights``
        (``--init-from``) replaces them."""
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.generator = Generator(self.model_config).to(self.device)
            self.encoder = Encoder(self.model_config).to(self.device)
            self.discriminator = Discriminator(self.model_config).to(self.device)
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
        if init_weights is None:
            return
        check_architecture(self.model_config, init_weights.config,
                           str(init_weights.source.get("file", "")))
        fresh = init_weights.apply(self._modules())
        self.init_source = dict(init_weights.source)
        self.extra_info["init_from"] = self.init_source
        log.info("started from %s (%s)%s", self.init_source.get("file"),
                 self.init_source.get("kind"),
                 f"; fresh {', '.join(fresh)} (not in that file)" if fresh else "")
        self.init_source["fresh"] = fresh

    def _optimizer_settings(self) -> dict[str, tuple[float, tuple[float, float]]]:
        """(lr, betas) of the G, E and D optimizers; D's are scaled for the lazy R1."""
        c = self.config
        ratio = c.d_lazy_ratio
        return {"g": (c.lr, (c.beta1, c.beta2)), "e": (c.lr, (c.beta1, c.beta2)),
                "d": (c.lr * ratio, (c.beta1**ratio, c.beta2**ratio))}

    # ----------------------------------------------------------------- inputs of a step
    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loader(self) -> Iterator[torch.Tensor]:
        sampler = StepBatchSampler(self.train_indices, self.config.batch_size, self.dist.rank,
                                   self.dist.world_size, self.config.seed, start_step=self.step,
                                   interleaved=True)
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
            gen = step_generator(self.config.seed, step, STREAM_FLIP)
            flips = torch.rand(self.config.batch_size, generator=gen)[self._rows]
            mask = (flips < 0.5).to(self.device)
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _z(self, step: int, stream: int) -> torch.Tensor:
        gen = step_generator(self.config.seed, step, stream)
        z = torch.randn(self.config.batch_size, self.model_config.stylemap_channels,
                        generator=gen)
        return z[self._rows].to(self.device)

    def _backward_step(self, loss: torch.Tensor, *opts: torch.optim.Optimizer,
                       scaled: bool = True) -> None:
        """Gradients of ``loss`` (averaged over the processes), then a step of ``opts``;
        through the fp16 loss scaler when there is one, unless ``scaled`` is False."""
        scaler = self.scaler if scaled else None
        for o in opts:
            o.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        average_gradients((p for o in opts for group in o.param_groups
                           for p in group["params"]), self.dist)
        for o in opts:
            if scaler is not None:
                scaler.step(o)
            else:
                o.step()
        if scaler is not None:
            scaler.update()

    # ----------------------------------------------------------------- one iteration
    def train_step(self) -> dict[str, torch.Tensor]:
        """Run one iteration (phases 1-6); returns the loss terms it computed (0-d tensors,
        unweighted, this process's; R1 only on regularization steps)."""
        c, step, nets = self.config, self.step, self.nets
        g, e, d = self.generator, self.encoder, self.discriminator
        out: dict[str, torch.Tensor] = {}
        real = self._real_batch(step)

        # 1. G adversarial on random samples; 2. E recovers their stylemaps.
        _set_requires_grad(d, False)
        fake = w = None
        if c.lambda_adv > 0:
            phase, fake, w = losses.generator_phase(nets, self._z(step, STREAM_Z),
                                                    lambda_adv=c.lambda_adv,
                                                    autocast=self._autocast)
            out.update(phase.terms)
            self._backward_step(phase.loss, self.g_opt)
        elif c.lambda_w_rec > 0:
            with torch.no_grad(), self._autocast():
                w = g.mapping(self._z(step, STREAM_Z))
                fake = g(w)
        if c.lambda_w_rec > 0:
            phase = losses.stylemap_phase(nets, fake, w, lambda_w_rec=c.lambda_w_rec,
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
            rec = None
            if c.lambda_d_rec > 0 and reconstruct and self.share_reconstruction:
                with self._autocast():
                    shared_rec = g(e(real))
                rec = shared_rec.detach()
            elif c.lambda_d_rec > 0:
                with torch.no_grad(), self._autocast():
                    rec = g(e(real))
            phase = losses.discriminator_phase(nets, real, fake2, rec, lambda_d=c.lambda_d,
                                               lambda_d_rec=c.lambda_d_rec,
                                               autocast=self._autocast)
            out.update(phase.terms)
            self._backward_step(phase.loss, self.d_opt)
            del fake2, rec

        # 4. Lazy R1 (float32, unscaled: the penalty needs the input gradient as it is).
        if c.r1_gamma > 0 and step % c.r1_interval == 0:
            phase = losses.r1_phase(nets, real, gamma=c.r1_gamma, interval=c.r1_interval)
            out.update(phase.terms)
            self._backward_step(phase.loss, self.d_opt, scaled=False)
        _set_requires_grad(d, False)

        # 5. E and G reconstruct reals: pixels, perception, realism.
        if reconstruct:
            phase = losses.reconstruction_phase(
                nets, real, self.percept if use_p else None, lambda_x_rec=c.lambda_x_rec,
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

    def _record_validation(self, step: int) -> None:
        """Validate and record the result in log.jsonl and TensorBoard (rank 0): the one place
        the loop validates."""
        assert self.folder is not None
        val = self.validate()
        if val:
            self.folder.log({"step": step, "validation": val})
            self.folder.events().scalars(step, val)

    def _record_metrics(self, step: int) -> None:
        """The ``--set metrics=...`` of the EMA networks after a checkpoint, into log.jsonl and
        TensorBoard (rank 0)."""
        assert self.folder is not None and self.checkpoint_metrics is not None
        record, scalars = self.checkpoint_metrics.compute(self.g_ema, self.e_ema)
        self.folder.log({"step": step, "metrics": record})
        self.folder.events().scalars(step, scalars)

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

        if self.folder is None:
            return
        z, reals = self._grid_inputs()
        img_dir = self.folder.path / "images"
        if write_reals:
            grid = make_grid(to_uint8(reals))
            save_png(grid, img_dir / "reals.png", overwrite=True)
            self.folder.events().image(self.step, "reals", grid)
        samples = self.g_ema(self.g_ema.mapping(z.to(self.device)))
        recon = self.g_ema(self.e_ema(reals.to(self.device)))
        for tag, imgs in (("samples", samples), ("reconstructions", recon)):
            grid = make_grid(to_uint8(imgs))
            save_png(grid, img_dir / f"{tag}-{self.step:08d}.png", overwrite=True)
            self.folder.events().image(self.step, tag, grid)

    # ----------------------------------------------------------------- the loop
    def write_run_config(self) -> None:
        """config.json: the resolved model and training configs and facts about the run."""
        if self.folder is None:
            return
        self.folder.write_config({
            "model": self.model_config.to_dict(), "train": self.config.to_dict(),
            "history": self.history,
            "world_size": self.dist.world_size, "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
            "train_images": len(self.train_indices),
            "val_images": len(self.val_data) if self.val_data is not None else 0,
            **self.extra_info})

    def _begin(self) -> None:
        """config.json, the step-0 images and, for a run started from trained networks, the
        step-0 validation and a checkpoint of the initial weights (a resume never needs the
        --init-from file again)."""
        c = self.config
        if self.folder is not None:
            self.folder.path.mkdir(parents=True, exist_ok=True)
            self.write_run_config()
            if self.step == 0:
                self.write_images(write_reals=True)
            if self.step == 0 and self.init_source is not None and c.val_every:
                self._record_validation(0)
        if self.step == 0 and self.init_source is not None and c.checkpoint_every:
            self.save_checkpoint()

    def _log_losses(self, meter: LossMeter, step: int, seconds: float, steps: int,
                    at_log: bool) -> None:
        """Stop on a NaN/Inf loss (the one host sync for the losses); at a log step also reduce
        the interval's means and write the log record (rank 0)."""
        means, bad_at, bad = meter.reduce(self.dist, end_interval=at_log)
        if bad_at is not None:
            raise TrainingError(f"loss {', '.join(bad)} became NaN/Inf in iteration {bad_at}; "
                                f"training stopped; {self._last_good_hint()}")
        if not at_log:
            return
        self._last_losses = means
        if self.folder is None:
            return
        c = self.config
        record = {"step": step, "images_seen": step * c.batch_size,
                  "wall_time": round(self.wall_time, 3),
                  "sec_per_iter": seconds / max(steps, 1), "losses": means}
        if self.device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.folder.log(record)
        self.folder.events().scalars(step, {f"loss/{k}": v for k, v in means.items()})
        self.folder.events().scalars(step, {"timing/sec_per_iter": record["sec_per_iter"]})

    def train(self, progress: Callable[[StepReport], None] | None = None) -> int:
        """Train until ``config.iterations``; returns the final step.

        Raises :class:`TrainingError` if a loss becomes NaN or Inf (found at the end of its log
        interval, named with the iteration it appeared in), or if the training state (weights,
        EMAs, optimizer moments) holds NaN or Inf when a checkpoint is due (that checkpoint is
        not written); the message names the newest checkpoint that is entirely finite, which
        ``--resume`` continues from.
        """
        c = self.config
        main = self.folder is not None

        def due(every: int, step: int) -> bool:
            return bool(every) and (step % every == 0 or step >= c.iterations)

        self._begin()
        meter = LossMeter.on(self.device)
        t_log, steps_since_log = time.perf_counter(), 0
        try:
            while self.step < c.iterations:
                t0 = time.perf_counter()
                values = self.train_step()
                meter.add(values, self.step)  # the iterations done, as the errors count them
                dt = time.perf_counter() - t0
                self.wall_time += dt
                steps_since_log += 1
                step = self.step
                at_log = due(c.log_every, step)
                # Every process reduces at the same steps: log lines, and before anything is
                # written from a state whose losses were not checked yet.
                if at_log or step >= c.iterations or any(
                        due(every, step)
                        for every in (c.image_every, c.val_every, c.checkpoint_every)):
                    now = time.perf_counter()
                    self._log_losses(meter, step, now - t_log, steps_since_log, at_log)
                    if at_log:
                        t_log, steps_since_log = now, 0
                if progress is not None and self.dist.is_main:
                    progress(StepReport(step, dict(self._last_losses), dt))
                if main and due(c.image_every, step):
                    self.write_images()
                if main and due(c.val_every, step):
                    self._record_validation(step)
                if due(c.checkpoint_every, step):
                    self._checked_checkpoint(step)
                    if main and self.checkpoint_metrics is not None:
                        self._record_metrics(step)
                if main:
                    self.folder.flush()
                if self.dist.distributed and any(
                        every and step % every == 0
                        for every in (c.val_every, c.image_every, c.checkpoint_every)):
                    import torch.distributed as dist

                    dist.barrier()
            if self.dist.distributed:  # everyone waits for rank 0's last writes
                import torch.distributed as dist

                dist.barrier()
        finally:
            self.loader_iter = None  # stops DataLoader worker processes
            if self.folder is not None:
                self.folder.close()
        return self.step
