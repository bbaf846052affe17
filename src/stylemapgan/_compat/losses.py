"""``stylemapgan.losses`` moved to :mod:`stylemapgan.training.losses`; this name keeps working."""

from stylemapgan.training.losses import *  # noqa: F403
