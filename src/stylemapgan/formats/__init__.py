"""Files the package reads and writes that hold networks or stylemaps: model files and the
reference checkpoint converter (:mod:`.checkpoint`), saved stylemaps (:mod:`.stylemaps`) and the
third-party perceptual/FID weights cache (:mod:`.weights`, which reads the third-party files with
:mod:`.safe_unpickle` and converts them with :mod:`.weight_convert`).

Every format is a safetensors file tagged with a format name and version, read and written
through :mod:`stylemapgan.files`.
"""

from stylemapgan.formats.checkpoint import default_model_path, load_model, save_model
from stylemapgan.formats.stylemaps import SavedStylemap, load_stylemap, save_stylemap

__all__ = ["SavedStylemap", "default_model_path", "load_model", "load_stylemap", "save_model",
           "save_stylemap"]
