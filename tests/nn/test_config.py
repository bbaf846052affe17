import pytest

from stylemapgan.config import PRESETS, ModelConfig, get_preset
from stylemapgan.errors import ConfigError


def test_presets_are_valid_and_round_trip():
    for name, cfg in PRESETS.items():
        assert ModelConfig.from_json(cfg.to_json()) == cfg, name
        assert len(cfg.style_resolutions()) == cfg.num_styles
        assert cfg.style_resolutions()[-1] == cfg.size


def test_official_channel_table():
    cfg = get_preset("official-256")
    assert [cfg.channels(r) for r in (1, 4, 8, 32, 64, 128, 256)] == [512] * 5 + [256, 128]
    assert cfg.num_styles == 12
    assert get_preset("official-1024-16x16-light").num_styles == 14
    assert get_preset("official-256-light").style_channels(128) == 64


@pytest.mark.parametrize("changes, match", [
    (dict(size=48), "power of two"),
    (dict(size=2048), "32..1024"),
    (dict(stylemap_size=3), "power of two"),
    (dict(stylemap_size=64), "1..32"),
    (dict(size=32, stylemap_size=32), "at most size/2"),
    (dict(normalization="group"), "normalization"),
    (dict(normalization="instance", stylemap_size=1), "instance"),
    (dict(channel_cap=0), "channel_cap"),
    (dict(mapping_layers=0), "mapping_layers"),
    (dict(mapping_lr_mul=0.0), "mapping_lr_mul"),
    (dict(size="256"), "integer"),
])
def test_invalid_configs_are_rejected(changes, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**changes)


def test_strict_json():
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"size": 64, "colour": 3})
    with pytest.raises(ConfigError, match="not JSON"):
        ModelConfig.from_json("{size")
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="unknown key"):
        PRESETS["tiny-32"].replace(foo=1)
