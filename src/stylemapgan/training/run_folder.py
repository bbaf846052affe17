"""The run folder of a training run: what :class:`~stylemapgan.training.loop.Trainer` writes
next to its checkpoints, and how it is cleaned and rolled back. Rank 0 only; the caller holds
the folder lock (``stylemapgan train`` does).

A run folder ``OUTDIR/NNNNN-NAME`` (:func:`new_run_dir`) holds ``config.json`` (the resolved
configs and facts about the run, :meth:`RunFolder.write_config`; read back by
:func:`read_run_config`), ``log.jsonl`` (one JSON record per log interval or validation,
:meth:`RunFolder.log`), TensorBoard events (:meth:`RunFolder.events`, the one place the
writer is created), image grids in ``images/`` and ``checkpoints/``
(:mod:`stylemapgan.training.checkpoints`).

* :meth:`RunFolder.remove_temporary_files` — when a run starts, what killed atomic writes
  left behind (only our own temporary names).
* :meth:`RunFolder.roll_back` — on resume, forget what was recorded after the checkpoint resumed
  from (``log.jsonl`` lines, image grids, unusable newer checkpoints and, through
  ``SummaryWriter(purge_step=...)``, TensorBoard events), so every step is recorded once.
* :func:`config_changes` — the training settings that differ between two configs (the run's
  ``history`` of changes on resume).
* :func:`run_info` — the facts about a run that config.json and checkpoints keep (dataset,
  command, sessions), checking on resume that the dataset still has its image count.
* :meth:`RunFolder.append_skipped` — ``skipped.txt``, the unreadable files of the dataset.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from stylemapgan.errors import ConfigError, InputError
from stylemapgan.files import atomic_write
from stylemapgan.training.checkpoints import list_checkpoints
from stylemapgan.training.checkpoints import remove_temporary_files as _remove_checkpoint_tmp
from stylemapgan.training.config import TrainConfig

__all__ = ["EventWriter", "RunFolder", "config_changes", "new_run_dir", "read_run_config",
           "run_info"]

log = logging.getLogger(__name__)

# Temporary files of atomic_write (``.NAME.RANDOM.tmp``) for the files of a run folder.
_RUN_TMP_RE = re.compile(r"^\.(config\.json|log\.jsonl)\.[^/]*\.tmp$")
_IMAGE_TMP_RE = re.compile(r"^\.(reals|samples-\d{8,}|reconstructions-\d{8,})\.png\.[^/]*\.tmp$")
_IMAGE_RE = re.compile(r"^(samples|reconstructions)-(\d{8,})\.png$")


def new_run_dir(outdir: str | os.PathLike[str], name: str) -> Path:
    """``outdir/NNNNN-name`` with the next free number."""
    out = Path(outdir)
    taken = [int(m.group(1)) for p in (out.iterdir() if out.is_dir() else [])
             if (m := re.match(r"^(\d{5,})-", p.name))]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    return out / f"{(max(taken) + 1) if taken else 0:05d}-{safe}"


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a run folder as a dict; an
    :class:`~stylemapgan.errors.InputError` naming the file when it is missing or unreadable."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise InputError(f"--resume {Path(run_dir)}: no config.json there; give a run folder "
                         "made by `stylemapgan train`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable run config ({exc}); give a run folder made "
                         "by `stylemapgan train`") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) \
            or not isinstance(data.get("train"), dict):
        raise InputError(f"{path}: has no \"model\" and \"train\" settings; give a run folder "
                         "made by `stylemapgan train`")
    return data


def config_changes(saved: TrainConfig, new: TrainConfig, step: int) -> list[dict[str, Any]]:
    """``{"step", "key", "old", "new"}`` for each training setting that differs."""
    return [{"step": step, "key": f.name, "old": getattr(saved, f.name),
             "new": getattr(new, f.name)}
            for f in fields(TrainConfig) if getattr(saved, f.name) != getattr(new, f.name)]


def run_info(*, data: str, val_data: str | None, dataset_images: int, skipped: int,
             preset: str, command: str, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The facts about a run kept in config.json and its checkpoints. ``saved``: the
    config.json of the run being resumed; its first command, earlier resume commands and
    ``init_from`` are kept, and a dataset whose image count changed since is a
    :class:`~stylemapgan.errors.ConfigError` (the data order would change)."""
    info: dict[str, Any] = {
        "dataset": str(data), "val_dataset": str(val_data) if val_data else None,
        "dataset_images": dataset_images, "preset": preset,
        "command": (saved or {}).get("command", command), "skipped_files": skipped}
    if saved is None:
        return info
    info["resumed_with"] = [*saved.get("resumed_with", []), command]
    if saved.get("init_from"):
        info["init_from"] = saved["init_from"]
    if saved.get("dataset_images") not in (None, dataset_images):
        raise ConfigError(
            f"the dataset {data} now has {dataset_images} images, the run started with "
            f"{saved['dataset_images']}; the data order would change, so resuming would "
            "not continue the same run (start a new run instead)")
    return info


class EventWriter:
    """TensorBoard scalars and images through torch.utils.tensorboard.

    ``purge_step``: a resumed run's first step past its checkpoint; TensorBoard then hides the
    events of earlier sessions from that step on (they were logged after the checkpoint and
    are replayed now)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        try:
            from stylemapgan.training.events import open_summary_writer  # disk errors: one line
        except ImportError:  # tensorboard not installed: JSONL and PNGs still work
            log.warning("tensorboard is not installed; no TensorBoard events are written "
                        "(pip install tensorboard)")
            self._w = None
            return
        self._w = open_summary_writer(log_dir, purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._w is not None:
            for k, v in values.items():
                self._w.add_scalar(k, v, step)

    def image(self, step: int, tag: str, array: np.ndarray) -> None:
        if self._w is not None:
            self._w.add_image(tag, array, step, dataformats="HWC")

    def flush(self) -> None:
        if self._w is not None:
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


class RunFolder:
    """The files of one run folder other than checkpoints (written by rank 0 only)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._writer: EventWriter | None = None
        #: For the next TensorBoard writer: hide earlier events from this step on (resume).
        self._purge_step: int | None = None

    # ----------------------------------------------------------------- writing
    def write_config(self, data: dict[str, Any]) -> None:
        """``config.json`` (atomically replaced)."""
        with atomic_write(self.path / "config.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to ``log.jsonl``."""
        with open(self.path / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def append_skipped(self, entries: list[tuple[str, str]]) -> Path:
        """Append ``name<TAB>reason`` lines to ``skipped.txt``, never through a link planted
        in the run folder (an :class:`~stylemapgan.errors.InputError` then); returns its path."""
        path = self.path / "skipped.txt"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise InputError(f"cannot write {path} ({exc.strerror}); it must be a plain file "
                             "in the run folder") from None
        with open(fd, "a", encoding="utf-8") as f:
            f.writelines(f"{name}\t{reason}\n" for name, reason in entries)
        return path

    def events(self) -> EventWriter:
        """The TensorBoard writer of this session, created on first use (the only place)."""
        if self._writer is None:
            self._writer = EventWriter(self.path, purge_step=self._purge_step)
            self._purge_step = None
        return self._writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ----------------------------------------------------------------- cleaning, rolling back
    def remove_temporary_files(self) -> None:
        """Delete what killed atomic writes left in the run folder (only our temp names)."""
        removed = _remove_checkpoint_tmp(self.path)
        for folder, pattern in ((self.path, _RUN_TMP_RE), (self.path / "images", _IMAGE_TMP_RE)):
            if folder.is_dir():
                for p in folder.iterdir():
                    if pattern.match(p.name) and p.is_file():
                        p.unlink(missing_ok=True)
                        removed += 1
        if removed:
            log.warning("%s: removed %d temporary file(s) left by an interrupted write",
                        self.path, removed)

    def roll_back(self, step: int) -> None:
        """Forget what the run folder recorded after ``step`` (the checkpoint resumed from):
        log.jsonl lines (and a line cut short by a kill), image grids, unusable newer
        checkpoints (renamed ``*.unusable``) and, through ``purge_step``, TensorBoard events."""
        path = self.path / "log.jsonl"
        if path.is_file():
            kept, dropped = [], 0
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    dropped += bool(line.strip())
                    continue
                s = record.get("step") if isinstance(record, dict) else None
                if isinstance(s, int) and s > step:
                    dropped += 1
                else:
                    kept.append(line)
            if dropped:
                with atomic_write(path, overwrite=True) as tmp:
                    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
                log.info("%s: dropped %d line(s) logged after step %d", path, dropped, step)
        img_dir = self.path / "images"
        if img_dir.is_dir():
            for p in img_dir.iterdir():
                m = _IMAGE_RE.match(p.name)
                if m and int(m.group(2)) > step:
                    p.unlink(missing_ok=True)
        for s, p in list_checkpoints(self.path):
            if s > step:
                p.replace(p.with_name(p.name + ".unusable"))
                log.warning("%s is damaged or holds NaN/Inf values; renamed to %s.unusable",
                            p, p.name)
        # Events from step+1 on (from 0 when starting again: the step-0 images come again).
        self._purge_step = step + 1 if step > 0 else 0
