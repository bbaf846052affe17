"""Starting a new run from trained networks (``stylemapgan train --init-from FILE``).

:func:`read_initial_weights` reads, by content whatever the file's name:

* a model file of this package (generator and encoder; their EMA copies start equal to them,
  the discriminator is fresh),
* a training checkpoint of this package, or a run folder (its newest finite checkpoint): all
  five networks (G, E, D and the EMAs of G and E),
* a published reference checkpoint (the ``torch.save`` ``.pt`` of naver-ai/StyleMapGAN, read by
  the same weights-only loader as ``stylemapgan convert``): ``generator``, ``encoder``,
  ``discriminator``, ``g_ema``, ``e_ema``.

:func:`check_architecture` compares the file's architecture with the run's (one line naming
every differing setting); :meth:`InitialWeights.apply` loads the weights into a
:class:`~stylemapgan.training.Trainer`'s networks. Only weights are taken: optimizers, step
count, random states and the EMA warm-up start afresh (fine-tuning, as StyleGAN2-ADA users
start from a published network).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ConfigError, ModelFileError
from stylemapgan.files import sha256_file
from stylemapgan.formats.checkpoint import FORMAT_NAME as MODEL_FORMAT_NAME
from stylemapgan.formats.checkpoint import (
    convert_reference,
    load_model,
    read_reference_checkpoint,
    strict_load,
)
from stylemapgan.training.checkpoints import (
    CHECKPOINT_FORMAT,
    NoCheckpointError,
    last_good_checkpoint,
    nonfinite_tensors,
    read_checkpoint,
    sub_state,
)

__all__ = ["NETWORKS", "InitialWeights", "check_architecture", "read_initial_weights"]

log = logging.getLogger(__name__)

#: The networks a training run holds, in the names of its checkpoints.
NETWORKS = ("generator", "encoder", "discriminator", "g_ema", "e_ema")


@dataclass
class InitialWeights:
    """Networks to start a run from: ``states`` maps names of :data:`NETWORKS` to state
    dicts (``discriminator`` may be missing: it then starts fresh); ``source`` says where they
    came from (file name, SHA-256, kind, and for checkpoints the step), JSON-able."""

    config: ModelConfig
    states: dict[str, dict[str, torch.Tensor]]
    source: dict[str, Any] = field(default_factory=dict)

    def apply(self, modules: Mapping[str, nn.Module]) -> list[str]:
        """Load the weights into ``modules`` (names of :data:`NETWORKS`); returns the names
        that kept their fresh initialization. A generator's mean stylemap is reset to "not
        computed" (training never maintains it; export computes it for the new weights)."""
        fresh = []
        with torch.no_grad():
            for name, module in modules.items():
                state = self.states.get(name)
                if state is None:
                    fresh.append(name)
                    continue
                strict_load(module, state, f"--init-from {self.source.get('file')} ({name})")
                buf = getattr(module, "mean_stylemap", None)
                if isinstance(buf, torch.Tensor):
                    buf.fill_(float("nan"))
        return fresh


def check_architecture(run: ModelConfig, source: ModelConfig, where: str) -> None:
    """Raise a one-line :class:`ConfigError` naming every setting in which ``run`` (the new
    run's model) and ``source`` (the file's) differ."""
    diffs = [f"{f.name} {getattr(run, f.name)} vs {getattr(source, f.name)}"
             for f in fields(ModelConfig) if getattr(run, f.name) != getattr(source, f.name)]
    if diffs:
        raise ConfigError(f"--init-from {where}: the run's architecture differs from the file's "
                          f"({'; '.join(diffs)}; run vs file); leave out --preset and model "
                          "--set values to take the file's architecture")


def _safetensors_tag(path: Path) -> str | None:
    """The ``format`` tag of a safetensors file, "" for an untagged one, None for a file that
    is not safetensors at all (then it may be a torch.save checkpoint)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format", "")
    except Exception:  # not safetensors (or damaged): the torch.save reader decides
        return None


def _from_model_file(path: Path) -> InitialWeights:
    model = load_model(path)
    g = {k: v.clone() for k, v in model.generator.state_dict().items()}
    e = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    states = {"generator": g, "encoder": e, "g_ema": g, "e_ema": e}
    return InitialWeights(model.config, states, {"kind": "model-file"})


def _from_checkpoint(path: Path) -> InitialWeights:
    tensors, state = read_checkpoint(path)
    bad = nonfinite_tensors(tensors)
    if bad:
        raise ModelFileError(f"{path}: the checkpoint holds NaN/Inf values; start from an "
                             "earlier one")
    try:
        config = ModelConfig.from_dict(state["model_config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise ModelFileError(f"{path}: training checkpoint metadata is damaged ({exc})") from None
    states = {name: sub_state(tensors, name) for name in NETWORKS}
    missing = [n for n, s in states.items() if not s]
    if missing:
        raise ModelFileError(f"{path}: the training checkpoint has no {', '.join(missing)} "
                             "weights; it is damaged")
    return InitialWeights(config, states, {"kind": "training-checkpoint",
                                           "step": int(state.get("step", 0))})


def _from_reference(path: Path) -> InitialWeights:
    ckpt = read_reference_checkpoint(path)
    where = str(path)
    ema, disc, prov = convert_reference(ckpt, where, use_ema=True,
                                        with_discriminator="discriminator" in ckpt)
    raw = (convert_reference(ckpt, where, config=ema.config, use_ema=False)[0]
           if "generator" in ckpt and "encoder" in ckpt else ema)
    states = {"generator": raw.generator.state_dict(), "encoder": raw.encoder.state_dict(),
              "g_ema": ema.generator.state_dict(), "e_ema": ema.encoder.state_dict()}
    if disc is not None:
        states["discriminator"] = disc.state_dict()
    source: dict[str, Any] = {"kind": "reference-checkpoint",
                              **{k: v for k, v in prov.items() if k.startswith("train_")}}
    return InitialWeights(ema.config, states, source)


def read_initial_weights(path: str | os.PathLike[str]) -> InitialWeights:
    """The networks of ``path`` (a model file, a training checkpoint or run folder, or a
    reference ``.pt``). Every failure is a one-line
    :class:`~stylemapgan.errors.ModelFileError` naming the file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
            raise ModelFileError(f"--init-from {path}: a folder that is not a training run; "
                                 "give a model file, a checkpoint or a run folder")
        found = last_good_checkpoint(path)
        if found is None:
            raise NoCheckpointError(f"--init-from {path}: the run has no finite checkpoint yet; "
                                    "give a model file or another run")
        ckpt = found[1]
        weights = _from_checkpoint(ckpt)
        file = ckpt
    elif not path.is_file():
        raise ModelFileError(f"--init-from {path}: no such file")
    else:
        tag = _safetensors_tag(path)
        if tag == MODEL_FORMAT_NAME:
            weights = _from_model_file(path)
        elif tag == CHECKPOINT_FORMAT:
            weights = _from_checkpoint(path)
        elif tag is not None:
            raise ModelFileError(f"--init-from {path}: a safetensors file that is neither a "
                                 "StyleMapGAN model file nor a training checkpoint")
        else:
            weights = _from_reference(path)
        file = path
    weights.source = {"file": str(file), "name": file.name, "sha256": sha256_file(file),
                      **weights.source}
    log.info("initial weights from %s (%s)", file, weights.source["kind"])
    return weights
