"""StyleMapGAN: spatial stylemaps for real-time projection and local editing of real images."""

from .config import PRESETS, ModelConfig, get_preset
from .errors import ConfigError, InputError, ModelFileError, StyleMapGANError

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
