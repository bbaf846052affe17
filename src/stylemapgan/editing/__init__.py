"""Editing: the stylemap arithmetic of the paper (:mod:`.operations`: local editing in W and
W+, style mixing, interpolation, transplantation, directions and the receptive-field
footprints), the one editing engine (:class:`Editor` in :mod:`.editor`, with its projection
cache), learned directions (:mod:`.directions`, learned from example files by
:func:`~.directions.learn_direction`), the avatar demo (:mod:`.demo`) and edit records
(:mod:`.record`).

Layer: above the networks, the file formats and :mod:`stylemapgan.imaging`; below the
command line, the web editor and the metrics. Nothing here imports training, the CLI or the web.
"""

from stylemapgan.editing.editor import Editor, RefineResult, content_key, refine_stylemaps
from stylemapgan.editing.operations import *  # noqa: F403
from stylemapgan.editing.operations import __all__ as _ops_all

__all__ = ["Editor", "RefineResult", "content_key", "refine_stylemaps", *_ops_all]
