"""The command line under bad input and contention: every numeric option is checked when it
is parsed, JSON outputs are valid JSON, `project` writes nothing when an input is bad, two
processes never write into one output folder, and messages name the user's path and the fix."""

import argparse
import ast
import errno
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from stylemapgan.cli import main
from stylemapgan.commands import build_parser
from stylemapgan.errors import InputError
from stylemapgan.files import LOCK_NAME, atomic_write

COMMANDS_DIR = ROOT / "src" / "stylemapgan" / "commands"


def _img(path, seed, side=24):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    return _img(d / "a.png", 0), _img(d / "b.png", 1)


def _error(err):
    """The one error line of a failed command (progress bars may share stderr)."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 6: numeric options
def _subparsers(parser):
    for action in parser._actions:  # argparse keeps no public list
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in _subparsers(sub):
                    yield f"{name} {inner}", subsub


def test_no_numeric_option_takes_a_bare_int_or_float():
    """Bare int/float accept nan, inf and any sign: every numeric option has a checked type."""
    loose = [f"{name} {'/'.join(a.option_strings) or a.dest}"
             for name, sub in _subparsers(build_parser()) if name != "train"
             for a in sub._actions if a.type in (int, float)]
    assert loose == []


def test_commands_write_json_without_nan():
    """Every json.dumps in the commands (but train, someone else's) refuses NaN/Infinity."""
    bare = []
    for path in sorted(COMMANDS_DIR.glob("*.py")):
        if path.name == "train.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "dumps" and getattr(node.func.value, "id", "") == "json"):
                ok = any(k.arg == "allow_nan" and getattr(k.value, "value", True) is False
                         for k in node.keywords)
                if not ok:
                    bare.append(f"{path.name}:{node.lineno}")
    assert bare == []


def test_json_helpers_never_write_nan():
    from stylemapgan.commands._common import dump_json, finite_or_none

    with pytest.raises(InputError, match=r"out/x\.json: a value is not finite.*nothing was written"):
        dump_json({"a": float("nan")}, "out/x.json")
    found = []
    clean = finite_or_none({"a": [1.0, float("inf")], "b": {"c": float("nan")}, "d": "x"}, found=found)
    assert clean == {"a": [1.0, None], "b": {"c": None}, "d": "x"}
    assert found == ["a[1]", "b.c"]
    assert json.loads(dump_json(clean, "x")) == clean


BAD_VALUES = [
    # (command line before the option, option, value)
    ("edit local {a} {b} --mask-box 0,0,1,1", "--mask-threshold", "2"),
    ("edit local {a} {b} --mask-box 0,0,1,1", "--mask-threshold", "nan"),
    ("edit local {a} {b} --mask-box 0,0,1,1", "--mask-threshold", "0"),
    ("edit local {a} {b} --mask-box 0,0,1,1", "--mask-threshold", "-0.5"),
    ("edit local {a} {b} --mask-box 0,0,1,1", "--steps", "0"),
    ("edit local {a} {b} --mask-box 0,0,1,1", "--feather", "nan"),
    ("edit local {a} {b} --mask-box 0,0,1,1", "--feather", "-1"),
    ("edit direction {a} --direction {b}", "--strength", "nan"),
    ("edit direction {a} --direction {b}", "--strength", "inf"),
    ("edit interpolate {a} {b}", "--steps", "1001"),
    ("edit interpolate {a} {b}", "--gif-ms", "0"),
    ("edit reconstruct {a}", "--batch-size", "0"),
    ("generate", "--truncation", "nan"),
    ("generate", "--truncation", "-1"),
    ("generate", "--batch-size", "-3"),
    ("project {a}", "--lr", "nan"),
    ("project {a}", "--lr", "0"),
    ("project {a}", "--mse-weight", "-1"),
    ("project {a}", "--lpips-weight", "inf"),
    ("project {a}", "--refine", "-1"),
    ("project {a}", "--batch-size", "0"),
    ("direction --positive {a} --negative {b}", "--val-fraction", "1"),
    ("direction --positive {a} --negative {b}", "--val-fraction", "nan"),
    ("direction --positive {a} --negative {b}", "--C", "0"),
    ("direction --positive {a} --negative {b}", "--C", "nan"),
    ("direction --positive {a} --negative {b}", "--seed", "-1"),
    ("evaluate --data {a}", "--seed", "-2"),
    ("evaluate --data {a}", "--truncation", "inf"),
    ("evaluate --data {a}", "--num-images", "0"),
    ("prepare-data {a}", "--quality", "101"),
    ("serve", "--max-megapixels", "nan"),
]


@pytest.mark.parametrize(("before", "option", "value"), BAD_VALUES,
                         ids=[f"{b.split()[0]}-{o}={v}" for b, o, v in BAD_VALUES])
def test_bad_numbers_are_refused_when_parsed(tmp_path, pair, capsys, before, option, value):
    a, b = pair
    argv = [w.format(a=a, b=b) for w in before.split()] + [option, value]
    if argv[0] != "serve":
        argv += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"error: argument {option}" in last and f"got '{value}'" in last, err
    assert not (tmp_path / "out").exists()


def test_mask_threshold_out_of_range_writes_no_record(tmp_path, pair, tiny_model_file, capsys):
    """Before: --mask-threshold 2 emptied the mask and the result was the reconstruction."""
    a, b = pair
    mask = tmp_path / "m.png"
    Image.fromarray(np.full((24, 24), 255, np.uint8)).save(mask)
    with pytest.raises(SystemExit):
        main(["edit", "local", str(a), str(b), "--mask", str(mask), "--mask-threshold", "2",
              "--model", str(tiny_model_file), "--out", str(tmp_path / "o")])
    assert "expected a number in (0, 1], got '2'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # In range it works, and record.json is strict JSON.
    assert main(["edit", "local", str(a), str(b), "--mask", str(mask), "--mask-threshold", "1",
                 "--model", str(tiny_model_file), "--out", str(tmp_path / "o")]) == 0
    text = (tmp_path / "o" / "record.json").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in record.json"))
    assert record["parameters"]["mask_threshold"] == 1.0


def test_transplant_moves_must_be_finite(tmp_path, pair, tiny_model_file, capsys):
    a, b = pair
    assert main(["edit", "transplant", str(a), "--ref", str(b), "--region", "box=1,1,3,3",
                 "move=nan,0", "--model", str(tiny_model_file), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == "error: region move='nan,0': expected two finite numbers X,Y\n"
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 7: project
@pytest.fixture
def twenty(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(20):
        _img(d / f"img{i:02d}.png", i)
    data = (d / "img15.png").read_bytes()
    (d / "img15.png").write_bytes(data[: len(data) * 2 // 3])  # the 16th, cut short
    return d


def test_project_with_a_truncated_file_writes_nothing(tmp_path, twenty, tiny_model_file, capsys):
    out = tmp_path / "proj"
    rc = main(["project", str(twenty), "--model", str(tiny_model_file), "--out", str(out),
               "--batch-size", "4", "--save-input"])
    err = _error(capsys.readouterr().err)
    assert rc == 2 and err.startswith(f"error: {twenty / 'img15.png'}: cannot decode"), err
    assert "nothing was written" in err and "--skip-bad" in err
    assert not out.exists() or _listing(out) == {}
    # --skip-bad projects the other 19 in one run, no --overwrite needed.
    assert main(["project", str(twenty), "--model", str(tiny_model_file), "--out", str(out),
                 "--batch-size", "4", "--skip-bad"]) == 0
    stdout = capsys.readouterr().out
    assert "projected 19 image(s)" in stdout and "1 skipped" in stdout
    record = json.loads((out / "project.json").read_text())
    assert [s["path"] for s in record["skipped"]] == [str(twenty / "img15.png")]
    assert len(record["images"]) == 19
    assert sorted(_listing(out)) == sorted(
        ["project.json"] + [f"img{i:02d}{ext}" for i in range(20) if i != 15
                            for ext in (".png", ".stylemap.safetensors")])


# --------------------------------------------------------------------------- 8: folder locks
HOLDER = """
import sys, time
from stylemapgan.files import folder_lock
with folder_lock(sys.argv[1], "stylemapgan holder --out x"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A folder locked by another live process, with one file in it."""
    folder = tmp_path_factory.mktemp("held")
    (folder / "keep.png").write_bytes(b"not to be touched")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        before = _listing(folder)
        yield folder, proc.pid, before
    finally:
        proc.kill()
        proc.wait()


LOCKED = [
    "generate --seeds 0",
    "demo",
    "project {a}",
    "edit reconstruct {a}",
    "edit local {a} {b} --mask-box 0,0,2,2",
    "edit mix {a} {b}",
    "edit interpolate {a} {b} --steps 2",
    "edit transplant {a} --ref {b} --region box=1,1,2,2",
    "edit direction {a} --direction {b}",
    "edit replay {a}",
    "evaluate --data {a} --metrics runtime",
    "export-onnx",
    "make-avatars --seeds 9",
]


@pytest.mark.parametrize("command", LOCKED, ids=[c.split(" {")[0].split(" --")[0] for c in LOCKED])
def test_a_folder_in_use_is_refused_at_once(held, pair, tiny_model_file, capsys, command):
    folder, pid, before = held
    a, b = pair
    argv = [w.format(a=a, b=b) for w in command.split()] + ["--out", str(folder)]
    if argv[:2] != ["edit", "replay"] and argv[0] != "make-avatars":
        argv += ["--model", str(tiny_model_file)]
    argv.append("--overwrite")  # even then
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: {re.escape(str(folder))} is in use by another stylemapgan "
                        rf"process \(pid {pid}, `stylemapgan holder --out x`, since [0-9T:+-]+\); "
                        r"wait for it to finish or write somewhere else with --out\n", err), err
    assert _listing(folder) == before


def test_the_lock_is_held_while_writing_and_released_after(tmp_path, pair, tiny_model_file,
                                                           monkeypatch):
    import stylemapgan.imaging.images as images

    seen = []
    real = images.save_png

    def spy(array, path, *args, **kwargs):
        seen.append(json.loads((Path(path).parent / LOCK_NAME).read_text())["pid"])
        return real(array, path, *args, **kwargs)

    monkeypatch.setattr(images, "save_png", spy)
    out = tmp_path / "g"
    assert main(["generate", "--seeds", "0-1", "--model", str(tiny_model_file), "--out", str(out)]) == 0
    assert seen == [os.getpid()] * 3
    assert not (out / LOCK_NAME).exists()
    # Re-entrant: a replay runs the recorded edit into the folder it already holds.
    assert main(["edit", "reconstruct", str(pair[0]), "--model", str(tiny_model_file),
                 "--out", str(tmp_path / "e")]) == 0
    assert main(["edit", "replay", str(tmp_path / "e" / "record.json"),
                 "--out", str(tmp_path / "e2")]) == 0
    assert not (tmp_path / "e2" / LOCK_NAME).exists()


# --------------------------------------------------------------------------- 9a: unwritable
@pytest.fixture
def unwritable_dir(tmp_path):
    """An existing folder this process cannot create files in (as root too)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    for candidate in ("/sys/kernel", "/sys", "/proc/self"):
        try:
            fd, name = tempfile.mkstemp(dir=candidate)
        except OSError:
            yield Path(candidate)
            return
        os.close(fd)
        os.unlink(name)
    pytest.skip("no folder here refuses writes from this user")


def test_unwritable_output_names_the_users_path(tmp_path, unwritable_dir, capsys):
    """Before: `[Errno 13] Permission denied: '.../.m.safetensors.x1y2.tmp'`, exit 1."""
    import torch

    from conftest import TINY_REF_ARGS, reference_checkpoint

    ckpt, _ = reference_checkpoint(TINY_REF_ARGS, 16, with_optim=False)
    torch.save(ckpt, tmp_path / "ref.pt")
    target = unwritable_dir / "m.safetensors"
    assert main(["convert", str(tmp_path / "ref.pt"), str(target), "--preset", "tiny-32"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: cannot write {target} (")
    assert "choose a folder you can write to" in err or "write somewhere else" in err
    assert ".tmp" not in err


def test_output_under_a_file_names_the_file(tmp_path, tiny_model_file, capsys):
    from stylemapgan.files import UnwritableError

    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    out = blocker / "run1"
    assert main(["generate", "--seeds", "0", "--model", str(tiny_model_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: cannot create the output folder")
    assert "choose a folder you can write to with --out" in err and err.count("\n") == 1
    assert blocker.read_text() == "a file, not a folder"
    message = rf"cannot write {out}/x.png \(Not a directory\); {blocker} is a file, not a folder"
    with pytest.raises(UnwritableError, match=message), atomic_write(out / "x.png") as tmp:
        tmp.write_bytes(b"x")


def test_a_full_disk_names_the_users_path_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from stylemapgan.files import UnwritableError

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UnwritableError) as e, atomic_write(tmp_path / "big.png") as tmp:
        tmp.write_bytes(b"x")
    assert str(e.value) == (f"cannot write {tmp_path / 'big.png'} (No space left on device); "
                            "free some disk space or write somewhere else")
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 9b: --model DIR
@pytest.mark.parametrize("argv", [
    ["generate", "--out", "{tmp}/o"],
    ["edit", "reconstruct", "{tmp}/a.png", "--out", "{tmp}/o"],
    ["edit", "replay", "{tmp}/r.json", "--out", "{tmp}/o"],
    ["project", "{tmp}", "--out", "{tmp}/o"],
    ["serve"],
], ids=["generate", "edit", "replay", "project", "serve"])
def test_a_folder_as_model_says_what_to_pass(tmp_path, capsys, argv):
    models = tmp_path / "models"
    models.mkdir()
    (models / "celeba.safetensors").write_bytes(b"")
    argv = [w.format(tmp=tmp_path) for w in argv] + ["--model", str(models)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f"error: argument --model: {models} is a folder, not a model file; pass "
                         "the .safetensors model file itself (this folder holds celeba.safetensors)")
    assert not (tmp_path / "o").exists()


def test_a_folder_as_model_without_model_files(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["info", str(tmp_path)])
    assert "pass a .safetensors model file (made by `stylemapgan convert`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(run), "--out", str(tmp_path / "o")])
    assert f"stylemapgan export {run} --out model.safetensors" in capsys.readouterr().err
