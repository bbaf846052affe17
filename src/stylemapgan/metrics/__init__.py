"""The paper's metrics (FID, FID of interpolations, reconstruction MSE/LPIPS, local-editing
MSE_src/MSE_ref, a detectability proxy, runtime): :mod:`.scores`.

Edits are made with the same functions as the editor (:mod:`stylemapgan.editing`); metrics
never import training, the command line or the web editor.
"""

from stylemapgan.metrics.scores import *  # noqa: F403
from stylemapgan.metrics.scores import __all__  # noqa: F401
