"""``stylemapgan.runtime`` moved to :mod:`stylemapgan.nn.runtime`; this name keeps working."""

from stylemapgan.nn.runtime import *  # noqa: F403
