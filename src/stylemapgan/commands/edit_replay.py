"""``stylemapgan edit replay RECORD --out DIR``: run the edit a record.json describes again
(a command-line record runs its command; a web editor record carries its images and masks) and
compare the new outputs with the recorded checksums."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from stylemapgan.commands._common import (
    abspath,
    add_overwrite,
    add_parser,
    model_file,
    writes_folder,
)


def add_replay(ops: argparse._SubParsersAction) -> None:
    """Register ``replay`` among the operations of ``stylemapgan edit``."""
    q = add_parser(ops, "replay", help="run the edit a record.json describes again",
                   description="""
                       Check that the model and every input still have the checksums the record
                       lists, run the edit again into --out, and compare the new outputs with
                       the recorded checksums. A record.json of a command runs that command
                       again; a record downloaded from the web editor carries its images and
                       masks and is replayed with the model it names (or --model).""",
                   examples="""
                       stylemapgan edit replay out/record.json --out again
                       stylemapgan edit replay ~/Downloads/stylemapgan-edit.json --model m.safetensors --out web_again""")
    q.add_argument("record", type=abspath,
                   help="record.json written by an edit, or a record downloaded from the web editor")
    q.add_argument("--out", required=True, help="output folder for the new run")
    q.add_argument("--model", type=model_file, default=None,
                   help="model file for a web editor record (default: the path it recorded, or "
                        "the embedded default model if its checksum matches)")
    q.add_argument("--device", default=None, help="device to run on (default: cpu for a record "
                                                  "made on the CPU, else auto)")
    q.add_argument("--force", action="store_true", help="run even if an input's checksum changed")
    q.add_argument("--strict", action="store_true",
                   help="exit with status 1 if an output differs from the recorded one")
    add_overwrite(q)
    q.set_defaults(func=writes_folder(run_replay))


@dataclass(frozen=True)
class Replay:
    """The options of ``edit replay``."""

    record: str
    out: str
    model: str | None  # for a web editor record
    device: str | None  # None: cpu for a record made on the CPU, else auto
    force: bool
    strict: bool
    overwrite: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Replay:
        return cls(record=args.record, out=args.out, model=args.model, device=args.device,
                   force=bool(args.force), strict=bool(args.strict),
                   overwrite=bool(args.overwrite))


def run_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stylemapgan.editing.record import read_record

    req = Replay.from_args(args)
    path = Path(req.record)
    # A replay writes OUT/record.json: never over the record it reads, even with --overwrite.
    if _same_file(Path(req.out) / "record.json", path):
        from stylemapgan.errors import InputError

        raise InputError(f"--out {req.out}: the replay would write its record.json over the "
                         f"record it replays ({path}); choose another --out folder")
    record = read_record(path)
    if record.get("source") == "web":
        return _replay_web(req, path, record)
    return _replay_command(req, path, record)


def _same_file(a, b) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing (or unreadable): not one file
        return False


def _check_file(path, role: str, p, sha256: str | None, force: bool) -> None:
    from stylemapgan.errors import InputError
    from stylemapgan.files import sha256_file

    if not p.is_file():
        raise InputError(f"{path}: the {role} {p} is gone")
    if sha256 is None:
        print(f"note: {path} has no checksum for the {role}; {p} is used unchecked")
        return
    if sha256_file(p) != sha256:
        msg = f"{path}: the {role} {p} changed since the edit (checksum differs)"
        if not force:
            raise InputError(msg + "; pass --force to run anyway")
        print(f"warning: {msg}")


def _replay_device(req: Replay, record) -> str:
    """The user's --device; without it, cpu for a record made on the CPU (to get its bytes
    again), else auto. The record itself never names the device (it could only widen)."""
    if req.device is not None:
        return req.device
    return "cpu" if record.get("device") == "cpu" else "auto"


def _compare(out, record, req: Replay) -> int:
    """Compare the new outputs in ``out`` with the record's checksums; print and return the status."""
    from stylemapgan.files import sha256_file

    same, differ = 0, []
    for o in record.get("outputs", []):
        p = out / o["path"]
        if p.is_file() and sha256_file(p) == o["sha256"]:
            same += 1
        else:
            differ.append(o["path"])
    total = same + len(differ)
    if not differ:
        print(f"replay: all {total} output(s) are identical to the recorded ones")
        return 0
    print(f"replay: {same} of {total} output(s) identical; different: {', '.join(differ)} "
          f"(recorded on {record.get('device')} with torch {record.get('torch_version')}; other "
          "devices or versions can change the last bits)")
    return 1 if req.strict else 0


def _replay_command(req: Replay, path, record) -> int:
    """A command-line record: check the files, run the recorded command again."""
    from pathlib import Path

    from stylemapgan.commands import build_parser
    from stylemapgan.errors import InputError

    argv = record.get("argv")  # checked by read_record: words of an edit, no user-only option
    if not isinstance(argv, list) or not argv or argv[0] != "edit" or "replay" in argv[:2]:
        raise InputError(f"{path}: the record has no replayable command")
    if req.model is not None:
        raise InputError(f"{path}: --model applies to web editor records; a command-line record "
                         "names its model file")
    # The files must be the ones the record was made from.
    for f in [{"role": "model", **record.get("model", {})}, *record.get("inputs", [])]:
        _check_file(path, f.get("role", "input"), Path(f.get("path", "")), f.get("sha256"),
                    req.force)
    device = _replay_device(req, record)
    # Before --align-ref existed, --align aligned the references too: a record whose
    # references were aligned without it replays as it was made.
    if "--align-ref" not in argv and any(
            str(f.get("role", "")).startswith("reference") and isinstance(f.get("placement"), dict)
            and f["placement"].get("fit") == "aligned" for f in record.get("inputs", [])):
        argv = [*argv, "--align-ref"]
    new_argv = [*argv, "--out", req.out, "--device", device]
    if req.overwrite:
        new_argv.append("--overwrite")
    print("replaying: stylemapgan " + " ".join(new_argv))
    ns = _parse_recorded(build_parser(), new_argv, path)
    # --out, --device and --overwrite are the user's, whatever the record's words say.
    ns.out, ns.device, ns.overwrite = req.out, device, bool(req.overwrite)
    # A --fast edit runs again with the fast path it had (not this device's pick).
    rc = ns.func(ns, runtime=_recorded_runtime(path, record.get("model") or {}))
    if rc:
        return rc
    return _compare(Path(req.out), record, req)


def _parse_recorded(parser, argv: list[str], path) -> argparse.Namespace:
    """Parse a record's command line: argparse's usage and exit become one InputError."""
    import contextlib
    import io

    from stylemapgan.errors import InputError

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            ns = parser.parse_args(argv)
    except SystemExit:
        lines = [ln for ln in captured.getvalue().splitlines() if ln.strip()]
        why = lines[-1].split("error: ", 1)[-1] if lines else "not a command line"
        raise InputError(f"{path}: field 'argv' is not a valid edit command ({why}); the record "
                         "is damaged or was changed") from None
    if getattr(ns, "command", None) != "edit" or getattr(ns, "operation", None) == "replay":
        raise InputError(f"{path}: the record has no replayable command")
    return ns


def _recorded_runtime(path, model: dict[str, Any]):
    """The fast-path options a record's model entry names (None when it names none)."""
    from stylemapgan.errors import InputError
    from stylemapgan.nn.runtime import RuntimeOptions

    rt = model.get("runtime")
    if not rt:
        return None
    try:
        return RuntimeOptions(precision=rt.get("precision", "float32"),
                              channels_last=bool(rt.get("channels_last", False)),
                              compile=bool(rt.get("compile", False)),
                              cuda_graphs=bool(rt.get("cuda_graphs", False)))
    except Exception as exc:  # ConfigError: a record of a precision this build does not know
        raise InputError(f"{path}: unusable runtime {rt!r} ({exc})") from None


def _replay_web(req: Replay, path, record) -> int:
    """A web editor record: its images and masks are inside; run the same edit with the same
    engine settings and write the frames with the recorded PNG level."""
    from pathlib import Path

    from stylemapgan.editing.editor import Editor
    from stylemapgan.editing.record import frame_names
    from stylemapgan.editing.session import replay_web_record
    from stylemapgan.errors import InputError
    from stylemapgan.formats.checkpoint import default_model_path, load_model
    from stylemapgan.imaging.images import check_writable
    from stylemapgan.nn.runtime import RuntimeOptions
    from stylemapgan.utils import resolve_device

    m = record.get("model", {})
    if req.model is not None:
        model_path = Path(req.model)
        if not model_path.is_file():
            raise InputError(f"--model {model_path}: no such file; pass the model file the "
                             f"editor served (or {default_model_path().name} for the embedded "
                             "model)")
    else:
        model_path = Path(m["path"]) if m.get("path") else None
        if model_path is None or not model_path.is_file():
            default = default_model_path()
            if m.get("sha256") and default.is_file():
                from stylemapgan.files import sha256_file

                if sha256_file(default) == m["sha256"]:
                    model_path = default
        if model_path is None or not model_path.is_file():
            where = f"at {m['path']}" if m.get("path") else "no path recorded"
            raise InputError(f"{path}: the model the record names, {m.get('name', '?')} "
                             f"({where}), is not here and is not the embedded model; pass "
                             "--model MODEL_FILE (the file the editor served)")
    _check_file(path, "model", model_path, m.get("sha256"), req.force)
    runtime = _recorded_runtime(path, m) or RuntimeOptions()
    outputs = record.get("outputs", [])
    out = Path(req.out)
    names = frame_names(len(outputs)) if outputs else ["result.png"]
    check_writable([out / n for n in names], req.overwrite)
    device = resolve_device(_replay_device(req, record))
    editor = Editor(load_model(model_path, device=device), runtime=runtime)
    print(f"replaying a web editor edit ({record.get('parameters', {}).get('method', '?')}) with "
          f"{model_path.name} on {device}")
    names, method = replay_web_record(editor, record, str(path), out, overwrite=req.overwrite)
    print(f"replay: wrote {len(names)} frame(s) to {out} ({method})")
    return _compare(out, record, req)
