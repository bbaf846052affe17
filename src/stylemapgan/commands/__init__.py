"""Subcommands of the ``stylemapgan`` CLI, one module each with ``register(subparsers)``;
:func:`build_parser` puts them together (``stylemapgan.cli`` is the entry point)."""

from __future__ import annotations

import argparse
import importlib

from stylemapgan import __version__

COMMANDS = ("generate", "info", "convert", "prepare-data", "export-onnx", "train", "export", "weights", "evaluate", "make-avatars", "serve", "align", "project", "edit", "direction", "demo")

DESCRIPTION = """\
StyleMapGAN: project real images into spatial stylemaps in one forward pass and edit them.

Run `stylemapgan COMMAND --help` for the options and an example of each command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
