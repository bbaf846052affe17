"""Training and evaluation data: image datasets from LMDB, folders and zip archives
(:mod:`.datasets`, entry point :func:`open_dataset`) and the avatar dataset
(:mod:`.avatars`)."""

from stylemapgan.data.datasets import *  # noqa: F403
from stylemapgan.data.datasets import __all__  # noqa: F401
