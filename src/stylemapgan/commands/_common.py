"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stylemapgan.utils import dump_json, finite_or_none  # noqa: F401  (the commands' JSON)


def add_parser(sub: argparse._SubParsersAction, name: str, help: str, description: str,
               examples: str) -> argparse.ArgumentParser:
    """A subcommand parser whose --help ends with examples."""
    return sub.add_parser(
        name, help=help, description=textwrap.dedent(description).strip(),
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def abspath(text: str) -> str:
    """An argument that names a file: stored absolute, so records replay from anywhere."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return os.path.abspath(os.path.expanduser(text))


def model_file(text: str) -> str:
    """An argument that names a model file: absolute, and refused at once when it is a folder
    (with what to pass instead). The embedded model's bare file name (``avatars64.safetensors``,
    as records and ``info`` name it) means the embedded model unless such a file is here."""
    path = abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(_folder_not_model(path))
    if not os.path.exists(path) and os.path.basename(text) == text:
        from stylemapgan.formats.checkpoint import default_model_path

        default = default_model_path()
        if text == default.name:
            return str(default)
    return path


def _folder_not_model(path: str) -> str:
    try:
        inside = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    except OSError:
        inside = []
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return (f"{path} is a folder (a training run?), not a model file; pass a model file, "
                f"e.g. make one with `stylemapgan export {path} --out model.safetensors`")
    if inside:
        shown = ", ".join(inside[:3]) + (", ..." if len(inside) > 3 else "")
        return (f"{path} is a folder, not a model file; pass the .safetensors model file itself "
                f"(this folder holds {shown})")
    return (f"{path} is a folder, not a model file; pass a .safetensors model file (made by "
            "`stylemapgan convert` or `stylemapgan export`), or leave --model out for the "
            "embedded model")


def add_model(p: argparse.ArgumentParser) -> None:
    """--model, optional: commands call :func:`resolve_model` on the value."""
    p.add_argument("--model", default=None, type=model_file,
                   help="model file (.safetensors); default: the embedded 64 px avatar model "
                        "(its name, avatars64.safetensors, also selects it)")


def resolve_model(value: str | None) -> str:
    """The --model value, or the embedded default model when it was not given."""
    if value:
        return value
    from stylemapgan.formats.checkpoint import default_model_path

    return str(default_model_path())


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default: auto)")


#: --fast, as every command that runs the networks has it (measured: see the README's
#: Performance section; PSNR of projection + generation against plain float32).
FAST_HELP = (
    "run the networks through the fast path (serve --fast's): bfloat16 with channels-last "
    "memory on CPUs with AVX512-BF16 or AMX and on GPUs with bfloat16 (float16 on older GPUs), "
    "float32 with channels-last on other CPUs. What it costs against plain float32, as the PSNR "
    "of projection + generation: float32 channels-last 127 dB on the embedded model (at most "
    "3e-5 apart: the same picture), bfloat16 48 dB on the embedded model and 41 dB on "
    "official-256 (float16 on CUDA not measured). What it buys on official-256: about 1.2x "
    "(float32 channels-last), 2.4x (bfloat16, AVX512-BF16 CPU), 5x (bfloat16, AMX CPU)")


def add_fast(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast", action="store_true", help=FAST_HELP)


def fast_runtime(fast: bool, device: Any):
    """The :class:`~stylemapgan.nn.runtime.RuntimeOptions` ``--fast`` means on ``device``
    (:meth:`RuntimeOptions.fastest`, as ``serve --fast``), or None (plain float32)."""
    if not fast:
        return None
    import torch

    from stylemapgan.nn.runtime import RuntimeOptions

    return RuntimeOptions.fastest(torch.device(device))


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (by default existing files are never touched)")


def int_in(lo: int, hi: int | None = None, want: str | None = None):
    """An argparse type: an integer in lo..hi (no upper bound when ``hi`` is None)."""
    if want is None:
        want = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return v

    return parse


def float_in(lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
             hi_open: bool = False):
    """An argparse type: a finite number in [lo, hi] (``lo_open``/``hi_open``: that end
    excluded). NaN and infinities are always refused."""
    if math.isinf(lo) and math.isinf(hi):
        want = "a finite number"
    elif math.isinf(hi):
        want = f"a number {'>' if lo_open else '>='} {lo:g}"
    elif math.isinf(lo):
        want = f"a number {'<' if hi_open else '<='} {hi:g}"
    else:
        want = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        inside = (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
        if not math.isfinite(v) or not inside:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return v

    return parse


positive_int = int_in(1)
nonneg_int = int_in(0)
#: a seed for torch / numpy generators
seed_int = int_in(0, 2**63 - 1, want="a non-negative integer below 2**63")
finite_float = float_in()
nonneg_float = float_in(0.0)
positive_float = float_in(0.0, lo_open=True)
#: a threshold on values in [0, 1]: 0 would select everything
unit_threshold = float_in(0.0, 1.0, lo_open=True)
#: a share of something, less than all of it
fraction = float_in(0.0, 1.0, hi_open=True)


# --------------------------------------------------------------------------- writing outputs
_HELD: set[str] = set()  # output folders this process holds the lock of


def _command_line(args: argparse.Namespace, out: str) -> str:
    words = ["stylemapgan", str(getattr(args, "command", "") or "")]
    if getattr(args, "operation", None):
        words.append(str(args.operation))
    return " ".join([*(w for w in words if w), "--out", out])


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike[str], command: str = "stylemapgan") -> Iterator[Path]:
    """Hold ``folder``'s lock (:func:`stylemapgan.files.folder_lock`) while a command writes
    into it. Re-entrant within a process (``edit replay`` runs the recorded edit into the
    same folder). A folder this call created is removed again when the command fails before
    writing anything into it."""
    from stylemapgan.files import folder_lock

    path = Path(folder)
    key = os.path.realpath(path)
    if key in _HELD:
        yield path
        return
    created = not path.exists()
    ok = False
    try:
        with folder_lock(path, command):
            _HELD.add(key)
            try:
                yield path
                ok = True
            finally:
                _HELD.discard(key)
    finally:
        if created and not ok:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty


def writes_folder(run: Callable[..., int], attr: str = "out"):
    """Wrap a command's ``run(args, **kwargs)`` so that it holds the lock of the output folder
    ``args.<attr>`` for as long as it runs; a second process writing there is refused at once
    with a one-line :class:`~stylemapgan.files.FolderBusyError`."""

    @functools.wraps(run)
    def locked(args: argparse.Namespace, **kwargs: Any) -> int:
        out = str(getattr(args, attr))
        if not out.strip():  # "" would silently mean the current folder
            from stylemapgan.errors import InputError

            raise InputError(f"--{attr.replace('_', '-')} is empty; give the output folder, e.g. "
                             f"--{attr.replace('_', '-')} out")
        with output_folder(out, _command_line(args, out)):
            return run(args, **kwargs)

    return locked
