"""Subcommands of the ``stylemapgan`` CLI, one module each with ``register(subparsers)``;
:func:`build_parser` puts them together (``stylemapgan.cli`` is the entry point)."""

from __future__ import annotations

import argparse
import importlib

from stylemapgan import __version__

COMMANDS = ("generate", "info", "convert", "prepare-data", "export-onnx", "train", "export", "weights", "evaluate", "make-avatars", "serve", "align", "regions", "project", "edit", "direction", "demo")

DESCRIPTION = """\
StyleMapGAN: project real images into spatial stylemaps in one forward pass and edit them.

Run `stylemapgan COMMAND --help` for the options and an example of each command.

Exit status: 0 done; 2 the command as typed (an option, a value or an input file is wrong, an
output cannot be written, or the output folder is busy); 1 files already on disk (an output
already exists: pass --overwrite; `edit replay --strict` found a different output);
130 interrupted."""


class _Parser(argparse.ArgumentParser):
    """An unrecognized option is reported by the subcommand it was given to, with that
    subcommand's usage (argparse reports it with the top-level usage)."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            parser: argparse.ArgumentParser = self
            while True:  # down the chosen subcommands: edit -> edit local
                sub = next((a for a in parser._actions  # argparse has no public list
                            if isinstance(a, argparse._SubParsersAction)), None)
                name = getattr(ns, sub.dest, None) if sub is not None else None
                if name not in (sub.choices if sub is not None else {}):
                    break
                parser = sub.choices[name]
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stylemapgan", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stylemapgan {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v: info, -vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"stylemapgan.commands.{name.replace('-', '_')}").register(sub)
    return parser
