"""``stylemapgan.images`` moved to :mod:`stylemapgan.imaging.images`; this name keeps working."""

from stylemapgan.imaging.images import *  # noqa: F403
from stylemapgan.imaging.placement import *  # noqa: F403  (fitting and paste-back lived here)
