"""Newest-edit-wins scheduling: one worker thread, at most one pending edit per client session.

While an edit is computing, a newer request from the same session replaces that session's
pending one; the replaced request is answered at once as superseded instead of waiting its turn.
A request whose sequence number is not newer than one already seen from its session is stale
and superseded on arrival. Sessions take turns in the order their pending edits arrived.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Job:
    """One submitted edit. ``wait`` returns when it is done, failed or superseded."""

    def __init__(self, session: str, seq: int, fn: Callable[[], Any]) -> None:
        self.session = session
        self.seq = seq
        self.fn = fn
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.finished: float | None = None
        self.status = "pending"  # pending | running | done | failed | superseded
        self.result: Any = None
        self.error: BaseException | None = None
        self.superseded_by: int | None = None
        self._event = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    @property
    def queued_ms(self) -> float:
        end = self.started if self.started is not None else (self.finished or time.perf_counter())
        return 1000 * (end - self.submitted)

    def _finish(self, status: str) -> None:
        self.status = status
        self.finished = time.perf_counter()
        self._event.set()


class LatestWinsQueue:
    """Runs jobs one at a time on a worker thread (started on first use, stopped by ``close``)."""

    def __init__(self, max_sessions: int = 1024) -> None:
        self.max_sessions = max_sessions
        self._cv = threading.Condition()
        self._pending: OrderedDict[str, Job] = OrderedDict()
        self._latest: OrderedDict[str, int] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.running: Job | None = None
        self.completed = 0
        self.superseded = 0

    def submit(self, session: str, seq: int, fn: Callable[[], Any]) -> Job:
        job = Job(session, seq, fn)
        with self._cv:
            if self._closed:
                raise RuntimeError("the edit queue is closed")
            last = self._latest.get(session)
            if last is not None and seq <= last:
                job.superseded_by = last
                self.superseded += 1
                job._finish("superseded")
                return job
            self._latest[session] = seq
            self._latest.move_to_end(session)
            while len(self._latest) > self.max_sessions:
                old_session, _ = self._latest.popitem(last=False)
                dropped = self._pending.pop(old_session, None)
                if dropped is not None:
                    dropped.superseded_by = -1
                    self.superseded += 1
                    dropped._finish("superseded")
            older = self._pending.pop(session, None)
            if older is not None:
                older.superseded_by = seq
                self.superseded += 1
                older._finish("superseded")
                log.debug("session %s: edit %d superseded by %d", session, older.seq, seq)
            self._pending[session] = job
            self._ensure_worker()
            self._cv.notify_all()
        return job

    def latest(self, session: str) -> int | None:
        with self._cv:
            return self._latest.get(session)

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="stylemapgan-edit-worker",
                                            daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                _, job = self._pending.popitem(last=False)
                job.status = "running"
                job.started = time.perf_counter()
                self.running = job
            try:
                job.result = job.fn()
                status = "done"
            except BaseException as exc:  # handed to the waiting request
                job.error = exc
                status = "failed"
            with self._cv:
                self.running = None
                self.completed += 1
            job._finish(status)

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            for job in self._pending.values():
                job.superseded_by = -1
                job._finish("superseded")
            self._pending.clear()
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {"pending": len(self._pending), "running": self.running is not None,
                    "completed": self.completed, "superseded": self.superseded,
                    "sessions": len(self._latest)}
