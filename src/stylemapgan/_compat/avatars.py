"""``stylemapgan.avatars`` moved to :mod:`stylemapgan.data.avatars`; this name keeps working."""

from stylemapgan.data.avatars import *  # noqa: F403
