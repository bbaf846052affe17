"""The checkpoint half of :class:`~stylemapgan.training.loop.Trainer`: writing a checkpoint
(only of a finite state, after checking that the processes agree), finding where to go on after
a divergence, and resuming a run exactly (:class:`Checkpointing`, a base class of Trainer).

Resuming continues from the newest usable checkpoint of the run folder (readable and finite):
the model settings must be the checkpoint's, the training settings may differ only in
:data:`~stylemapgan.training.config.RESUMABLE_CHANGES` (each change recorded in ``history``),
and the run folder is rolled back to the checkpoint's step
(:meth:`~stylemapgan.training.run_folder.RunFolder.roll_back`). A run folder with
``config.json`` but no checkpoint yet is trained again from step 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ConfigError, InputError
from stylemapgan.training.checkpoints import (
    NoCheckpointError,
    checkpoint_path,
    describe_names,
    last_good_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    nonfinite_tensors,
    restore_checkpoint,
    write_checkpoint,
)
from stylemapgan.training.config import (
    FIXED_ON_RESUME,
    RESUMABLE_CHANGES,
    TrainConfig,
    TrainingError,
)
from stylemapgan.training.distributed import DistInfo, all_reduce
from stylemapgan.training.run_folder import RunFolder, config_changes, read_run_config

__all__ = ["Checkpointing"]

log = logging.getLogger(__name__)


class Checkpointing:
    """Checkpoints and resuming, for :class:`~stylemapgan.training.loop.Trainer`, which sets
    the attributes below."""

    model_config: ModelConfig
    config: TrainConfig
    dist: DistInfo
    device: torch.device
    run_dir: Path | None
    folder: RunFolder | None
    generator: nn.Module
    encoder: nn.Module
    discriminator: nn.Module
    g_ema: nn.Module
    e_ema: nn.Module
    g_opt: torch.optim.Optimizer
    e_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    scaler: Any
    step: int
    wall_time: float
    extra_info: dict[str, Any]
    history: list[dict[str, Any]]
    resumed_from: Path | None

    def _optimizer_settings(self) -> dict[str, tuple[float, tuple[float, float]]]:
        raise NotImplementedError

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

    def _modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "encoder": self.encoder,
                "discriminator": self.discriminator, "g_ema": self.g_ema, "e_ema": self.e_ema}

    def _checkpointed(self) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        return self._modules(), {"g": self.g_opt, "e": self.e_opt, "d": self.d_opt}

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

    def _checked_checkpoint(self, step: int) -> None:
        """A checkpoint, after checking that the ranks agree and that the state is finite (the
        losses can be finite while it is not, e.g. when Adam's second moments overflowed)."""
        self.check_ranks_in_sync()
        bad = self.nonfinite_state()
        flag = all_reduce(torch.tensor([float(bool(bad))], device=self.device), self.dist)
        if bad or bool(flag.item() > 0):
            raise TrainingError(
                f"the training state holds NaN/Inf values after iteration {step} although the "
                f"losses are finite ({describe_names(bad) or 'on another process'}); its "
                f"checkpoint was not written; training stopped; {self._last_good_hint()}")
        self.save_checkpoint()

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

    # ----------------------------------------------------------------- resuming
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
        changes = config_changes(TrainConfig.from_dict(state["train_config"]), self.config, step)
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
        if self.folder is not None:
            self.folder.roll_back(step)
        log.info("resumed from %s at step %d", path, self.step)
        for h in changes:
            log.info("changed on resume at step %d: %s %r -> %r", step, h["key"], h["old"], h["new"])

    def _restart(self) -> None:
        """Resume of a run folder without any checkpoint: train it again from step 0."""
        assert self.run_dir is not None
        try:
            saved = read_run_config(self.run_dir)
            self.history = config_changes(TrainConfig.from_dict(saved["train"]), self.config, 0)
        except (InputError, ValueError, KeyError, TypeError, ConfigError):
            self.history = []
        if self.folder is not None:
            self.folder.roll_back(0)
        log.info("%s: no checkpoint was written yet; training it again from step 0 with its "
                 "recorded config", self.run_dir)
