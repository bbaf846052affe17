"""``stylemapgan.weights`` moved to :mod:`stylemapgan.formats.weights`; this name keeps working."""

from stylemapgan.formats.weights import *  # noqa: F403
