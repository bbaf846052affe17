"""``stylemapgan.perceptual`` moved to :mod:`stylemapgan.nn.perceptual`; this name keeps working."""

from stylemapgan.nn.perceptual import *  # noqa: F403
