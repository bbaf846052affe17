"""The TensorBoard event writer of a run, guarded: a full or read-only disk is one
:class:`~stylemapgan.files.UnwritableError` ("cannot write RUN/events.out.tfevents...; free
some disk space ...") raised in the training thread, never a traceback.

``torch.utils.tensorboard.SummaryWriter`` appends its records to the event file from a
background thread: a failed write there kills that thread, prints its traceback, and surfaces
only at a later call, as the raw ``OSError``. :func:`open_summary_writer` first writes a byte
to a new file in the folder (a read-only or full disk fails there, in the calling thread),
then creates the writer, catches the background thread's write errors where they happen (the
thread goes on, writing nothing more) and raises the first of them, mapped, from the next call
the training loop makes. ``close`` never raises: it runs while the loop ends, perhaps on
another error; what it could not write is logged.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter  # ImportError without tensorboard

from stylemapgan.files import unwritable

log = logging.getLogger(__name__)

__all__ = ["GuardedSummaryWriter", "open_summary_writer"]


class GuardedSummaryWriter:
    """A ``SummaryWriter`` whose write errors become one :class:`UnwritableError` naming the
    event file (see the module's description). Has the writer's ``add_scalar``,
    ``add_image``, ``flush`` and ``close``."""

    def __init__(self, writer: Any, log_dir: Path) -> None:
        self._w = writer
        self._error: OSError | None = None
        self._lock = threading.Lock()
        events = getattr(getattr(writer, "file_writer", None), "event_writer", None)
        self.path = Path(getattr(events, "_file_name", None) or log_dir)
        # The event file's writer (TensorBoard's GFile): its write and flush run in the
        # background thread. Errors are kept for the training thread instead of killing it.
        gfile = getattr(events, "_general_file_writer", None)
        for name in ("write", "flush"):
            method = getattr(gfile, name, None)
            if callable(method):
                setattr(gfile, name, self._catching(method))

    def _catching(self, method):
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._error is not None:
                return None  # the file is broken: write nothing more
            try:
                return method(*args, **kwargs)
            except OSError as exc:
                with self._lock:
                    self._error = self._error or exc
                return None

        return call

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise unwritable(self.path, self._error) from None

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        self._raise_pending()
        try:
            getattr(self._w, name)(*args, **kwargs)
        except OSError as exc:
            raise unwritable(self.path, self._error or exc) from None
        self._raise_pending()

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        self._call("add_scalar", *args, **kwargs)

    def add_image(self, *args: Any, **kwargs: Any) -> None:
        self._call("add_image", *args, **kwargs)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        try:
            self._w.close()
        except OSError as exc:
            self._error = self._error or exc
        if self._error is not None:
            log.warning("%s", unwritable(self.path, self._error))


def _probe(log_dir: Path) -> None:
    """Make ``log_dir`` and write one byte to a new file in it (removed at once)."""
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".events-probe.", suffix=".tmp", dir=log_dir)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise unwritable(log_dir, exc) from None


def open_summary_writer(log_dir: str | os.PathLike[str], purge_step: int | None = None
                        ) -> GuardedSummaryWriter:
    """``SummaryWriter(log_dir, purge_step=...)``, guarded; a folder or event file that
    cannot be written is an :class:`UnwritableError` naming it."""
    _probe(Path(log_dir))
    try:
        writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
    except OSError as exc:
        raise unwritable(exc.filename or log_dir, exc) from None
    guarded = GuardedSummaryWriter(writer, Path(log_dir))
    # The first records (file version, and the purge marker on a resume) were queued while
    # the writer was made: a disk that refuses them says so now.
    guarded.flush()
    return guarded
