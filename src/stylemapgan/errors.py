"""Exceptions with messages meant for users: one line naming what is wrong and how to fix it."""


class StyleMapGANError(Exception):
    """Base class: the CLI prints these as one-line errors and exits non-zero."""


class ConfigError(StyleMapGANError, ValueError):
    """An invalid model, training or command configuration."""


class ModelFileError(StyleMapGANError):
    """A model file or reference checkpoint that cannot be used."""


class InputError(StyleMapGANError, ValueError):
    """Unusable user input: an image, a mask, a number out of range."""
