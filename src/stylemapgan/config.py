"""Model configuration: one frozen dataclass, validated on construction, with named presets.

The channel count of every layer comes from :meth:`ModelConfig.channels`, so a tiny test model
and the published 256 px model are the same code with different numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from stylemapgan.errors import ConfigError

Normalization = Literal["layer", "instance", "batch"]
NORMALIZATIONS: tuple[str, ...] = ("layer", "instance", "batch")

# Channels per resolution in the reference networks; ``cm`` is the channel multiplier.
# Resolutions below 64 (including the 1x1 .. 4x4 stylemaps) use 512 channels.
_WIDE = 512
_TABLE = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


#: Upper bounds of the integer fields (lower bound 1).
LIMITS = {"stylemap_channels": 4096, "mapping_layers": 64, "channel_multiplier": 16,
          "channel_cap": 8192}
MAX_LR_MUL = 100.0


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a StyleMapGAN model (generator, encoder and discriminator).

    Parameters
    ----------
    size:
        Image side in pixels, a power of two in 32..1024.
    stylemap_size:
        Side of the stylemap ``w``, a power of two in 1..32 and at most ``size``. 8 is the
        paper's recommended trade-off; 1 is its "StyleGAN2 + encoder" baseline.
    stylemap_channels:
        Channels of ``w`` and of the mapping network's hidden layers (64 in the paper).
    mapping_layers:
        Number of linear layers in the mapping network (the last one widens to the stylemap).
    mapping_lr_mul:
        Learning-rate multiplier of the mapping network (equalized learning rate).
    channel_multiplier:
        Widens layers at 64 px and above, as in StyleGAN2.
    channel_cap:
        Upper bound on every layer's channels; ``None`` keeps the reference table (max 512).
        Small values give cheap models for tests and CPU work.
    light:
        The reference's ``small_generator``: every per-layer stylemap keeps
        ``stylemap_channels`` channels instead of following the channel table.
    normalization:
        How a synthesis layer normalizes its input before spatial modulation.
    """

    size: int = 256
    stylemap_size: int = 8
    stylemap_channels: int = 64
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    channel_multiplier: int = 2
    channel_cap: int | None = None
    light: bool = False
    normalization: Normalization = "layer"

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid model config: {msg}")

        for name in ("size", "stylemap_size", "stylemap_channels", "mapping_layers",
                     "channel_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad(f"{name} must be an integer, got {value!r}")
        if not (_is_pow2(self.size) and 32 <= self.size <= 1024):
            raise bad(f"size must be a power of two in 32..1024, got {self.size}")
        if not (_is_pow2(self.stylemap_size) and self.stylemap_size <= 32):
            raise bad(f"stylemap_size must be a power of two in 1..32, got {self.stylemap_size}")
        if self.stylemap_size > self.size // 2:
            raise bad(f"stylemap_size {self.stylemap_size} must be at most size/2 "
                      f"({self.size // 2}): the encoder needs at least one downsampling block")
        # Upper bounds far above every published model (64 channels, 8 mapping layers,
        # multiplier 2, 512 channels), so a damaged or forged file cannot ask for terabytes.
        for name, hi in LIMITS.items():
            value = getattr(self, name)
            if name == "channel_cap" and value is None:
                continue
            if name == "channel_cap" and (not isinstance(value, int) or isinstance(value, bool)):
                raise bad(f"channel_cap must be a positive integer or null, got {value!r}")
            if not 1 <= value <= hi:
                raise bad(f"{name} must be in 1..{hi}, got {value}")
        lr = self.mapping_lr_mul
        if (not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr)
                or not 0 < lr <= MAX_LR_MUL):
            raise bad(f"mapping_lr_mul must be a number in (0, {MAX_LR_MUL:g}], got {lr!r}")
        if not isinstance(self.light, bool):
            raise bad(f"light must be true or false, got {self.light!r}")
        if self.normalization not in NORMALIZATIONS:
            raise bad(f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                      f"got {self.normalization!r}")
        if self.normalization == "instance" and self.stylemap_size == 1:
            raise bad("instance normalization needs a stylemap of at least 2x2 (a 1x1 "
                      "activation normalizes to zero); use layer normalization")

    # ----------------------------------------------------------------- derived quantities
    def channels(self, resolution: int) -> int:
        """Feature channels of the networks at ``resolution`` pixels."""
        base = _TABLE[resolution] * self.channel_multiplier if resolution in _TABLE else _WIDE
        return base if self.channel_cap is None else min(base, self.channel_cap)

    def style_channels(self, resolution: int) -> int:
        """Channels of the per-layer stylemap (W+) at ``resolution``."""
        return self.stylemap_channels if self.light else self.channels(resolution)

    @property
    def num_doublings(self) -> int:
        """Synthesis residual blocks: one per doubling from the stylemap to the image."""
        return int(math.log2(self.size // self.stylemap_size))

    @property
    def num_styles(self) -> int:
        """Number of per-layer stylemaps (length of the W+ pyramid)."""
        return 2 * self.num_doublings + 2

    def style_resolutions(self) -> list[int]:
        """Resolution of every W+ stylemap, in consumption order."""
        s = self.stylemap_size
        out = [s, s]
        for i in range(1, self.num_doublings + 1):
            out += [s * 2**i, s * 2**i]
        return out

    @property
    def stylemap_shape(self) -> tuple[int, int, int]:
        return (self.stylemap_channels, self.stylemap_size, self.stylemap_size)

    # ----------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Strict inverse of :meth:`to_dict`: unknown keys are an error, missing keys default."""
        if not isinstance(data, dict):
            raise ConfigError(f"invalid model config: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"invalid model config: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid model config: not JSON ({exc})") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"invalid model config: unknown key(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # The published configurations (reference checkpoints convert into these).
    "official-256": ModelConfig(size=256, stylemap_size=8),
    "official-256-light": ModelConfig(size=256, stylemap_size=8, light=True),
    "official-1024-16x16-light": ModelConfig(size=1024, stylemap_size=16, light=True),
    "official-1024-32x32-light": ModelConfig(size=1024, stylemap_size=32, light=True),
    # Small models for CPU training and experiments.
    "small-64": ModelConfig(size=64, stylemap_size=8, stylemap_channels=32, mapping_layers=4,
                            channel_cap=128, light=True),
    "small-128": ModelConfig(size=128, stylemap_size=8, stylemap_channels=64, mapping_layers=8,
                             channel_cap=256),
    # Tiny models for tests: a forward pass costs milliseconds.
    "tiny-32": ModelConfig(size=32, stylemap_size=8, stylemap_channels=8, mapping_layers=2,
                           channel_cap=16),
    "tiny-32-light": ModelConfig(size=32, stylemap_size=4, stylemap_channels=8, mapping_layers=2,
                                 channel_cap=16, light=True),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None
