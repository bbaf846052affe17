"""``stylemapgan.layers`` moved to :mod:`stylemapgan.nn.layers`; this name keeps working."""

from stylemapgan.nn.layers import *  # noqa: F403
