"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import os
import textwrap


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


def add_model(p: argparse.ArgumentParser) -> None:
    """--model, optional: commands call :func:`resolve_model` on the value."""
    p.add_argument("--model", default=None, type=abspath,
                   help="model file (.safetensors); default: the embedded 64 px avatar model")


def resolve_model(value: str | None) -> str:
    """The --model value, or the embedded default model when it was not given."""
    if value:
        return value
    from stylemapgan.formats.checkpoint import default_model_path

    return str(default_model_path())


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default: auto)")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (by default existing files are never touched)")


def int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in lo..hi (no upper bound when ``hi`` is None)."""
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


def float_in(lo: float = -math.inf, hi: float = math.inf):
    """An argparse type: a finite number in [lo, hi]."""
    if math.isinf(lo) and math.isinf(hi):
        want = "a finite number"
    elif math.isinf(hi):
        want = f"a number >= {lo:g}"
    else:
        want = f"a number in [{lo:g}, {hi:g}]"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return v

    return parse


positive_int = int_in(1)
nonneg_int = int_in(0)
finite_float = float_in()
nonneg_float = float_in(0.0)
