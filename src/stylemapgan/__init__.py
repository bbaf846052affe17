"""StyleMapGAN: spatial stylemaps for real-time projection and local editing of real images.

The package is layered, bottom to top (checked by the import contracts in pyproject.toml):

- :mod:`.config`, :mod:`.errors`, :mod:`.files` (atomic writes, checksums, tagged safetensors
  files), :mod:`.utils`
- :mod:`.nn`: ops, layers, the networks, perceptual/FID networks, fast inference, ONNX export
- :mod:`.imaging`: image files, placement of a photo in the model's square and back, masks
- :mod:`.formats`: model files, saved stylemaps, third-party weights
- :mod:`.editing`: the stylemap arithmetic, the :class:`~stylemapgan.editing.Editor` engine,
  directions and edit records
- :mod:`.data`, :mod:`.metrics`, :mod:`.training`
- :mod:`.web` (the editor's server), :mod:`.commands` and :mod:`.cli` (the command line)
"""

from stylemapgan.config import PRESETS, ModelConfig, get_preset
from stylemapgan.errors import ConfigError, InputError, ModelFileError, StyleMapGANError

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConfigError",
    "InputError",
    "ModelConfig",
    "ModelFileError",
    "StyleMapGANError",
    "__version__",
    "get_preset",
]
