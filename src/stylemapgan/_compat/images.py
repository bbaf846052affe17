"""``stylemapgan.images`` moved to :mod:`stylemapgan.imaging.images`; this name keeps working."""

from stylemapgan.imaging.images import *  # noqa: F403
