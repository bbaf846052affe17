"""Building an LMDB training dataset from an image folder or zip: ``stylemapgan prepare-data``'s work.

:func:`prepare_dataset` decodes every image of the source (in worker processes when asked),
fits it to a square at each size (:class:`~stylemapgan.data.datasets.ImageConverter`) and
stores it with :func:`~stylemapgan.data.datasets.write_lmdb`, in sorted file-name order.
Unreadable files are skipped, counted and listed in ``OUT/skipped.txt``.

The database is built in a temporary folder ``.OUT.*.tmp`` beside ``OUT``, locked (``flock``)
for as long as the building process lives, and moved into place when complete; such folders
left by a run that was killed (their lock is free) are removed by the next run.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylemapgan.data import datasets  # used by attribute: a test may replace write_lmdb
from stylemapgan.errors import InputError
from stylemapgan.files import as_oserror, process_umask, unwritable
from stylemapgan.imaging.placement import Fit
from stylemapgan.utils import NoProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedDataset:
    """What :func:`prepare_dataset` wrote: ``count`` images at each of ``sizes`` into ``out``;
    ``skipped`` holds the lines of ``out/skipped.txt`` (``NAME<TAB>PROBLEM``, one a file)."""

    out: Path
    count: int
    sizes: tuple[int, ...]
    skipped: tuple[str, ...]


def _claim(folder) -> int | None:
    """Lock a temporary folder (``flock`` on the folder itself) for as long as this process
    lives; None where it cannot be locked. Raises BlockingIOError if a live process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _remove_abandoned(out: Path) -> None:
    """Remove ``.OUT.*.tmp`` folders beside ``out`` left by a run that was killed: those whose
    lock nobody holds any more (a live run's folder is left alone)."""
    for name in glob.glob(glob.escape(str(out.parent / f".{out.name}.")) + "*.tmp"):
        if os.path.islink(name) or not os.path.isdir(name):
            continue
        try:
            fd = _claim(name)
        except OSError:  # held by a live run (or unreadable): not ours to remove
            continue
        try:
            shutil.rmtree(name, ignore_errors=True)
            log.info("removed %s, left by a run that was killed", name)
        finally:
            if fd is not None:
                os.close(fd)


def _make_temporary(out: Path) -> tuple[Path, int | None]:
    """The locked temporary folder beside ``out`` that the database is built in."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        tmp.chmod(0o777 & ~process_umask())  # mkdtemp's 0700: the folder an ordinary mkdir makes
        return tmp, _claim(tmp)  # held until this process (and its workers) end, even by kill -9
    except FileExistsError as exc:  # a file where a folder of the path should be
        raise unwritable(out, OSError(20, os.strerror(20), exc.filename)) from None
    except OSError as exc:  # a read-only disk, no permission, ...
        raise unwritable(out, exc) from None


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` (if any) by the finished database ``tmp``."""
    try:
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except OSError as exc:
        raise unwritable(out, exc) from None


def prepare_dataset(src: str | os.PathLike[str], out: str | os.PathLike[str], *,
                    sizes: Sequence[int] = (256,), fit: Fit = "crop", fmt: str = "jpeg",
                    quality: int = 95, workers: int | None = None,
                    overwrite: bool = False,
                    bar: Callable[..., Any] | None = None) -> PreparedDataset:
    """Convert the images of ``src`` (a folder, searched recursively, or a .zip) into an LMDB
    dataset at ``out`` holding each image at every one of ``sizes``.

    ``fit``: how an image becomes square (crop, pad or stretch). ``fmt``: ``jpeg`` (at
    ``quality``) or ``png``. ``workers``: decoding processes (default: the number of CPUs, at
    most 8). ``overwrite``: replace an existing ``out``. ``bar``: a ``tqdm.tqdm``-like progress
    factory (None shows nothing). Raises
    :class:`InputError` (nothing readable, ``out`` holding ``src``, ...), ``FileExistsError``
    or :class:`~stylemapgan.files.UnwritableError` (a full or read-only disk) naming ``out``.
    """
    if not 1 <= quality <= 100:
        raise InputError(f"--quality must be in 1..100, got {quality}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    source_path = Path(src).resolve()
    if out.resolve() == source_path or out.resolve() in source_path.parents:
        raise InputError(f"--out {out} holds the images of {src}; replacing it would delete "
                         "them: write the dataset somewhere else with --out")
    source = datasets.list_sources(src)
    n = len(source)
    sizes = list(sizes)
    workers = workers or min(8, os.cpu_count() or 1)
    import lmdb

    tmp, claim = _make_temporary(out)
    skipped: list[str] = []
    convert = datasets.ImageConverter(source, sizes, fit, fmt, quality)
    try:
        with (bar or NoProgress)(total=n, unit="img", desc="prepare-data") as progress:

            def encoded(results):
                for index, data, error in results:
                    progress.update(1)
                    if data is None:
                        skipped.append(f"{source.name(index)}\t{error}")
                        progress.set_postfix(skipped=len(skipped))
                        continue
                    yield data

            try:
                if workers > 1 and n > 1:
                    with ProcessPoolExecutor(workers, initializer=convert.install) as pool:
                        results = pool.map(datasets.ImageConverter.run_installed, range(n),
                                           chunksize=16)
                        count = datasets.write_lmdb(tmp, encoded(results), sizes)
                else:
                    count = datasets.write_lmdb(tmp, encoded(map(convert, range(n))), sizes)
            except (lmdb.Error, OSError) as exc:  # a full or read-only disk: one line naming OUT
                if isinstance(exc, InputError):
                    raise
                raise unwritable(out, as_oserror(exc)) from None
        if count == 0:
            raise InputError(f"{src}: none of the {n} image file(s) could be read "
                             f"(first problem: {skipped[0].split(chr(9))[-1] if skipped else 'no images'})")
        try:
            (tmp / "skipped.txt").write_text("".join(f"{s}\n" for s in skipped), encoding="utf-8")
        except OSError as exc:
            raise unwritable(out, exc) from None
        _move_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if claim is not None:
            os.close(claim)
    return PreparedDataset(out, count, tuple(sizes), tuple(skipped))


__all__ = ["PreparedDataset", "prepare_dataset"]
