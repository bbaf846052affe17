"""``stylemapgan.stylemaps`` moved to :mod:`stylemapgan.formats.stylemaps`; this name keeps working."""

from stylemapgan.formats.stylemaps import *  # noqa: F403
