"""``stylemapgan.checkpoint`` moved to :mod:`stylemapgan.formats.checkpoint`; this name keeps working."""

from stylemapgan.formats.checkpoint import *  # noqa: F403
