"""``stylemapgan.ops`` moved to :mod:`stylemapgan.nn.ops`; this name keeps working."""

from stylemapgan.nn.ops import *  # noqa: F403
