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
import errno
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from stylemapgan.errors import InputError, StyleMapGANError

__all__ = ["LOCK_NAME", "WRITE_ERRNOS", "FolderBusyError", "TaggedFile", "UnwritableError", "as_oserror",
           "atomic_write", "disk_write_error", "first_line", "folder_lock", "process_umask",
           "read_tagged", "sha256_file", "unwritable", "write_tagged"]


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class UnwritableError(StyleMapGANError, OSError):
    """An output file that cannot be written (permissions, a read-only or full disk, a path
    through a file): the message names the user's path, never a temporary file, and the fix."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." form
        return str(self.args[0]) if self.args else ""


def _unwritable(path: Path, exc: OSError) -> UnwritableError:
    reason = exc.strerror or first_line(exc)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free some disk space or write somewhere else"
    elif code == errno.ENOTDIR:
        parent = next((p for p in path.parents if p.exists()), None)
        where = f"{parent} is a file, not a folder" if parent is not None and not parent.is_dir() \
            else "a part of the path is a file, not a folder"
        fix = f"{where}; choose another output path"
    elif code == errno.EROFS:
        fix = "the disk is read-only; write somewhere else"
    elif code in (errno.EACCES, errno.EPERM):
        fix = f"you may not write into {path.parent}; choose a folder you can write to"
    elif code == errno.ENOENT:
        fix = f"{path.parent} cannot be created here; choose another output path"
    else:
        fix = "choose another output path"
    err = UnwritableError(f"cannot write {path} ({reason}); {fix}")
    err.errno, err.strerror, err.filename = code, exc.strerror, str(path)
    return err


def unwritable(path: str | os.PathLike[str], exc: OSError) -> UnwritableError:
    """The one-line :class:`UnwritableError` for an ``OSError`` met writing ``path``: it names
    ``path`` (never a temporary file) and the fix (free space, another folder, ...)."""
    return _unwritable(Path(path), exc)


#: The errors only a write meets: a full disk or quota, a file too large, a read-only file
#: system (mounted so, or remounted read-only after a disk error).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def disk_write_error(exc: BaseException, where: str | os.PathLike[str] | None = None
                     ) -> UnwritableError | None:
    """The one-line :class:`UnwritableError` for a raw ``OSError`` of :data:`WRITE_ERRNOS`
    (naming the file it names, else ``where``, else "an output file"); None for any other
    exception (an ``UnwritableError`` already made is returned as it is)."""
    if isinstance(exc, UnwritableError):
        return exc
    if not isinstance(exc, OSError) or isinstance(exc, StyleMapGANError) \
            or exc.errno not in WRITE_ERRNOS:
        return None
    return _unwritable(Path(exc.filename or where or "an output file"), exc)


_LMDB_ERRNO = (("No space left", errno.ENOSPC), ("Read-only file system", errno.EROFS),
               ("Permission denied", errno.EACCES), ("Disk quota", errno.EDQUOT),
               ("File too large", errno.EFBIG))


def as_oserror(exc: BaseException, filename: str | None = None) -> OSError:
    """An ``OSError`` (errno from the text of, e.g., an ``lmdb.Error`` or a safetensors error)
    for a library error that is a failed write, so :func:`unwritable` can explain it."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    found = re.search(r"code:\s*(\d+)", text)
    code = int(found.group(1)) if found else next(
        (c for words, c in _LMDB_ERRNO if words.lower() in text.lower()), errno.EIO)
    return OSError(code, os.strerror(code), filename)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it atomically replaces ``path``.

    A crash or exception leaves ``path`` untouched (and removes the temporary file). Refuses to
    replace an existing file unless ``overwrite`` is true. A file system that refuses the write
    (permissions, a read-only or full disk, a path through a file) raises an
    :class:`UnwritableError` (an ``OSError`` too) naming ``path`` and the fix, not the temporary
    file.
    """
    path = Path(path)
    # A link counts as existing (even a dangling one): never replaced without --overwrite. With
    # it, os.replace replaces the link itself, never writes through it.
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    if path.is_dir():
        raise UnwritableError(f"cannot write {path}: it is a folder; choose a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates with O_EXCL: a planted link or file of that name is never opened.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileExistsError as exc:  # mkdir: a file where a folder of the path should be
        exc.errno = errno.ENOTDIR
        raise _unwritable(path, exc) from None
    except OSError as exc:
        raise _unwritable(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            # The caller's write into the temporary file: say so with the user's path.
            if isinstance(exc, StyleMapGANError) or not (
                    exc.filename in (tmp, str(tmp_path))
                    or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)):
                raise
            raise _unwritable(path, exc) from None
        try:
            # The temporary file must still be the regular file we created: a link or anything
            # else put there meanwhile is never synced through, nor moved into place.
            fd = os.open(tmp_path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "the temporary file was replaced", tmp)
                # mkstemp (and writers that make their own temporary file) create mode 0600:
                # give the file what an ordinary open() would under the process's umask.
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o666 & ~process_umask())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_path, path)
        except OSError as exc:
            raise _unwritable(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp_path):
                tmp_path.unlink()


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def process_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_torch_save(path: Path) -> bool:
    """Whether a file starts like a ``torch.save`` file: a zip archive or a pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and head[1] <= 5)


@dataclass
class TaggedFile:
    """What :func:`read_tagged` found: the version, all metadata and the tensors asked for."""

    path: Path
    version: int
    metadata: dict[str, str]
    tensors: dict[str, torch.Tensor]
    keys: list[str]


def _canonical_header(path: Path) -> None:
    """Rewrite the header of the safetensors file ``path`` with its metadata in sorted key order.

    safetensors keeps the metadata in a hash map whose order changes from one call to the next,
    so the same tensors and metadata would give different bytes (and SHA-256) each time. The
    reordered header (the same keys and values, so the same length) is written in place.
    """
    with open(path, "rb+") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
        header = json.loads(raw.decode("utf-8"))
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or len(meta) < 2:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > n:  # never: the same keys and values; the file stays valid, unsorted
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def write_tagged(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], *, fmt: str,
                 version: int, metadata: Mapping[str, str] | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) with the format tag and string
    ``metadata``, atomically (see :func:`atomic_write`; ``FileExistsError`` if ``path`` exists
    and not ``overwrite``).

    The same tensors and metadata always give the same bytes (the metadata is stored in sorted
    key order), so a file's SHA-256 identifies its content.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta["format"] = fmt
    meta["format_version"] = str(int(version))
    state = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        try:
            save_file(state, str(tmp), metadata=meta)
        except SafetensorError as exc:  # e.g. a full disk: "IoError(Os { code: 28, ... })"
            raise as_oserror(exc, str(tmp)) from None
        _canonical_header(tmp)
    return path


def read_tagged(path: str | os.PathLike[str], *, fmt: str, version: int, what: str,
                tensors: bool | tuple[str, ...] = True, error: type[Exception] = InputError,
                hint: str = "", foreign: Mapping[str, str] | None = None,
                missing: str | None = None, fix: str = "",
                untagged_version: int | None = None) -> TaggedFile:
    """Read a safetensors file tagged ``fmt`` whose version is at most ``version``.

    ``what`` names the kind of file in messages ("model file", "stylemap file", ...);
    ``hint`` is appended to the "wrong kind of file" message (e.g. how to make the right one);
    ``foreign`` maps other format tags to what to call such a file (e.g. a model file given
    where a stylemap is expected); ``missing`` replaces the "no such file" message; ``fix`` is
    appended to the messages about an unreadable or damaged file (e.g. how to get it again).
    ``untagged_version``: when not None, a file without any format tag (written before the
    kind had one) is read as that version instead of refused.
    ``tensors``: True for all, False for none (metadata only) or the names to load; a missing
    name is an error. Every failure raises ``error`` with one line naming ``path``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise error(missing or f"{path}: no such {what}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            tag = meta.get("format")
            legacy = tag is None and untagged_version is not None
            loaded: dict[str, torch.Tensor] = {}
            if (tag == fmt or legacy) and tensors:
                names = keys if tensors is True else list(tensors)
                for name in names:
                    if name not in keys:
                        raise error(f"{path}: the {what} has no tensor {name!r}; it is damaged"
                                    + tail)
                    loaded[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, error):
            raise
        if _is_torch_save(path):
            raise error(f"{path} is a PyTorch checkpoint (torch.save), not a {what}"
                        + (f"; {hint}" if hint else "")) from None
        raise error(f"{path}: not a readable {what} ({first_line(exc)}); it may be truncated "
                    "or not a .safetensors file" + tail) from None
    if legacy:
        return TaggedFile(path, int(untagged_version), meta, loaded, keys)  # type: ignore[arg-type]
    if tag != fmt:
        if foreign and tag in foreign:
            raise error(f"{path} is {foreign[tag]}, not a {what}" + (f"; {hint}" if hint else ""))
        raise error(f"{path} is a safetensors file but not a {what} (no '{fmt}' tag)"
                    + (f"; {hint}" if hint else ""))
    try:
        found = int(meta.get("format_version", ""))
    except ValueError:
        raise error(f"{path}: unreadable format_version {meta.get('format_version')!r} in the "
                    f"{what}" + tail) from None
    if found > version:
        raise error(f"{path}: {what} format {found} is newer than this stylemapgan supports "
                    f"({version}); upgrade stylemapgan")
    return TaggedFile(path, found, meta, loaded, keys)


# --------------------------------------------------------------------------- output folders
LOCK_NAME = ".stylemapgan.lock"


class FolderBusyError(InputError):
    """Another live process holds the folder's lock."""


def _lock_owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096).decode("utf-8", "replace")
        owner = json.loads(data) if data.strip() else {}
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], command: str = "stylemapgan", *,
                elsewhere: str = "write somewhere else with --out") -> Iterator[Path]:
    """Hold an exclusive lock on an output folder while writing into it.

    The lock is ``FOLDER/.stylemapgan.lock``, a file holding the owner's pid, host and command,
    locked with ``flock``: the kernel releases it when the owner exits in any way (even
    ``kill -9``), so a lock is never stale. A second process asking for the same folder gets a
    :class:`FolderBusyError` naming the owner, at once; ``elsewhere`` ends its message (the
    option that picks another folder). The folder is created if needed; the lock file is
    removed on release. Yields the folder.
    """
    import datetime as _dt
    import socket

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the output folder ({exc.strerror or exc}); "
                         "choose a folder you can write to with --out") from None
    path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no locking, say so once
        yield folder
        return
    while True:
        try:
            # Never through a link (O_NOFOLLOW: a planted .stylemapgan.lock link to another
            # file would have that file truncated), never blocking on a FIFO (O_NONBLOCK).
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_NONBLOCK
                         | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(path):
                raise InputError(f"{path} is a symbolic link, not a lock file; remove it or "
                                 f"{elsewhere}") from None
            raise InputError(f"{folder}: cannot write into the output folder "
                             f"({exc.strerror or exc}); choose a folder you can write to with "
                             "--out") from None
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = False
        if not regular:
            os.close(fd)
            raise InputError(f"{path} is not a regular file, not a lock file; remove it or "
                             f"{elsewhere}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            who = f"pid {owner.get('pid', '?')}"
            if owner.get("command"):
                who += f", `{owner['command']}`"
            if owner.get("started"):
                who += f", since {owner['started']}"
            raise FolderBusyError(f"{folder} is in use by another stylemapgan process ({who}); "
                                  f"wait for it to finish or {elsewhere}") from None
        # The file may have been removed by its previous owner between our open and our lock:
        # then we hold a lock on a file nobody else can see, so try again.
        try:
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
             "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(owner).encode())
    try:
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)  # closing releases the lock
