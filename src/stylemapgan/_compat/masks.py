"""``stylemapgan.masks`` moved to :mod:`stylemapgan.imaging.masks`; this name keeps working."""

from stylemapgan.imaging.masks import *  # noqa: F403
