"""``stylemapgan.directions`` moved to :mod:`stylemapgan.editing.directions`; this name keeps working."""

from stylemapgan.editing.directions import *  # noqa: F403
