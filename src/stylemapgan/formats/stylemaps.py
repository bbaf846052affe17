"""Saved stylemaps: one projected image as a small ``.safetensors`` file.

The file holds the stylemap ``w`` ([C, S, S], float32) under the key ``w`` and, in its
metadata, what it came from: the model's configuration and checksum, the source image's name
and checksum, where the model's square was cut from the photo (the placement, for pasting an
edit back) and how it was projected (encoder alone, or refined). Edit commands accept these
files wherever they accept images and skip the encoder for them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ConfigError, InputError
from stylemapgan.files import read_tagged, write_tagged
from stylemapgan.imaging.placement import Placement

log = logging.getLogger(__name__)

FORMAT_NAME = "stylemapgan-stylemap"
MODEL_FORMAT_NAME = "stylemapgan-model"  # checkpoint.FORMAT_NAME: named when given by mistake
FORMAT_VERSION = 1
SUFFIX = ".stylemap.safetensors"


@dataclass
class SavedStylemap:
    """A stylemap read from a file. ``w``: [1, C, S, S]; the rest may be None if unknown."""

    w: torch.Tensor
    config: ModelConfig | None = None
    model_sha256: str | None = None
    source: str | None = None
    source_sha256: str | None = None
    placement: Placement | None = None
    projection: dict[str, Any] = field(default_factory=dict)


def is_stylemap_file(path: str | os.PathLike[str]) -> bool:
    """True for a safetensors file (by suffix); whether it really is a stylemap is checked on
    loading."""
    return str(path).lower().endswith(".safetensors")


def save_stylemap(path: str | os.PathLike[str], w: torch.Tensor, *,
                  config: ModelConfig | None = None, model_sha256: str | None = None,
                  source: str | None = None, source_sha256: str | None = None,
                  placement: Placement | None = None, projection: dict[str, Any] | None = None,
                  overwrite: bool = False) -> Path:
    """Write one stylemap ([C, S, S] or [1, C, S, S]) and its provenance, atomically."""
    if w.ndim == 4:
        if w.shape[0] != 1:
            raise InputError(f"save_stylemap writes one stylemap per file, got a batch of {w.shape[0]}")
        w = w[0]
    if w.ndim != 3:
        raise InputError(f"a stylemap must be [C, S, S], got {tuple(w.shape)}")
    meta: dict[str, str] = {}
    if config is not None:
        meta["config"] = config.to_json()
    for key, value in (("model_sha256", model_sha256), ("source", source),
                       ("source_sha256", source_sha256)):
        if value is not None:
            meta[key] = str(value)
    if placement is not None:
        meta["placement"] = json.dumps(placement.to_dict())
    if projection:
        meta["projection"] = json.dumps(projection, sort_keys=True)
    return write_tagged(path, {"w": w.detach().to(torch.float32)}, fmt=FORMAT_NAME,
                        version=FORMAT_VERSION, metadata=meta, overwrite=overwrite)


def load_stylemap(path: str | os.PathLike[str], config: ModelConfig | None = None,
                  model_sha256: str | None = None) -> SavedStylemap:
    """Read a stylemap file. With ``config`` the shape is checked against the model (an
    :class:`InputError` names the file); a different ``model_sha256`` only logs a warning
    (stylemaps of a fine-tuned model may still be wanted)."""
    found = read_tagged(path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="stylemap file",
                        tensors=("w",), foreign={MODEL_FORMAT_NAME: "a model file"},
                        hint="give an image or a stylemap written by `stylemapgan project`")
    path, meta, w = found.path, found.metadata, found.tensors["w"]
    if not w.is_floating_point():
        raise InputError(f"{path}: the stylemap must hold floating-point values, got "
                         f"{str(w.dtype).removeprefix('torch.')}; it was not written by "
                         "`stylemapgan project`: project the image again")
    if w.ndim != 3:
        raise InputError(f"{path}: the stylemap must be a [C, S, S] tensor, got "
                         f"{tuple(w.shape)}; project the image again")
    if not torch.isfinite(w).all():
        raise InputError(f"{path}: the stylemap holds NaN or infinite values; project the image "
                         "again")
    saved_config = None
    if "config" in meta:
        try:
            saved_config = ModelConfig.from_json(meta["config"])
        except ConfigError:
            log.warning("%s: unreadable model config in the metadata; ignored", path)
    if config is not None and tuple(w.shape) != config.stylemap_shape:
        raise InputError(f"{path}: stylemap of shape {tuple(w.shape)} does not fit this model "
                         f"(needs {config.stylemap_shape}); project the image with this model")
    if model_sha256 and meta.get("model_sha256") and meta["model_sha256"] != model_sha256:
        log.warning("%s was projected with another model file (sha256 %s...); results may be off",
                    path, meta["model_sha256"][:12])
    placement = None
    if "placement" in meta:
        try:
            placement = Placement.from_dict(json.loads(meta["placement"]))
        except (InputError, json.JSONDecodeError):
            log.warning("%s: unreadable placement in the metadata; ignored", path)
    try:
        projection = json.loads(meta.get("projection", "{}"))
    except json.JSONDecodeError:
        projection = {}
    return SavedStylemap(w[None].float(), saved_config, meta.get("model_sha256"), meta.get("source"),
                         meta.get("source_sha256"), placement, projection)
