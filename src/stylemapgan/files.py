"""Writing files safely and reading the package's own tagged safetensors files.

Every file kind the package writes (model files, training checkpoints, saved stylemaps,
directions, FID statistics, third-party weights) is a safetensors file whose metadata names its
format and version. :func:`write_tagged` and :func:`read_tagged` are the one place that writes
and checks that tag and turns every way such a file can be unreadable into one
:class:`~stylemapgan.errors.InputError` (or a subclass the caller picks) naming the file.

Layer: bottom (next to :mod:`stylemapgan.config` and :mod:`stylemapgan.errors`); nothing here
imports the networks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from stylemapgan.errors import InputError

__all__ = ["TaggedFile", "atomic_write", "first_line", "read_tagged", "sha256_file", "write_tagged"]


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it atomically replaces ``path``.

    A crash or exception leaves ``path`` untouched (and removes the temporary file). Refuses to
    replace an existing file unless ``overwrite`` is true.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class TaggedFile:
    """What :func:`read_tagged` found: the version, all metadata and the tensors asked for."""

    path: Path
    version: int
    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor]
    keys: list[str]


def write_tagged(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], *, fmt: str,
                 version: int, metadata: Mapping[str, str] | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) with the format tag and string
    ``metadata``, atomically."""
    from safetensors.torch import save_file

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta["format"] = fmt
    meta["format_version"] = str(int(version))
    state = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_tagged(path: str | os.PathLike[str], *, fmt: str, version: int, what: str,
                tensors: bool | tuple[str, ...] = True, error: type[Exception] = InputError,
                hint: str = "", foreign: Mapping[str, str] | None = None,
                missing: str | None = None) -> TaggedFile:
    """Read a safetensors file tagged ``fmt`` whose version is at most ``version``.

    ``what`` names the kind of file in messages ("model file", "stylemap file", ...);
    ``hint`` is appended to the "wrong kind of file" message (e.g. how to make the right one);
    ``foreign`` maps other format tags to what to call such a file (e.g. a model file given
    where a stylemap is expected); ``missing`` replaces the "no such file" message.
    ``tensors``: True for all, False for none (metadata only) or the names to load; a missing
    name is an error. Every failure raises ``error`` with one line naming ``path``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise error(missing or f"{path}: no such {what}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            tag = meta.get("format")
            loaded: dict[str, torch.Tensor] = {}
            if tag == fmt and tensors:
                names = keys if tensors is True else list(tensors)
                for name in names:
                    if name not in keys:
                        raise error(f"{path}: the {what} has no tensor {name!r}; it is damaged")
                    loaded[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, error):
            raise
        raise error(f"{path}: not a readable {what} ({first_line(exc)}); it may be truncated "
                    "or not a .safetensors file") from None
    if tag != fmt:
        if foreign and tag in foreign:
            raise error(f"{path} is {foreign[tag]}, not a {what}" + (f"; {hint}" if hint else ""))
        raise error(f"{path} is a safetensors file but not a {what} (no '{fmt}' tag)"
                    + (f"; {hint}" if hint else ""))
    try:
        found = int(meta.get("format_version", ""))
    except ValueError:
        raise error(f"{path}: unreadable format_version {meta.get('format_version')!r}") from None
    if found > version:
        raise error(f"{path}: {what} format {found} is newer than this stylemapgan supports "
                    f"({version}); upgrade stylemapgan")
    return TaggedFile(path, found, meta, loaded, keys)
