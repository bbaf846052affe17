"""The ``stylemapgan`` command: a subcommand per task. ``main(argv)`` runs in-process (tests).

Each subcommand lives in ``stylemapgan.commands.<name>`` with ``register(subparsers)``; the
parser is built by :func:`stylemapgan.commands.build_parser`. Nothing in the package imports
this module: it is the entry point only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from stylemapgan.commands import COMMANDS, build_parser
from stylemapgan.errors import StyleMapGANError

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except StyleMapGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
