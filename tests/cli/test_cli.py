import json

import numpy as np
import pytest
import torch
from PIL import Image

from stylemapgan.cli import main
from stylemapgan.errors import ConfigError, InputError
from stylemapgan.formats.checkpoint import load_model
from stylemapgan.utils import cpu_name, parse_seeds, resolve_device


def test_help_lists_commands_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("generate", "info", "convert"):
        assert cmd in out
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_generate_writes_pngs_and_grid_deterministically(tmp_path, tiny_model_file, capsys):
    out = tmp_path / "samples"
    args = ["generate", "--model", str(tiny_model_file), "--seeds", "0-2,7", "--truncation", "0.7",
            "--out", str(out), "--device", "cpu", "--batch-size", "3"]
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    img = np.asarray(Image.open(out / "seed0001.png"))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    # Same seed, different batch composition -> the same image.
    again = tmp_path / "again"
    assert main(["generate", "--model", str(tiny_model_file), "--seeds", "1", "--truncation", "0.7",
                 "--out", str(again), "--no-grid"]) == 0
    assert np.abs(np.asarray(Image.open(again / "seed0001.png")).astype(int) - img).max() <= 1
    # The image is what the library produces for that seed.
    model = load_model(tiny_model_file)
    z = torch.randn((1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.generator.generate(z, 0.7)
    ref = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.abs(ref.astype(int) - img).max() <= 1
    capsys.readouterr()


def test_generate_refuses_to_overwrite(tmp_path, tiny_model_file, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "seed0000.png").write_bytes(b"mine")
    assert main(["generate", "--model", str(tiny_model_file), "--seeds", "0-1", "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "seed0000.png").read_bytes() == b"mine"
    assert not (out / "seed0001.png").exists()
    assert main(["generate", "--model", str(tiny_model_file), "--seeds", "0-1", "--out", str(out),
                 "--overwrite"]) == 0


@pytest.mark.parametrize("extra, code, msg", [
    (["--seeds", "5-1"], 2, "end is before"),
    (["--seeds", "a-b"], 2, "bad seeds"),
    (["--device", "tpu"], 2, "device"),
])
def test_generate_bad_values(tmp_path, tiny_model_file, capsys, extra, code, msg):
    args = ["generate", "--model", str(tiny_model_file), "--out", str(tmp_path / "o"), *extra]
    assert main(args) == code
    err = capsys.readouterr().err
    assert msg in err and err.startswith("error:")


def test_argparse_rejects_bad_numbers(tmp_path, tiny_model_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tiny_model_file), "--out", str(tmp_path), "--truncation", "nan"])
    assert e.value.code == 2
    assert "truncation" in capsys.readouterr().err


@pytest.mark.parametrize("argv, usage", [
    (["edit", "local", "a.png", "b.png", "--out", "o", "--bogus"], "usage: stylemapgan edit local "),
    (["info", "--bogus"], "usage: stylemapgan info "),
])
def test_an_unknown_option_is_reported_by_its_subcommand(argv, usage, capsys):
    """The subcommand's usage (its options), not the top-level one, and exit status 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert err.rstrip().endswith("error: unrecognized arguments: --bogus"), err


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: model file {tmp_path / 'nope.safetensors'} not found\n"


def test_info(tiny_model_file, capsys):
    assert main(["info", str(tiny_model_file)]) == 0
    out = capsys.readouterr().out
    assert "stylemap_size" in out and "generator" in out and "source" in out
    assert main(["info", str(tiny_model_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"]["generator"] == 58_475
    assert info["config"]["size"] == 32


def test_parse_seeds_and_devices():
    assert parse_seeds("0-3,10, 12") == [0, 1, 2, 3, 10, 12]
    with pytest.raises(InputError):
        parse_seeds("")
    with pytest.raises(InputError):
        parse_seeds("-3")
    with pytest.raises(InputError, match="too many"):
        parse_seeds("0-1000000")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


def test_cpu_name_is_the_model_name(tmp_path, monkeypatch):
    import stylemapgan.utils as utils

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000\n")
    real_path = utils.Path
    monkeypatch.setattr(utils, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo"
                        else real_path(p))
    assert cpu_name() == "Example CPU 9000"
    monkeypatch.setattr(utils, "Path", lambda p: real_path(tmp_path / "missing"))
    assert cpu_name()  # falls back to what platform knows, never empty


def test_installed_console_script(tmp_path, tiny_model_file):
    import shutil
    import subprocess

    exe = shutil.which("stylemapgan")
    assert exe, "the console script is not installed"
    r = subprocess.run([exe, "info", str(tiny_model_file)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "parameters" in r.stdout
    r = subprocess.run([exe, "info", str(tmp_path / "missing.safetensors")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
