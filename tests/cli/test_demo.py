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
    _every_grid_is_labelled(out)
    printed = capsys.readouterr().out
    assert "reconstruction MSE" in printed
    _style_mix_rows_are_labelled(out)
    _project_reports_the_demos_mse(tmp_path, tiny64, printed, capsys)
    before = (out / "style_mix.png").read_bytes()
    assert main(["demo", "--model", str(tiny64), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "style_mix.png").read_bytes() == before


def test_demo_refuses_a_model_of_another_size(tmp_path, tiny_model_file, capsys):
    assert main(["demo", "--model", str(tiny_model_file), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "64 px" in err




def _every_grid_is_labelled(out):
    """reconstruction.png names its two rows on the left; local_edit.png names its four
    columns and interpolation.png its two ends in a band on top (dark text on white)."""
    rec = np.asarray(Image.open(out / "reconstruction.png").convert("L"))
    margin = rec.shape[1] - (8 * 64 + 7 * 2)
    assert rec.shape[0] == 2 * 64 + 2 and margin > 5
    for row in range(2):
        assert rec[row * 66: row * 66 + 64, :margin].min() < 100, f"row {row} has no label"
    edit = np.asarray(Image.open(out / "local_edit.png").convert("L"))
    band = edit.shape[0] - (8 * 64 + 7 * 2)
    assert band > 5
    for col in range(4):
        assert edit[:band, col * 66: col * 66 + 64].min() < 100, f"column {col} has no label"
    lerp = np.asarray(Image.open(out / "interpolation.png").convert("L"))
    band = lerp.shape[0] - 64
    assert band > 5
    labelled = [lerp[:band, c * 66: c * 66 + 64].min() < 100 for c in range(8)]
    assert labelled == [True] + [False] * 6 + [True]  # A ... B


def _style_mix_rows_are_labelled(out):
    """style_mix.png's rows are labelled (A, B, result) in a margin on the left."""
    mix = np.asarray(Image.open(out / "style_mix.png").convert("L"))
    margin = mix.shape[1] - (4 * 64 + 3 * 2)
    assert mix.shape[0] == 3 * 64 + 2 * 2 and margin > 5
    for row in range(3):
        assert mix[row * 66: row * 66 + 64, :margin].min() < 100, f"row {row} has no label"


def _project_reports_the_demos_mse(tmp_path, model, printed, capsys):
    """`project` on the demo's eight gallery avatars reports the MSE `demo` printed, and
    project.json's MSE describes the PNG it wrote: the clamped reconstruction (the untrained
    test model's outputs leave [-1, 1] often, so the unclamped MSE would differ)."""
    import json
    import re

    from stylemapgan.data.avatars import gallery_dir

    demo_mse = float(re.search(r"reconstruction MSE .*?: ([0-9.]+)", printed)[1])
    avatars = sorted((gallery_dir() / "test").glob("*.png"))
    assert len(avatars) == 8
    out = tmp_path / "proj"
    assert main(["project", *map(str, avatars), "--save-input", "--model", str(model),
                 "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads((out / "project.json").read_text())
    assert abs(record["mean_mse"] - demo_mse) < 1e-4, (record["mean_mse"], demo_mse)
    assert f"mean MSE {demo_mse:.4f}" in capsys.readouterr().out
    assert "clamped" in record["mse"]
    for entry in record["images"]:
        png = np.asarray(Image.open(out / f"{entry['name']}.png"), dtype=np.float64) / 127.5 - 1
        x = np.asarray(Image.open(out / f"{entry['name']}.input.png"), dtype=np.float64) / 127.5 - 1
        # The PNG's own error, up to its 8-bit rounding.
        assert abs(((png - x) ** 2).mean() - entry["mse"]) < 2e-4, entry["name"]
