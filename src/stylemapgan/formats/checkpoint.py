"""Model files and reference-checkpoint import: the networks' weights in and out.

(Training checkpoints with optimizer state are :mod:`stylemapgan.training.checkpoints`; the
third-party perceptual/FID weights are :mod:`stylemapgan.formats.weights`. All of them are
tagged safetensors files written and read through :mod:`stylemapgan.files`.)

A model file is one ``.safetensors`` file holding the (EMA) generator and encoder, with the
format version, the full model config and the provenance in its metadata, so loading rebuilds
the networks from the file alone. Reference checkpoints (``torch.save`` dicts of the original
implementation) are read with ``weights_only=True``: nothing but tensors, plain containers and
the ``argparse.Namespace`` of training arguments is ever unpickled.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stylemapgan.config import ModelConfig
from stylemapgan.errors import ConfigError, ModelFileError
from stylemapgan.files import TaggedFile, atomic_write, read_tagged, sha256_file, write_tagged
from stylemapgan.nn.networks import Discriminator, Encoder, Generator, StyleMapGAN
from stylemapgan.nn.ops import blur_kernel

log = logging.getLogger(__name__)

FORMAT_NAME = "stylemapgan-model"
FORMAT_VERSION = 1


def _reset_constants(module: nn.Module) -> None:
    """Refill non-persistent constant buffers (FIR kernels) after ``to_empty``."""
    for m in module.modules():
        k = getattr(m, "blur_kernel", None)
        if isinstance(k, torch.Tensor):
            k.copy_(blur_kernel(dtype=k.dtype, device=k.device))


def build_empty(factory: Callable[[], nn.Module], device: torch.device | str = "cpu") -> nn.Module:
    """Construct a network without spending time on random initialization (weights uninitialized,
    constants filled); use only when every parameter is loaded afterwards."""
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device=device)
    with torch.no_grad():
        _reset_constants(module)
    return module


def _describe_mismatch(expected: Mapping[str, torch.Size], got: Mapping[str, torch.Size]) -> str:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [f"{k} {tuple(got[k])} != {tuple(expected[k])}" for k in expected
             if k in got and tuple(got[k]) != tuple(expected[k])]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module`` only if the names and shapes match exactly; otherwise a
    :class:`ModelFileError` that says what is missing, unexpected or of another shape."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    got = {k: v.shape for k, v in state.items()}
    problem = _describe_mismatch(expected, got)
    if problem:
        raise ModelFileError(f"{what}: weights do not match the config ({problem})")
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- model files
DEFAULT_MODEL_NAME = "avatars64.safetensors"


def default_model_path() -> Path:
    """The small model shipped inside the package (trained on Open Peeps avatars, 64 px),
    used by every command when ``--model`` is not given. Its card is MODEL_CARD.md beside it."""
    from importlib import resources

    path = Path(str(resources.files("stylemapgan") / "assets" / "models" / DEFAULT_MODEL_NAME))
    if not path.is_file():
        raise ModelFileError(f"the embedded default model is missing ({path}); reinstall "
                             "stylemapgan or pass --model")
    return path


def save_model(model: StyleMapGAN, path: str | os.PathLike[str], *,
               provenance: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (generator + encoder) to a ``.safetensors`` model file, atomically.

    The mean stylemap is computed first if the generator does not have one yet.
    """
    if not model.generator.has_mean_stylemap():
        model.generator.update_mean_stylemap()
    prov = dict(provenance or {})
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    from stylemapgan import __version__

    prov.setdefault("stylemapgan_version", __version__)
    metadata = {"config": model.config.to_json(), "provenance": json.dumps(prov, sort_keys=True)}
    path = write_tagged(path, model.state_dict(), fmt=FORMAT_NAME, version=FORMAT_VERSION,
                        metadata=metadata, overwrite=overwrite)
    log.info("saved model to %s", path)
    return path


def _read_model(path: str | os.PathLike[str], tensors: bool) -> tuple[TaggedFile, ModelConfig, dict[str, Any]]:
    """The checked model file (with or without its weights), its config and provenance."""
    found = read_tagged(path, fmt=FORMAT_NAME, version=FORMAT_VERSION,
                        what="StyleMapGAN model file", tensors=tensors, error=ModelFileError,
                        missing=f"model file {path} not found",
                        hint="import reference checkpoints with `stylemapgan convert`")
    try:
        config = ModelConfig.from_json(found.metadata.get("config", ""))
    except ConfigError as exc:
        raise ModelFileError(f"{found.path}: {exc}") from None
    try:
        provenance = json.loads(found.metadata.get("provenance", "{}"))
    except json.JSONDecodeError:
        provenance = {}
    return found, config, provenance if isinstance(provenance, dict) else {}


def read_model_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Format version, config and provenance of a model file, checked but without the weights."""
    found, config, provenance = _read_model(path, tensors=False)
    return {"format_version": found.version, "config": config, "provenance": provenance,
            "keys": found.keys}


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> StyleMapGAN:
    """Rebuild the networks from a model file alone and load the weights strictly.

    Returns the model in eval mode with gradients disabled on ``device``.
    """
    found, config, provenance = _read_model(path, tensors=True)
    state = found.tensors
    model = build_empty(lambda: StyleMapGAN(config))
    ours = model.state_dict()
    for name, t in state.items():  # a bool or int8 "weight" would be cast silently
        if name in ours and ours[name].is_floating_point() and not t.is_floating_point():
            raise ModelFileError(f"{found.path}: weight {name} is "
                                 f"{str(t.dtype).removeprefix('torch.')}, not floating point; the "
                                 "file is damaged: export or convert the model again")
    strict_load(model, state, str(found.path))
    model.provenance = provenance
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all() and name != "generator.mean_stylemap":
            raise ModelFileError(f"{found.path}: weight {name} contains NaN or Inf values")
    return model


# --------------------------------------------------------------------------- reference import
_NORM_MODES = {"LayerNorm": "layer", "InstanceNorm2d": "instance", "BatchNorm2d": "batch"}


def config_from_reference_args(args: Any) -> ModelConfig:
    """ModelConfig from the reference's ``train_args`` (an argparse.Namespace or a dict)."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    needed = ["size", "latent_channel_size", "latent_spatial_size", "mapping_layer_num",
              "lr_mul", "channel_multiplier", "normalize_mode", "small_generator"]
    missing = [k for k in needed if k not in a]
    if missing:
        raise ConfigError(f"train_args lacks {', '.join(missing)}")
    norm = a["normalize_mode"]
    if not isinstance(norm, str) or norm not in _NORM_MODES:
        raise ConfigError(f"unsupported normalize_mode {norm!r} (supported: {', '.join(_NORM_MODES)})")

    def number(key: str, kind: type) -> Any:
        value = a[key]
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise TypeError
            out = kind(value)
            if kind is int and float(value) != out:
                raise ValueError
            return out
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"train_args.{key} must be a number, got {str(value)[:40]!r}") from None

    return ModelConfig(
        size=number("size", int),
        stylemap_size=number("latent_spatial_size", int),
        stylemap_channels=number("latent_channel_size", int),
        mapping_layers=number("mapping_layer_num", int),
        mapping_lr_mul=number("lr_mul", float),
        channel_multiplier=number("channel_multiplier", int),
        light=bool(a["small_generator"]),
        normalization=_NORM_MODES[norm],
    )


def _reference_conv(prefix: str, kind: str) -> dict[str, str]:
    """Our EqualConv2d keys -> the reference ConvLayer (nn.Sequential) keys.

    ``kind``: "plain" (conv, act), "up" (transposed conv, blur, act), "down" (blur, conv, act),
    "up_skip" (transposed conv, blur), "down_skip" (blur, conv).
    """
    return {
        "plain": {"weight": f"{prefix}.0.weight", "bias": f"{prefix}.1.bias"},
        "up": {"weight": f"{prefix}.0.weight", "bias": f"{prefix}.2.bias"},
        "down": {"weight": f"{prefix}.1.weight", "bias": f"{prefix}.2.bias"},
        "up_skip": {"weight": f"{prefix}.0.weight"},
        "down_skip": {"weight": f"{prefix}.1.weight"},
    }[kind]


def _reference_kernels(prefix: str, kind: str) -> list[str]:
    return {"up": [f"{prefix}.1.kernel"], "down": [f"{prefix}.0.kernel"],
            "up_skip": [f"{prefix}.1.kernel"], "down_skip": [f"{prefix}.0.kernel"]}.get(kind, [])


def _styled_keys(ours: str, ref: str, up: bool, batch_norm: bool) -> tuple[dict[str, str], list[str]]:
    keys = {
        f"{ours}.weight": f"{ref}.conv.weight",  # reference shape (1, out, in, k, k)
        f"{ours}.bias": f"{ref}.activate.bias",
    }
    for part in ("gamma", "beta"):
        for p in ("weight", "bias"):
            keys[f"{ours}.{part}.{p}"] = f"{ref}.conv.{part}.{p}"
    if batch_norm:
        for p in ("running_mean", "running_var", "num_batches_tracked"):
            keys[f"{ours}.norm.{p}"] = f"{ref}.conv.norm.{p}"
    return keys, ([f"{ref}.conv.blur.kernel"] if up else [])


def reference_key_map(config: ModelConfig) -> dict[str, tuple[dict[str, str], list[str]]]:
    """For each network ("generator", "encoder", "discriminator"): our state-dict key -> the
    reference key, and the list of FIR-kernel buffer keys the reference also stores."""
    g: dict[str, str] = {}
    gk: list[str] = []
    for i in range(config.mapping_layers):
        for p in ("weight", "bias"):
            g[f"mapping.layers.{i}.{p}"] = f"mapping_z.{i + 1}.{p}"
    res = config.style_resolutions()
    for i in range(config.num_styles):
        kind = "up" if i > 0 and res[i] > res[i - 1] else "plain"
        for p, r in _reference_conv(f"decoder.convs_latent.{i}", kind).items():
            g[f"resizer.layers.{i}.{p}"] = r
        gk += _reference_kernels(f"decoder.convs_latent.{i}", kind)
    g["synthesis.const"] = "decoder.input.input"
    bn = config.normalization == "batch"
    styled = [("synthesis.conv0", "decoder.conv1", False), ("synthesis.to_rgb", "decoder.to_rgb", False)]
    for i in range(config.num_doublings):
        styled += [(f"synthesis.blocks.{i}.conv1", f"decoder.convs.{i}.conv1", True),
                   (f"synthesis.blocks.{i}.conv2", f"decoder.convs.{i}.conv2", False)]
        g[f"synthesis.blocks.{i}.skip.weight"] = f"decoder.convs.{i}.skip.0.weight"
        gk.append(f"decoder.convs.{i}.skip.1.kernel")
    for ours, ref, up in styled:
        keys, kernels = _styled_keys(ours, ref, up, bn)
        g.update(keys)
        gk += kernels

    def trunk(from_rgb: str, block: Callable[[int], str], n_blocks: int) -> tuple[dict[str, str], list[str]]:
        m = {"from_rgb.weight": f"{from_rgb}.0.weight", "from_rgb.bias": f"{from_rgb}.1.bias"}
        kernels: list[str] = []
        for i in range(n_blocks):
            b = block(i)
            for ours, ref, kind in (("conv1", "conv1", "plain"), ("conv2", "conv2", "down"),
                                    ("skip", "skip", "down_skip")):
                for p, r in _reference_conv(f"{b}.{ref}", kind).items():
                    m[f"blocks.{i}.{ours}.{p}"] = r
                kernels += _reference_kernels(f"{b}.{ref}", kind)
        return m, kernels

    import math

    n_enc = int(math.log2(config.size // config.stylemap_size))
    e, ek = trunk("from_rgb", lambda i: f"convs.{i}", n_enc)
    e.update({"out.weight": "final_conv.0.weight", "out.bias": "final_conv.1.bias"})
    n_dis = int(math.log2(config.size)) - 2
    d, dk = trunk("convs.0", lambda i: f"convs.{i + 1}", n_dis)
    d.update({
        "final_conv.weight": "final_conv.0.weight", "final_conv.bias": "final_conv.1.bias",
        "final_linear.weight": "final_linear.0.weight", "final_linear.bias": "final_linear.0.bias",
        "out.weight": "final_linear.1.weight", "out.bias": "final_linear.1.bias",
    })
    return {"generator": (g, gk), "encoder": (e, ek), "discriminator": (d, dk)}


def _import_network(net: str, module: nn.Module, ref_state: Mapping[str, Any],
                    key_map: dict[str, str], kernels: list[str], where: str) -> None:
    ours = {k: v for k, v in module.state_dict().items() if k != "mean_stylemap"}
    if set(ours) != set(key_map):  # an internal consistency check, not a user error
        raise AssertionError(f"key map of {net} is out of date: {sorted(set(ours) ^ set(key_map))[:5]}")
    expected_shapes: dict[str, torch.Size] = {}
    for k, r in key_map.items():
        shape = ours[k].shape
        if r.endswith(".conv.weight"):  # styled convs: the reference keeps a batch axis
            shape = torch.Size([1, *shape])
        expected_shapes[r] = shape
    for kname in kernels:
        expected_shapes[kname] = torch.Size([4, 4])
    got = {k: tuple(v.shape) for k, v in ref_state.items() if isinstance(v, torch.Tensor)}
    not_tensors = [k for k, v in ref_state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelFileError(f"{where}: {net} entries are not tensors: {', '.join(not_tensors[:3])}")
    problem = _describe_mismatch(expected_shapes, got)
    if problem:
        raise ModelFileError(f"{where}: {net} weights do not match the reference architecture "
                             f"described by its train_args ({problem})")
    fir = blur_kernel()
    for kname in kernels:
        k = ref_state[kname].float()
        if not (torch.allclose(k, fir, atol=1e-6) or torch.allclose(k, fir * 4, atol=1e-6)):
            raise ModelFileError(f"{where}: {kname} is not the [1,3,3,1] blur kernel this "
                                 "implementation supports")
    new_state = {}
    for k, r in key_map.items():
        t = ref_state[r]
        new_state[k] = t.reshape(ours[k].shape).to(ours[k].dtype) if t.is_floating_point() else t
    if "mean_stylemap" in module.state_dict():
        new_state["mean_stylemap"] = module.state_dict()["mean_stylemap"]
    module.load_state_dict(new_state, strict=True)


_REFERENCE_FIX = ("reference checkpoints are the torch.save .pt files of naver-ai/StyleMapGAN; "
                  "download it again if it was cut short")


def _safetensors_kind(path: Path) -> str | None:
    """What a file that is really a safetensors file holds (by its bytes, not its name), or
    None when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return None
    if len(head) < 9 or head[8:9] != b"{" or not 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tag = (f.metadata() or {}).get("format")
    except Exception:  # a damaged safetensors file: still not a torch.save checkpoint
        tag = None
    return "model" if tag == FORMAT_NAME else "other"


def _is_html(path: Path) -> bool:
    """Whether a file is a web page: what a download tool saves when a file host (Google
    Drive's virus-scan warning, quota or sign-in page) answers with HTML instead of the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError:
        return False
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<") and any(tag in head for tag in (b"<!doctype html", b"<html",
                                                                  b"<head", b"<body"))


def _unpickling_detail(exc: BaseException) -> str:
    """The informative part of a weights-only unpickling error (torch puts it last), up to
    its first sentence."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line.split(". ", 1)[0]


def _load_error_detail(exc: BaseException) -> str:
    """A short reason for a failed ``torch.load`` of a damaged or foreign file."""
    if isinstance(exc, EOFError):
        return "the file ends too early"
    text = str(exc).strip()
    line = text.splitlines()[0].split(". ", 1)[0] if text else ""
    if isinstance(exc, (KeyError, IndexError)) or len(line) < 8:
        return f"{type(exc).__name__} {line}".strip()
    return line


def read_reference_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a reference ``torch.save`` checkpoint on the CPU, unpickling only safe types.

    The file is read by its content, whatever its name: torch would hand a name ending in
    ``.safetensors`` to the safetensors reader instead. Every failure is one
    :class:`~stylemapgan.errors.ModelFileError` naming the file and what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a reference checkpoint; pass the .pt "
                             "file itself")
    if not path.is_file():
        raise ModelFileError(f"reference checkpoint {path} not found")
    kind = _safetensors_kind(path)
    if kind == "model":
        raise ModelFileError(f"{path} is already a StyleMapGAN model file: it needs no "
                             "conversion, pass it to --model as it is")
    if kind == "other":
        raise ModelFileError(f"{path} is a safetensors file, not a torch.save checkpoint; "
                             f"convert reads the original .pt checkpoint ({_REFERENCE_FIX})")
    if _is_html(path):  # torch.load would say "invalid load key, '<'"
        raise ModelFileError(f"{path} is a web page (HTML), not a checkpoint: the download saved "
                             "the file host's page (Google Drive's virus-scan warning or quota "
                             "page) instead of the file, the \"invalid load key, '<'\" of "
                             "naver-ai/StyleMapGAN issues #20 and #24; download it again from "
                             "its Google Drive page in a browser, then convert that file")
    try:
        with open(path, "rb") as f, torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickling_detail(exc)
        if "Unsupported global" in detail or "GLOBAL" in detail:
            raise ModelFileError(
                f"{path} holds objects other than tensors and training arguments, refused for "
                f"safety ({detail[:200]})"
            ) from None
        raise ModelFileError(f"{path} is not a readable PyTorch checkpoint ({detail[:200]}); it "
                             f"may be truncated or corrupt, or not a checkpoint at all; "
                             f"{_REFERENCE_FIX}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError,
            TypeError, IndexError, KeyError) as exc:
        raise ModelFileError(f"{path} is not a readable PyTorch checkpoint "
                             f"({_load_error_detail(exc)[:200]}); it may be truncated or "
                             f"corrupt; {_REFERENCE_FIX}") from None
    if not isinstance(ckpt, dict):
        raise ModelFileError(f"{path} is not a StyleMapGAN reference checkpoint "
                             f"(top level is {type(ckpt).__name__}, not a dict)")
    return ckpt


def convert_reference(ckpt: Mapping[str, Any], where: str = "checkpoint", *,
                      config: ModelConfig | None = None, use_ema: bool = True,
                      with_discriminator: bool = False) -> tuple[StyleMapGAN, Discriminator | None, dict[str, Any]]:
    """Networks from a loaded reference checkpoint.

    Returns the model (generator + encoder), the discriminator if asked for, and a provenance
    dict. ``config`` overrides what the checkpoint's ``train_args`` say.
    """
    g_key, e_key = ("g_ema", "e_ema") if use_ema else ("generator", "encoder")
    needed = [g_key, e_key] + (["discriminator"] if with_discriminator else [])
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise ModelFileError(
            f"{where} is not a StyleMapGAN reference checkpoint: no {', '.join(missing)} "
            f"(found keys: {', '.join(map(str, list(ckpt)[:8]))})"
        )
    args = ckpt.get("train_args")
    if config is None:
        if args is None:
            raise ModelFileError(f"{where} has no train_args; pass --preset to say which "
                                 "architecture it holds")
        try:
            config = config_from_reference_args(args)
        except ConfigError as exc:
            raise ModelFileError(f"{where}: {exc}") from None
    maps = reference_key_map(config)
    model = build_empty(lambda: StyleMapGAN(config))
    _import_network("generator", model.generator, ckpt[g_key], *maps["generator"], where)
    _import_network("encoder", model.encoder, ckpt[e_key], *maps["encoder"], where)
    disc = None
    if with_discriminator:
        disc = build_empty(lambda: Discriminator(config))
        _import_network("discriminator", disc, ckpt["discriminator"], *maps["discriminator"], where)
    for name, t in model.state_dict().items():
        if t.is_floating_point() and name != "generator.mean_stylemap" and not torch.isfinite(t).all():
            raise ModelFileError(f"{where}: weight {name} contains NaN or Inf values")
    model.generator.update_mean_stylemap()
    prov: dict[str, Any] = {"source": "reference-checkpoint", "weights": "ema" if use_ema else "raw"}
    if args is not None:
        a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        for k in ("dataset", "iter", "batch", "lr"):
            if k in a and isinstance(a[k], (str, int, float, bool)):
                prov[f"train_{k}"] = a[k]
    return model, disc, prov


def convert_reference_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                           config: ModelConfig | None = None, use_ema: bool = True,
                           overwrite: bool = False) -> StyleMapGAN:
    """``stylemapgan convert``: a reference checkpoint file -> a model file."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass --overwrite to replace it")
    ckpt = read_reference_checkpoint(src)
    model, _, prov = convert_reference(ckpt, str(src), config=config, use_ema=use_ema)
    prov.update(source_file=src.name, source_sha256=sha256_file(src))
    save_model(model, dst, provenance=prov, overwrite=overwrite)
    return model


__all__ = [
    "FORMAT_VERSION",
    "Encoder",
    "Generator",
    "atomic_write",
    "build_empty",
    "config_from_reference_args",
    "convert_reference",
    "convert_reference_file",
    "load_model",
    "read_model_metadata",
    "read_reference_checkpoint",
    "reference_key_map",
    "save_model",
    "sha256_file",
    "strict_load",
]
