"""Training checkpoints: ``RUN/checkpoints/ckpt-STEP.safetensors``, written and read back.

A checkpoint is a tagged safetensors file (format :data:`CHECKPOINT_FORMAT`, version
:data:`CHECKPOINT_VERSION`, through :func:`stylemapgan.files.write_tagged` /
:func:`~stylemapgan.files.read_tagged`) holding everything an exact resume needs:

* tensors ``generator.*``, ``encoder.*``, ``discriminator.*``, ``g_ema.*``, ``e_ema.*`` (the
  networks' state dicts), ``optim.{g,e,d}.PARAM.KEY`` (the Adam moments) and ``rng.torch_cpu``,
  ``rng.cuda.I`` (the torch random states);
* the metadata key ``state``: JSON with the run's step, images seen, wall time, model and
  training configs, world size and info, plus ``optimizers`` (param groups and non-tensor
  optimizer state), ``rng`` (the Python and NumPy random states) and, with fp16 loss scaling,
  ``scaler``; ``verified_finite`` is true when every floating-point tensor was checked to be
  finite before the file was written (:func:`write_checkpoint` refuses to write one that is
  not, so a checkpoint is never a diverged state).

* :func:`write_checkpoint` / :func:`restore_checkpoint` — save / load networks, optimizers,
  random states (and the loss scaler) to / from such a file.
* :func:`list_checkpoints`, :func:`read_checkpoint`, :func:`latest_checkpoint` — find and read
  the checkpoints of a run; every unreadable file is a :class:`~stylemapgan.errors.ModelFileError`
  (:class:`NoCheckpointError` when there is none at all).
* :func:`nonfinite_tensors`, :func:`last_good_checkpoint` — which tensors hold NaN / Inf; the
  newest checkpoint of a run that is readable and entirely finite.
* :func:`remove_temporary_files` — the leftovers of checkpoint writes that were killed.
* :func:`model_from_checkpoint` — the (EMA) generator and encoder as a StyleMapGAN model
  (``stylemapgan export``).
* :func:`flatten_optimizer` / :func:`unflatten_optimizer`, :func:`sub_state` — the mapping
  between optimizer / module state dicts and the flat tensor names of the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ModelFileError
from stylemapgan.files import read_tagged, write_tagged
from stylemapgan.formats.checkpoint import FORMAT_NAME as MODEL_FORMAT_NAME
from stylemapgan.formats.checkpoint import build_empty, strict_load
from stylemapgan.nn.networks import StyleMapGAN
from stylemapgan.training.config import TrainingError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "NoCheckpointError",
    "NonFiniteStateError",
    "checkpoint_path",
    "describe_names",
    "flatten_optimizer",
    "last_good_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "model_from_checkpoint",
    "nonfinite_tensors",
    "read_checkpoint",
    "remove_temporary_files",
    "restore_checkpoint",
    "sub_state",
    "unflatten_optimizer",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "stylemapgan-train-checkpoint"
CHECKPOINT_VERSION = 1
_CKPT_RE = re.compile(r"^ckpt-(\d{8,})\.safetensors$")
#: The temporary files :func:`stylemapgan.files.atomic_write` makes beside a checkpoint
#: (``.ckpt-STEP.safetensors.RANDOM.tmp``); a kill during the write leaves one behind.
_CKPT_TMP_RE = re.compile(r"^\.ckpt-\d{8,}\.safetensors\.[^/]*\.tmp$")


class NoCheckpointError(ModelFileError):
    """A run folder (or any folder) holds no checkpoint file at all."""


class NonFiniteStateError(TrainingError):
    """The training state holds NaN or Inf values (``names``: the tensors), so it is not
    written as a checkpoint."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """``run_dir/checkpoints/ckpt-STEP.safetensors`` (STEP zero-padded to 8 digits)."""
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.safetensors"


# --------------------------------------------------------------------------- state dicts
def flatten_optimizer(prefix: str, opt: torch.optim.Optimizer,
                      tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Add ``opt``'s tensor state to ``tensors`` as ``PREFIX.PARAM.KEY``; return the rest of
    its state dict (param groups, non-tensor state) as JSON-able data."""
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


def unflatten_optimizer(prefix: str, meta: dict[str, Any],
                        tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The optimizer state dict that :func:`flatten_optimizer` split into ``meta`` and
    ``tensors``."""
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


def sub_state(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``PREFIX.KEY``, as ``{KEY: tensor}`` (one module's state dict)."""
    pre = prefix + "."
    return {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}


# --------------------------------------------------------------------------- finiteness
def _unset_marker(name: str) -> bool:
    # A generator's mean_stylemap is all NaN until it is computed (never during training).
    return name == "mean_stylemap" or name.endswith(".mean_stylemap")


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or Inf (in ``tensors``' order).

    A generator's ``mean_stylemap`` buffer that is entirely NaN is the "not computed yet"
    marker, not a diverged value, and passes. One device synchronization per device.
    """
    names: dict[torch.device, list[str]] = {}
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        ok = torch.isfinite(t).all()
        if _unset_marker(name):
            ok = ok | torch.isnan(t).all()
        names.setdefault(t.device, []).append(name)
        flags.setdefault(t.device, []).append(ok)
    bad = set()
    for dev, fl in flags.items():
        for name, good in zip(names[dev], torch.stack(fl).tolist(), strict=True):
            if not good:
                bad.add(name)
    return [n for n in tensors if n in bad]


def _nonfinite_numbers(data: Any, prefix: str) -> list[str]:
    """Paths of the non-finite floats in JSON-like data (a GradScaler's state dict)."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [prefix]
    if isinstance(data, Mapping):
        return [p for k, v in data.items() for p in _nonfinite_numbers(v, f"{prefix}.{k}")]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in _nonfinite_numbers(v, f"{prefix}.{i}")]
    if isinstance(data, torch.Tensor):
        return nonfinite_tensors({prefix: data})
    return []


def describe_names(names: list[str], limit: int = 4) -> str:
    """``a, b, c and 7 more``."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --------------------------------------------------------------------------- writing
def write_checkpoint(path: str | os.PathLike[str], *, modules: Mapping[str, nn.Module],
                     optimizers: Mapping[str, torch.optim.Optimizer], state: Mapping[str, Any],
                     scaler_state: dict[str, Any] | None = None) -> Path:
    """Write a training checkpoint atomically (replacing ``path`` if it exists).

    ``modules`` (name -> network) become tensors ``NAME.*``; ``optimizers`` (name -> optimizer)
    ``optim.NAME.*`` plus ``state["optimizers"][NAME]``. The current torch (CPU and CUDA),
    Python and NumPy random states are saved too, and ``scaler_state`` (a GradScaler's state
    dict) when given. ``state`` (the run's facts, JSON-able) is copied, not changed.

    Every floating-point tensor (weights, EMAs, optimizer moments) and the scaler state are
    checked first: if any holds NaN or Inf, nothing is written and
    :class:`NonFiniteStateError` names them (a diverged state is never a checkpoint).
    """
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
    state = dict(state)
    state["optimizers"] = {name: flatten_optimizer(f"optim.{name}", opt, tensors)
                           for name, opt in optimizers.items()}
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    state["rng"] = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if scaler_state is not None:
        state["scaler"] = scaler_state
    bad = nonfinite_tensors(tensors) + _nonfinite_numbers(scaler_state or {}, "scaler")
    if bad:
        raise NonFiniteStateError(f"not writing checkpoint {path}: the training state holds "
                                  f"NaN/Inf values ({describe_names(bad)})", bad)
    state["verified_finite"] = True
    return write_tagged(path, tensors, fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION,
                        metadata={"state": json.dumps(state)}, overwrite=True)


# --------------------------------------------------------------------------- reading
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
    """A training checkpoint's tensors (on the CPU) and its ``state`` metadata (decoded JSON).

    Raises :class:`~stylemapgan.errors.ModelFileError` (one line naming the file) for a file
    that is missing, unreadable, not a training checkpoint, too new or has damaged metadata.
    """
    found = read_tagged(path, fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION,
                        what="training checkpoint", error=ModelFileError,
                        foreign={MODEL_FORMAT_NAME: "a model file"},
                        hint="give a checkpoint from a training run's checkpoints folder")
    try:
        state = json.loads(found.metadata["state"])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{found.path}: training checkpoint metadata is damaged") from None
    return found.tensors, state


def _is_run_folder(run_dir: Path) -> bool:
    return (run_dir / "config.json").is_file()


def latest_checkpoint(run_dir: str | os.PathLike[str], *, require_finite: bool = False,
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The newest readable checkpoint of a run (a damaged newest one is skipped with a warning;
    with ``require_finite`` also one holding NaN / Inf, as written by older versions).

    Raises :class:`NoCheckpointError` when the run has no checkpoint file at all (its message
    says whether the folder is a run that stopped before its first checkpoint) and
    :class:`~stylemapgan.errors.ModelFileError` when none is usable.
    """
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        if _is_run_folder(run_dir):
            raise NoCheckpointError(
                f"{run_dir}: no checkpoint was written yet (the run stopped before its first "
                "checkpoint); `stylemapgan train --resume` starts it again from step 0 with its "
                "recorded config")
        raise NoCheckpointError(f"{run_dir}: no checkpoints found (looked in "
                                f"{run_dir / 'checkpoints'}); is this a training run folder?")
    errors = []
    for _, path in reversed(ckpts):
        try:
            tensors, state = read_checkpoint(path)
        except ModelFileError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
            errors.append(str(exc))
            continue
        bad = nonfinite_tensors(tensors) if require_finite else []
        if bad:
            msg = f"{path}: holds NaN/Inf values ({describe_names(bad)})"
            log.warning("skipping diverged checkpoint: %s", msg)
            errors.append(msg)
            continue
        return tensors, state, path
    raise ModelFileError(f"{run_dir}: no usable checkpoint ({errors[0]})")


def last_good_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[int, Path] | None:
    """(step, path) of the newest checkpoint of a run that is readable and entirely finite,
    or None. Files marked ``verified_finite`` when written are trusted from their metadata;
    others (older versions) are read and checked."""
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            meta = read_tagged(path, fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION,
                               what="training checkpoint", error=ModelFileError,
                               tensors=False).metadata
            if json.loads(meta.get("state", "{}")).get("verified_finite") is True:
                return step, path
            tensors, _ = read_checkpoint(path)
        except (ModelFileError, json.JSONDecodeError, AttributeError):
            continue
        if not nonfinite_tensors(tensors):
            return step, path
    return None


def remove_temporary_files(run_dir: str | os.PathLike[str]) -> int:
    """Delete the temporary files that killed checkpoint writes left in
    ``run_dir/checkpoints`` (only names of the form ``.ckpt-STEP.safetensors.*.tmp``);
    returns how many. Call it only while no other process writes the run (the folder lock)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return 0
    removed = 0
    for p in d.iterdir():
        if _CKPT_TMP_RE.match(p.name) and p.is_file():
            try:
                p.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


# --------------------------------------------------------------------------- loading
def restore_checkpoint(tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any], *,
                       modules: Mapping[str, nn.Module],
                       optimizers: Mapping[str, torch.optim.Optimizer],
                       scaler: Any = None, where: str = "checkpoint") -> None:
    """Load a checkpoint read by :func:`read_checkpoint` into ``modules`` and ``optimizers``
    (the names :func:`write_checkpoint` was given) and restore the global torch (CPU and CUDA),
    Python and NumPy random states, and ``scaler``'s state when both exist. ``where`` names the
    file in errors (a module whose weights do not fit)."""
    for prefix, module in modules.items():
        strict_load(module, sub_state(tensors, prefix), f"{where} ({prefix})")
    for name, opt in optimizers.items():
        opt.load_state_dict(unflatten_optimizer(f"optim.{name}", state["optimizers"][name],
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
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])


def model_from_checkpoint(tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any],
                          ema: bool = True) -> StyleMapGAN:
    """The (EMA) generator and encoder of a training checkpoint as a StyleMapGAN model."""
    config = ModelConfig.from_dict(state["model_config"])
    model = build_empty(lambda: StyleMapGAN(config))
    g, e = ("g_ema", "e_ema") if ema else ("generator", "encoder")
    strict_load(model.generator, sub_state(tensors, g), f"checkpoint {g}")
    strict_load(model.encoder, sub_state(tensors, e), f"checkpoint {e}")
    return model
