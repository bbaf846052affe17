"""The ``stylemapgan`` command: a subcommand per task. ``main(argv)`` runs in-process (tests).

Each subcommand lives in ``stylemapgan.commands.<name>`` with ``register(subparsers)``; the
parser is built by :func:`stylemapgan.commands.build_parser`. Nothing in the package imports
this module: it is the entry point only.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away is found here, not at exit
        return rc
    except BrokenPipeError:
        # `stylemapgan info | head`: the reader closed the pipe; stop quietly, and make the
        # interpreter's last flush at exit go nowhere instead of raising again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    except StyleMapGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A full or read-only disk met by a write that did not say so itself: still one line.
        from stylemapgan.files import disk_write_error

        mapped = disk_write_error(exc)
        if mapped is None:
            raise
        print(f"error: {mapped}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
