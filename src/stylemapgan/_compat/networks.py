"""``stylemapgan.networks`` moved to :mod:`stylemapgan.nn.networks`; this name keeps working."""

from stylemapgan.nn.networks import *  # noqa: F403
