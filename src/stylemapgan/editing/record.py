"""Edit records: one JSON format for the command line and the web editor.

A record says what was edited, with what model, and how to get the same pixels again.
``stylemapgan edit replay RECORD --out DIR`` replays both kinds:

- **command line** records (``"source": "cli"``) name their input files with SHA-256
  checksums and hold the exact command (``argv``); replay checks the files and runs it again.
- **web editor** records (``"source": "web"``) carry their inputs: every image at the model's
  size as an embedded PNG and every painted mask exactly as the browser sent it, so a record
  downloaded from the editor replays with nothing but the model file. Replay runs the same
  :meth:`~stylemapgan.editing.Editor.paint` call and writes the frames with the recorded
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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylemapgan.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from stylemapgan.editing.regions import Region


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
    "check_record",
    "dumps",
    "frame_names",
    "new_record",
    "read_record",
    "sha256_bytes",
    "user_only_option",
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
    from stylemapgan.utils import dump_json

    return dump_json(record, "edit record")


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a record file against :func:`check_record` (the one schema, with the web
    editor's limits); one-line errors naming the field for anything that cannot be replayed."""
    import stat

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such record file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the record ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder; give the record.json inside it")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file; give a record.json file")
    if st.st_size > MAX_RECORD_BYTES:
        raise InputError(f"{path}: {st.st_size:,} bytes is more than an edit record holds (at most "
                         f"{MAX_RECORD_BYTES:,}); give the record.json an edit wrote")
    try:
        record = json.loads(path.read_bytes().decode("utf-8"),
                            parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise InputError(f"{path}: no such record file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON edit record ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: not an edit record (JSON nested too deeply)") from None
    except ValueError as exc:  # NaN / Infinity (_refuse_constant)
        raise InputError(f"{path}: not an edit record ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the record ({exc.strerror or exc})") from None
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
    version = record.get("version")
    if not _is_int(version) or version < 1:
        raise InputError(f"{path}: unreadable record version {version!r}; give a record an "
                         "edit wrote")
    if version > RECORD_VERSION:
        raise InputError(f"{path}: record version {version} is newer than this stylemapgan "
                         f"reads ({RECORD_VERSION}); upgrade stylemapgan")
    record.setdefault("source", "cli")
    check_record(record, str(path))
    return record


# --------------------------------------------------------------------------- the schema
#: Limits of a record, the web editor's own (:class:`stylemapgan.web.settings.WebSettings`
#: takes its defaults from here): a record never asks for more than the editor would do.
MAX_STEPS = 16
MAX_REFERENCES = 4
MAX_REGIONS = 4 * MAX_REFERENCES
MAX_MASK_SIDE = 2048
MAX_OFFSET = 8192
MAX_BATCH_SIZE = 1024
#: Command-line records: inputs, outputs and argv words (an edit of many references, many
#: steps), and the longest word (a path).
MAX_CLI_ITEMS = 4096
MAX_WORD = 4096
MAX_RECORD_BYTES = 256 << 20
#: Options only the user of `edit replay` gives: a record never sets them.
USER_ONLY_OPTIONS = ("--out", "--device", "--overwrite", "--force", "--help")
EDIT_OPERATIONS = ("reconstruct", "mix", "interpolate", "local", "transplant", "direction")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fail(where: str, field: str, problem: str) -> InputError:
    return InputError(f"{where}: field {field!r} {problem}; the record is damaged or was changed "
                      "(use the record.json an edit wrote)")


_ABSENT = object()  # an optional field that is not there


def _field(obj: dict[str, Any], where: str, field: str, required: bool, label: str) -> Any:
    """``obj[field]``; ``_ABSENT`` when an optional field is missing (a required one fails)."""
    if field in obj:
        return obj[field]
    if required:
        raise _fail(where, label, "is missing")
    return _ABSENT


def _want(record: dict[str, Any], where: str, field: str, kind: type | tuple[type, ...],
          required: bool = True, *, label: str | None = None) -> Any:
    v = _field(record, where, field, required, field)
    if v is _ABSENT:
        return None
    if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        ok = False
    else:
        ok = isinstance(v, kind)
    if not ok:
        names = label or (kind.__name__ if isinstance(kind, type) else
                          " or ".join(k.__name__ for k in kind))
        raise _fail(where, field, f"must be {names}, not {type(v).__name__}")
    return v


def _int_in(obj: dict[str, Any], where: str, field: str, lo: int, hi: int,
            required: bool = True, *, name: str | None = None) -> int | None:
    label = name or field
    v = _field(obj, where, field, required, label)
    if v is _ABSENT:
        return None
    if not _is_int(v) or not lo <= v <= hi:
        raise _fail(where, label, f"must be a whole number from {lo} to {hi}, not {v!r}"[:200])
    return v


def _str(obj: dict[str, Any], where: str, field: str, required: bool = True, *,
         name: str | None = None, limit: int = MAX_WORD, allow_none: bool = False) -> str | None:
    label = name or field
    v = _field(obj, where, field, required, label)
    if v is _ABSENT or (v is None and allow_none):
        return None
    if not isinstance(v, str):
        raise _fail(where, label, f"must be a string, not {type(v).__name__}")
    if len(v) > limit:
        raise _fail(where, label, f"is longer than {limit:,} characters")
    return v


def _sha(obj: dict[str, Any], where: str, field: str, required: bool, name: str) -> None:
    v = _str(obj, where, field, required, name=name, allow_none=not required)
    if v is not None and not _SHA256.match(v):
        raise _fail(where, name, "must be a SHA-256 (64 lowercase hex digits)")


def _list(obj: dict[str, Any], where: str, field: str, limit: int, required: bool = True) -> list:
    v = _want(obj, where, field, list, required, label="a list")
    if v is None:
        return []
    if len(v) > limit:
        raise _fail(where, field, f"has {len(v):,} items, more than {limit:,}")
    return v


def _output_name(obj: dict[str, Any], where: str, name: str) -> None:
    v = _str(obj, where, "path", name=name)
    if not v or "/" in v or "\\" in v or v in (".", "..") or "\0" in v:
        raise _fail(where, name, f"must be a plain file name inside --out, not {v!r}"[:200])


def _outputs(record: dict[str, Any], where: str, limit: int) -> list:
    """The record's ``outputs``: at most ``limit`` objects, each a plain file name and its
    SHA-256."""
    outputs = _list(record, where, "outputs", limit)
    for i, o in enumerate(outputs):
        if not isinstance(o, dict):
            raise _fail(where, f"outputs[{i}]", "must be an object")
        _output_name(o, where, f"outputs[{i}].path")
        _sha(o, where, "sha256", True, f"outputs[{i}].sha256")
    return outputs


def user_only_option(word: str) -> str | None:
    """The user-only option (``USER_ONLY_OPTIONS`` or ``-h``) a command-line word names, also
    abbreviated (argparse accepts unique prefixes) or as ``--opt=value``; else None."""
    if not word.startswith("-"):
        return None
    name = word.split("=", 1)[0]
    if name == "-h":
        return "--help"
    if len(name) < 3 or not name.startswith("--"):
        return None
    return next((opt for opt in USER_ONLY_OPTIONS if opt.startswith(name)), None)


def check_record(record: dict[str, Any], where: str = "record") -> None:
    """Check a record's fields against the one schema (types, lengths and the web editor's
    limits) before anything runs: a bad one raises :class:`InputError` naming the field.
    Embedded PNGs are checked when decoded (:func:`decode_embedded`, which knows the model's
    size)."""
    source = record.get("source", "cli")
    if source not in SOURCES:
        raise _fail(where, "source", f"must be one of {', '.join(SOURCES)}, not {source!r}"[:200])
    _str(record, where, "operation", required=False, limit=64)
    _str(record, where, "device", required=False, limit=64, allow_none=True)
    model = _want(record, where, "model", dict, required=source == "web", label="an object") or {}
    _str(model, where, "path", required=False, name="model.path", allow_none=True)
    _str(model, where, "name", required=False, name="model.name", limit=1024, allow_none=True)
    _sha(model, where, "sha256", False, "model.sha256")
    _want(model, where, "config", dict, required=False, label="an object")
    runtime = _want(model, where, "runtime", dict, required=False, label="an object") or {}
    _str(runtime, where, "precision", required=False, name="model.runtime.precision", limit=32)
    for key in ("channels_last", "compile", "cuda_graphs"):
        if key in runtime and not isinstance(runtime[key], bool):
            raise _fail(where, f"model.runtime.{key}", "must be true or false")
    if "png_compress_level" in record:
        _int_in(record, where, "png_compress_level", 0, 9)
    params = _want(record, where, "parameters", dict, required=False, label="an object") or {}
    if source == "web":
        _check_web(record, params, where)
    else:
        _check_cli(record, where)


def _check_web(record: dict[str, Any], params: dict[str, Any], where: str) -> None:
    inputs = _list(record, where, "inputs", 1 + MAX_REFERENCES)
    if not inputs:
        raise _fail(where, "inputs", "is empty (a web record carries its images)")
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise _fail(where, f"inputs[{i}]", "must be an object")
        _str(item, where, "role", required=False, name=f"inputs[{i}].role", limit=64)
        _str(item, where, "image", name=f"inputs[{i}].image", limit=MAX_RECORD_BYTES)
        _sha(item, where, "sha256", False, f"inputs[{i}].sha256")
    space = params.get("space", "wplus")
    if space not in ("w", "wplus"):
        raise _fail(where, "parameters.space", f"must be w or wplus, not {space!r}"[:200])
    steps = _int_in(params, where, "steps", 1, MAX_STEPS, required=False,
                    name="parameters.steps") or 1
    mode = params.get("mask_mode", "area")
    if mode not in ("area", "max"):
        raise _fail(where, "parameters.mask_mode", f"must be area or max, not {mode!r}"[:200])
    _int_in(params, where, "batch_size", 1, MAX_BATCH_SIZE, required=False,
            name="parameters.batch_size")
    regions = _list(record, where, "regions", MAX_REGIONS, required=False)
    for i, r in enumerate(regions):
        if not isinstance(r, dict):
            raise _fail(where, f"regions[{i}]", "must be an object")
        _int_in(r, where, "reference", 0, len(inputs) - 2 if len(inputs) > 1 else -1,
                name=f"regions[{i}].reference")
        for key in ("dx", "dy"):
            _int_in(r, where, key, -MAX_OFFSET, MAX_OFFSET, required=False,
                    name=f"regions[{i}].{key}")
        _str(r, where, "mask", name=f"regions[{i}].mask", limit=MAX_RECORD_BYTES)
        _check_transform(r, where, f"regions[{i}]")
    outputs = _outputs(record, where, MAX_STEPS)
    if outputs and len(outputs) != steps:
        raise _fail(where, "outputs", f"lists {len(outputs)} frames for {steps} steps")


def _check_transform(r: dict[str, Any], where: str, name: str) -> None:
    """A region's optional ``scale``, ``angle``, ``flip`` (records before them have none)."""
    for key in ("scale", "angle"):
        v = r.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _fail(where, f"{name}.{key}", f"must be a number, not {v!r}"[:200])
    flip = r.get("flip")
    if flip is not None and not isinstance(flip, str):
        raise _fail(where, f"{name}.flip", f"must be a string, not {flip!r}"[:200])
    if any(k in r for k in ("scale", "angle", "flip")):
        from stylemapgan.editing.transform import Transform

        try:
            Transform(scale=r.get("scale", 1.0), angle=r.get("angle", 0.0), flip=r.get("flip", ""))
        except InputError as exc:
            raise _fail(where, name, str(exc)[:200]) from None


def _check_cli(record: dict[str, Any], where: str) -> None:
    inputs = _list(record, where, "inputs", MAX_CLI_ITEMS, required=False)
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise _fail(where, f"inputs[{i}]", "must be an object")
        _str(item, where, "role", required=False, name=f"inputs[{i}].role", limit=64)
        _str(item, where, "path", name=f"inputs[{i}].path")
        _sha(item, where, "sha256", False, f"inputs[{i}].sha256")
    model = record.get("model") or {}
    _str(model, where, "path", name="model.path")
    _outputs(record, where, MAX_CLI_ITEMS)
    argv = _list(record, where, "argv", MAX_CLI_ITEMS)
    for i, word in enumerate(argv):
        if not isinstance(word, str):
            raise _fail(where, f"argv[{i}]", f"must be a string, not {type(word).__name__}")
        if len(word) > MAX_WORD or "\0" in word:
            raise _fail(where, f"argv[{i}]", "is not a usable command-line word")
    if len(argv) < 2 or argv[0] != "edit" or argv[1] not in EDIT_OPERATIONS:
        raise InputError(f"{where}: the record has no replayable command (field 'argv' must "
                         f"start with edit and one of {', '.join(EDIT_OPERATIONS)})")
    for i, word in enumerate(argv):
        opt = user_only_option(word)
        if opt is not None:
            raise _fail(where, f"argv[{i}]", f"sets {opt} ({word!r}), which only the user of "
                        "`edit replay` may give, never a record")


# --------------------------------------------------------------------------- embedded inputs
@dataclass
class EmbeddedEdit:
    """What a web record says to do, decoded: images [S, S, 3] uint8, regions, parameters."""

    images: list[np.ndarray]  # the original first, then the references
    regions: list[Region]  # masks [S, S] as the browser sent them (data_url kept)
    space: str
    steps: int
    mask_mode: str
    batch_size: int


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, read from the bytes alone (before any decoder,
    so a decompression bomb is refused by its size); None when the bytes are not a PNG."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def decode_embedded(record: dict[str, Any], size: int, where: str = "record") -> EmbeddedEdit:
    """The inputs a web record carries, checked against its checksums and the model's size.
    Each PNG's size is read from its header before it is decoded; anything that is not a
    readable PNG of a usable size is one :class:`InputError` naming the field."""
    import io

    import numpy as np
    from PIL import Image

    from stylemapgan.editing.regions import Region
    from stylemapgan.imaging.images import decode_png_data_url
    from stylemapgan.imaging.masks import mask_from_png

    check_record(record, where)
    images = []
    for i, item in enumerate(record.get("inputs", [])):
        what = f"{where}: input {i} ({item.get('role', '?')})"
        data = decode_png_data_url(str(item.get("image", "")), what)
        if item.get("sha256") and sha256_bytes(data) != item["sha256"]:
            raise InputError(f"{what}: the embedded image does not match its checksum; the "
                             "record was changed")
        dims = _png_size(data)
        if dims is None:
            raise InputError(f"{what}: the embedded image is not a PNG; the record is damaged")
        if dims != (size, size):
            raise InputError(f"{what}: the embedded image is {dims[0]}x{dims[1]}, but "
                             f"the model takes {size}x{size}; replay with the recorded model")
        try:
            with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
                arr = np.asarray(img.convert("RGB"))
        except Exception as exc:  # any decoder error: a damaged embedded PNG
            raise InputError(f"{what}: the embedded image is not a readable PNG "
                             f"({type(exc).__name__}); the record is damaged") from None
        if arr.shape != (size, size, 3):
            raise InputError(f"{what}: the embedded image is {arr.shape[1]}x{arr.shape[0]}, but "
                             f"the model takes {size}x{size}; replay with the recorded model")
        images.append(arr)
    if not images:
        raise InputError(f"{where}: the web record has no inputs")
    p = record.get("parameters") or {}
    regions = []
    for i, r in enumerate(record.get("regions") or []):
        what = f"{where}: region {i} mask"
        raw = decode_png_data_url(str(r.get("mask", "")), what)
        ref, dx, dy = r["reference"], r.get("dx", 0), r.get("dy", 0)
        if not 0 <= ref < len(images) - 1:
            raise InputError(f"{where}: region {i} uses reference {ref}, but the record has "
                             f"{len(images) - 1}")
        dims = _png_size(raw)
        if dims is None:
            raise InputError(f"{what}: not a PNG; the record is damaged")
        if not (1 <= dims[0] <= MAX_MASK_SIDE and 1 <= dims[1] <= MAX_MASK_SIDE):
            raise InputError(f"{what}: {dims[0]}x{dims[1]} is not a usable mask size (at most "
                             f"{MAX_MASK_SIDE} pixels a side); the record is damaged")
        try:
            mask = mask_from_png(raw, size, what)
        except InputError:
            raise
        except Exception as exc:  # any decoder error: a damaged embedded PNG
            raise InputError(f"{what}: not a readable PNG ({type(exc).__name__}); the record is "
                             "damaged") from None
        regions.append(Region(mask, dy=dy, dx=dx, reference=ref, data_url=str(r["mask"]),
                              scale=r.get("scale", 1.0), angle=r.get("angle", 0.0),
                              flip=r.get("flip", "")))
    return EmbeddedEdit(images, regions, str(p.get("space", "wplus")), int(p.get("steps", 1)),
                        str(p.get("mask_mode", "area")), int(p.get("batch_size", 16)))
