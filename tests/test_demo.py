"""stylemapgan demo: the main operations on the packaged avatar gallery."""

import numpy as np
import pytest
import torch
from PIL import Image

from stylemapgan.cli import main
from stylemapgan.config import ModelConfig
from stylemapgan.formats.checkpoint import save_model
from stylemapgan.nn.networks import StyleMapGAN


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    cfg = ModelConfig(size=64, stylemap_size=8, stylemap_channels=4, mapping_layers=2,
                      channel_cap=8, light=True)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "tiny64.safetensors"
    save_model(StyleMapGAN(cfg), path)
    return path


def test_demo_writes_every_output(tmp_path, tiny64, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny64), "--out", str(out), "--device", "cpu"]) == 0
    for name in ("reconstruction.png", "local_edit.png", "interpolation.png",
                 "interpolation.gif", "style_mix.png"):
        assert (out / name).stat().st_size > 0, name
    grid = np.asarray(Image.open(out / "local_edit.png"))
    assert grid.shape[1] == 4 * 64 + 3 * 2  # source, reference, mask, result
    assert "reconstruction MSE" in capsys.readouterr().out
    before = (out / "style_mix.png").read_bytes()
    assert main(["demo", "--model", str(tiny64), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "style_mix.png").read_bytes() == before


def test_demo_refuses_a_model_of_another_size(tmp_path, tiny_model_file, capsys):
    assert main(["demo", "--model", str(tiny_model_file), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "64 px" in err
