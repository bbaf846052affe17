"""``stylemapgan.editor`` moved to :mod:`stylemapgan.editing.editor`; this name keeps working."""

from stylemapgan.editing.editor import *  # noqa: F403
