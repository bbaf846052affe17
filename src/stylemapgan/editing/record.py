"""Edit records: one JSON format for the command line and the web editor.

A record says what was edited, with what model, and how to get the same pixels again.
``stylemapgan edit replay RECORD --out DIR`` replays both kinds:

- **command line** records (``"source": "cli"``) name their input files with SHA-256
  checksums and hold the exact command (``argv``); replay checks the files and runs it again.
- **web editor** records (``"source": "web"``) carry their inputs: every image at the model's
  size as an embedded PNG and every painted mask exactly as the browser sent it, so a record
  downloaded from the editor replays with nothing but the model file. Replay runs the same
  :meth:`~stylemapgan.editing.Editor.edit_regions` call and writes the frames with the recorded
  PNG compression level, so the PNG bytes match.

Both list their outputs with checksums. Format ``stylemapgan-edit-record``: version 1 (command
line records written before the web editor joined the format) still replays; version 2 is
written now. The web editor's older ``stylemapgan-edit`` v1 downloads held no inputs and cannot
be replayed.

Numbers are written with ``allow_nan=False``: a record is always valid JSON.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylemapgan.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from stylemapgan.editing.editor import Editor

RECORD_FORMAT = "stylemapgan-edit-record"
RECORD_VERSION = 2
#: What the web editor wrote before records were one format (no inputs inside).
LEGACY_WEB_FORMAT = "stylemapgan-edit"
SOURCES = ("cli", "web")

__all__ = [
    "LEGACY_WEB_FORMAT",
    "RECORD_FORMAT",
    "RECORD_VERSION",
    "EmbeddedEdit",
    "dumps",
    "frame_names",
    "new_record",
    "read_record",
    "render_embedded",
    "run_painted",
    "sha256_bytes",
]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame_names(k: int) -> list[str]:
    """File names of an edit's K result frames: result.png, or frame_000.png ..."""
    return ["result.png"] if k == 1 else [f"frame_{i:03d}.png" for i in range(k)]


def new_record(*, source: str, operation: str, model: dict[str, Any], device: str,
               inputs: Sequence[dict[str, Any]], parameters: dict[str, Any],
               outputs: Sequence[dict[str, Any]], png_compress_level: int,
               **extra: Any) -> dict[str, Any]:
    """A record in the current format (the common keys first, then ``extra``)."""
    import torch

    from stylemapgan import __version__

    if source not in SOURCES:
        raise ValueError(f"record source must be one of {SOURCES}, got {source!r}")
    return {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "source": source,
        "operation": operation,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stylemapgan_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "model": model,
        "inputs": list(inputs),
        "parameters": parameters,
        "png_compress_level": int(png_compress_level),
        **extra,
        "outputs": list(outputs),
    }


def dumps(record: dict[str, Any]) -> str:
    """The record as JSON text (never NaN or Infinity)."""
    try:
        return json.dumps(record, indent=2, allow_nan=False) + "\n"
    except ValueError as exc:
        raise InputError(f"edit record: a value is not finite ({exc}); nothing was written") from None


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a record file; one-line errors for anything that cannot be replayed."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such record file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; give the record.json inside it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON edit record ({exc})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: not an edit record")
    fmt = record.get("format")
    if fmt == LEGACY_WEB_FORMAT:
        raise InputError(f"{path}: a record from an older web editor, which did not include its "
                         "images; it cannot be replayed (download the record again from the "
                         "current editor)")
    if fmt != RECORD_FORMAT:
        raise InputError(f"{path}: not an edit record (written as record.json by `stylemapgan "
                         "edit`, or downloaded from the web editor)")
    try:
        version = int(record.get("version", 0))
    except (TypeError, ValueError):
        version = 0
    if version < 1:
        raise InputError(f"{path}: unreadable record version {record.get('version')!r}")
    if version > RECORD_VERSION:
        raise InputError(f"{path}: record version {version} is newer than this stylemapgan "
                         f"reads ({RECORD_VERSION}); upgrade stylemapgan")
    record.setdefault("source", "cli")
    return record


# --------------------------------------------------------------------------- embedded inputs
@dataclass
class EmbeddedEdit:
    """What a web record says to do, decoded: images [S, S, 3] uint8, regions, parameters."""

    images: list[np.ndarray]  # the original first, then the references
    regions: list[tuple[int, np.ndarray, int, int]]  # (reference, mask [S, S], dx, dy)
    space: str
    steps: int
    mask_mode: str
    batch_size: int


def decode_embedded(record: dict[str, Any], size: int, where: str = "record") -> EmbeddedEdit:
    """The inputs a web record carries, checked against its checksums and the model's size."""
    import io

    import numpy as np
    from PIL import Image

    from stylemapgan.imaging.images import decode_png_data_url
    from stylemapgan.imaging.masks import mask_from_png

    images = []
    for i, item in enumerate(record.get("inputs", [])):
        what = f"{where}: input {i} ({item.get('role', '?')})"
        data = decode_png_data_url(str(item.get("image", "")), what)
        if item.get("sha256") and sha256_bytes(data) != item["sha256"]:
            raise InputError(f"{what}: the embedded image does not match its checksum; the "
                             "record was changed")
        try:
            arr = np.asarray(Image.open(io.BytesIO(data), formats=("PNG",)).convert("RGB"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{what}: the embedded image is not a readable PNG ({exc})") from None
        if arr.shape != (size, size, 3):
            raise InputError(f"{what}: the embedded image is {arr.shape[1]}x{arr.shape[0]}, but "
                             f"the model takes {size}x{size}; replay with the recorded model")
        images.append(arr)
    if not images:
        raise InputError(f"{where}: the web record has no inputs")
    p = record.get("parameters", {})
    regions = []
    for i, r in enumerate(record.get("regions", [])):
        raw = decode_png_data_url(str(r.get("mask", "")), f"{where}: region {i} mask")
        try:
            ref, dx, dy = int(r["reference"]), int(r.get("dx", 0)), int(r.get("dy", 0))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: region {i} has no usable reference/dx/dy") from None
        if not 0 <= ref < len(images) - 1:
            raise InputError(f"{where}: region {i} uses reference {ref}, but the record has "
                             f"{len(images) - 1}")
        regions.append((ref, mask_from_png(raw, size, f"{where}: region {i} mask"), dx, dy))
    try:
        return EmbeddedEdit(images, regions, str(p.get("space", "wplus")), int(p.get("steps", 1)),
                            str(p.get("mask_mode", "area")), int(p.get("batch_size", 16)))
    except (TypeError, ValueError):
        raise InputError(f"{where}: unreadable parameters {p!r}") from None


def run_painted(editor: Editor, src: Any, refs: Sequence[Any],
                painted: Sequence[tuple[int, np.ndarray, int, int]], *, space: str, n_steps: int,
                mask_mode: str = "area") -> tuple[np.ndarray, str, list[int]]:
    """The web editor's edit: ``painted`` regions (reference index, mask [S, S] in [0, 1], dx,
    dy in image pixels) of ``refs`` onto ``src`` (projections or stylemaps), as ``n_steps``
    frames from the reconstruction to the full edit. Empty masks are left out. Returns (frames
    [K, S, S, 3] uint8, the method, the indices of the regions used). The web editor and the
    replay of its records both run this, so they give the same pixels."""
    import numpy as np
    import torch

    from stylemapgan.editing.operations import Region, check_space, steps
    from stylemapgan.imaging.images import to_uint8

    check_space(space)
    used = [i for i, (_, m, _, _) in enumerate(painted) if float(np.max(m, initial=0.0)) > 0.0]
    regions = [Region(torch.from_numpy(np.ascontiguousarray(painted[i][1], dtype=np.float32))[None, None],
                      dy=painted[i][3], dx=painted[i][2], reference=painted[i][0]) for i in used]
    images, method = editor.edit_regions(src, list(refs), regions, space=space,
                                         t=steps(n_steps), mode=mask_mode)
    return to_uint8(images), method, used


def render_embedded(record: dict[str, Any], editor: Editor, where: str = "record") -> tuple[np.ndarray, str]:
    """Run the edit a web record describes with ``editor``: frames [K, S, S, 3] uint8 and the
    method used (as the web editor ran it)."""
    from stylemapgan.imaging.images import from_uint8

    spec = decode_embedded(record, editor.size, where)
    editor.batch_size = max(1, spec.batch_size)
    projections = [editor.projection(from_uint8(im)) for im in spec.images]
    frames, method, _ = run_painted(editor, projections[0], projections[1:], spec.regions,
                                    space=spec.space, n_steps=spec.steps,
                                    mask_mode=spec.mask_mode)
    return frames, method
