"""Training: configuration and overrides, distributed setup, seeded sampling, the loss stages
(pure functions in :mod:`.losses`), training checkpoints and the loop (:class:`Trainer`)."""

from stylemapgan.training.loop import *  # noqa: F403
from stylemapgan.training.loop import __all__  # noqa: F401
