"""Import of reference checkpoints: key/shape mapping from the published list, numerical
parity with an independent implementation of the reference, and refusals."""

import argparse
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, TINY_REF_ARGS, assert_close_to_scale, reference_checkpoint
from refimpl import build_reference
from stylemapgan.cli import main
from stylemapgan.config import get_preset
from stylemapgan.errors import ModelFileError
from stylemapgan.formats.checkpoint import (
    convert_reference,
    convert_reference_file,
    load_model,
    read_reference_checkpoint,
    reference_key_map,
)

FIXTURE = FIXTURES / "official_state_dict_shapes.json"
OFFICIAL = {
    "256_8x8": ("official-256", dict(size=256, latent_spatial_size=8, small_generator=False)),
    "256_8x8_light": ("official-256-light", dict(size=256, latent_spatial_size=8, small_generator=True)),
    "1024_16x16_light": ("official-1024-16x16-light", dict(size=1024, latent_spatial_size=16, small_generator=True)),
    "1024_32x32_light": ("official-1024-32x32-light", dict(size=1024, latent_spatial_size=32, small_generator=True)),
}
COMMON = dict(latent_channel_size=64, mapping_layer_num=8, lr_mul=0.01, channel_multiplier=2,
              normalize_mode="LayerNorm", dataset="celeba_hq")


def official_args(key):
    return {**COMMON, **OFFICIAL[key][1]}


def test_refimpl_layout_equals_published_key_list():
    """The test-side reference implementation has exactly the published keys and shapes."""
    shapes = json.loads(FIXTURE.read_text())
    for key in OFFICIAL:
        with torch.device("meta"):
            g, e, d = build_reference(official_args(key))
        for net, name in ((g, "g_ema"), (e, "e_ema"), (d, "discriminator")):
            assert {k: list(v.shape) for k, v in net.state_dict().items()} == shapes[key][name]


@pytest.mark.parametrize("key", list(OFFICIAL))
def test_fake_checkpoint_from_published_shapes_converts(key, tmp_path):
    """A checkpoint built only from the published key/shape list converts, every tensor lands
    where it belongs, and the train_args select the right preset."""
    shapes = json.loads(FIXTURE.read_text())[key]
    gen = torch.Generator().manual_seed(0)
    ckpt = {}
    for net, entries in shapes.items():
        ckpt[net] = {}
        for k, shape in entries.items():
            if k.endswith("kernel"):
                k4 = torch.tensor([1.0, 3, 3, 1])
                k4 = torch.outer(k4, k4) / 64
                up = k.startswith("decoder.") and ("convs_latent" in k or ".convs." in k)
                ckpt[net][k] = k4 * (4 if up else 1)
            else:
                ckpt[net][k] = torch.randn(shape, generator=gen) * 0.1
    ckpt["train_args"] = argparse.Namespace(**official_args(key))
    model, disc, prov = convert_reference(ckpt, "fake.pt", with_discriminator=True)
    assert model.config == get_preset(OFFICIAL[key][0])
    assert prov["train_dataset"] == "celeba_hq"
    maps = reference_key_map(model.config)
    for ours_net, ref_net, module in (("generator", "g_ema", model.generator),
                                      ("encoder", "e_ema", model.encoder),
                                      ("discriminator", "discriminator", disc)):
        state = module.state_dict()
        for ours, ref in maps[ours_net][0].items():
            assert torch.equal(state[ours].flatten(), ckpt[ref_net][ref].flatten()), (ours, ref)
    assert model.generator.has_mean_stylemap()


PARITY_CASES = {
    "tiny-layer": (dict(TINY_REF_ARGS), 16),
    "tiny-light-4x4": ({**TINY_REF_ARGS, "small_generator": True, "latent_spatial_size": 4}, 16),
    "tiny-1x1-baseline": ({**TINY_REF_ARGS, "latent_spatial_size": 1}, 16),
    "tiny-instance": ({**TINY_REF_ARGS, "normalize_mode": "InstanceNorm2d", "latent_spatial_size": 2}, 16),
    "tiny-batchnorm-64": ({**TINY_REF_ARGS, "normalize_mode": "BatchNorm2d", "size": 64}, 16),
    "official-256": ({**official_args("256_8x8")}, None),
}


def _parity(train_args, cap, tmp_path, n=2, legacy=True):
    ckpt, (g, e, _) = reference_checkpoint(train_args, cap)
    src = tmp_path / "ref.pt"
    torch.save(ckpt, src, _use_new_zipfile_serialization=not legacy)
    dst = tmp_path / "model.safetensors"
    if cap is None:
        assert main(["convert", str(src), str(dst)]) == 0
    else:  # reference train_args cannot express a channel cap: give the config explicitly
        from stylemapgan.formats.checkpoint import config_from_reference_args, save_model

        cfg = config_from_reference_args(train_args).replace(channel_cap=cap)
        model, _, prov = convert_reference(read_reference_checkpoint(src), str(src), config=cfg)
        save_model(model, dst, provenance=prov)
    model = load_model(dst)
    torch.manual_seed(7)
    z = torch.randn(n, train_args["latent_channel_size"])
    x = torch.rand(n, 3, train_args["size"], train_args["size"]) * 2 - 1
    # The reference's BatchNorm2d, like ours, uses running statistics in eval mode.
    g.eval(), e.eval()
    with torch.no_grad():
        pairs = {
            "generation": (g(z), model.generator.generate(z)),
            "projection": (e(x), model.project(x)),
            "reconstruction": (g.decoder(e(x)), model.reconstruct(x)),
        }
    for what, (ref, ours) in pairs.items():
        assert ref.shape == ours.shape
        assert ref.abs().max() > 0.05  # a meaningful signal, not all zeros
        assert_close_to_scale(ours, ref, 3e-5, what)


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_converted_checkpoint_reproduces_reference_outputs(case, tmp_path):
    args, cap = PARITY_CASES[case]
    _parity(args, cap, tmp_path, n=1 if cap is None else 2, legacy=case != "tiny-layer")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["256_8x8_light", "1024_16x16_light", "1024_32x32_light"])
def test_converted_official_checkpoint_parity_slow(key, tmp_path):
    _parity(official_args(key), None, tmp_path, n=1)


def test_convert_cli_and_provenance(tmp_path, capsys):
    args = {**TINY_REF_ARGS, "size": 32, "latent_spatial_size": 16}  # uncapped: 512 channels
    ckpt, _ = reference_checkpoint(args, with_optim=False)
    src = tmp_path / "ref.pt"
    torch.save(ckpt, src)
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["info", str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["stylemap_size"] == 16 and info["config"]["channel_cap"] is None
    prov = info["provenance"]
    assert prov["source"] == "reference-checkpoint" and prov["train_dataset"] == "tiny"
    assert prov["source_file"] == "ref.pt" and len(prov["source_sha256"]) == 64
    # The same weights forced into a config they do not fit: one line naming the file.
    assert main(["convert", str(src), str(tmp_path / "bad.safetensors"), "--preset", "tiny-32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ref.pt" in err and "wrong shape" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "bad.safetensors").exists()


def test_refusals(tmp_path, capsys):
    ckpt, _ = reference_checkpoint(TINY_REF_ARGS, 16)
    src = tmp_path / "ref.pt"
    torch.save(ckpt, src)
    cfg = get_preset("tiny-32")

    # truncated file
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(src.read_bytes()[: os.path.getsize(src) // 2])
    with pytest.raises(ModelFileError, match=r"trunc\.pt.*truncated"):
        read_reference_checkpoint(trunc)
    legacy = tmp_path / "legacy.pt"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    trunc2 = tmp_path / "trunc_legacy.pt"
    trunc2.write_bytes(legacy.read_bytes()[: os.path.getsize(legacy) // 2])
    with pytest.raises(ModelFileError, match=r"trunc_legacy\.pt"):
        read_reference_checkpoint(trunc2)

    # arbitrary pickled objects are never unpickled
    evil = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "payload": Path("/etc/passwd")}, evil)
    with pytest.raises(ModelFileError, match="refused for safety"):
        read_reference_checkpoint(evil)

    # not a reference checkpoint
    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, other)
    with pytest.raises(ModelFileError, match="no g_ema, e_ema"):
        convert_reference_file(other, tmp_path / "x.safetensors")
    plain = tmp_path / "plain.pt"
    torch.save(torch.zeros(3), plain)
    with pytest.raises(ModelFileError, match="not a dict"):
        convert_reference_file(plain, tmp_path / "x.safetensors")
    with pytest.raises(ModelFileError, match="not found"):
        read_reference_checkpoint(tmp_path / "nothing.pt")
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match=r"text\.pt is not a readable"):
        read_reference_checkpoint(text)

    # wrong architecture: a light config for non-light weights
    with pytest.raises(ModelFileError, match="do not match the reference architecture"):
        convert_reference(ckpt, "ref.pt", config=cfg.replace(light=True))
    # unknown normalization and missing train_args
    bad_args = dict(ckpt, train_args=argparse.Namespace(**{**TINY_REF_ARGS, "normalize_mode": "GroupNorm"}))
    with pytest.raises(ModelFileError, match="GroupNorm"):
        convert_reference(bad_args, "ref.pt")
    no_args = {k: v for k, v in ckpt.items() if k != "train_args"}
    with pytest.raises(ModelFileError, match="--preset"):
        convert_reference(no_args, "ref.pt")
    model, _, _ = convert_reference(no_args, "ref.pt", config=cfg)
    assert model.config == cfg

    # CLI: existing output is not replaced without --overwrite
    dst = tmp_path / "exists.safetensors"
    dst.write_bytes(b"keep me")
    assert main(["convert", str(src), str(dst), "--preset", "tiny-32"]) == 1
    assert dst.read_bytes() == b"keep me"
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--preset", "tiny-32", "--overwrite"]) == 0


def test_pickle_protocol_objects_inside_train_args_are_refused(tmp_path):
    class Sneaky:
        def __reduce__(self):
            return (print, ("owned",))

    ckpt, _ = reference_checkpoint(TINY_REF_ARGS, 16, with_optim=False)
    ckpt["train_args"].evil = Sneaky()
    src = tmp_path / "sneaky.pt"
    with open(src, "wb") as f:
        torch.save(ckpt, f, pickle_module=pickle)
    with pytest.raises(ModelFileError, match="refused for safety"):
        read_reference_checkpoint(src)


# --------------------------------------------------------------------------- reliability
def test_garbage_named_safetensors_is_one_line_naming_the_file(tmp_path, capsys):
    # torch.load hands any name ending in .safetensors to safetensors, whose SafetensorError
    # used to escape as a traceback; the file is now read by its content.
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(bytes(range(256)) * 3)
    assert main(["convert", str(bad), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad} is not a readable PyTorch checkpoint"), err
    assert "download it again" in err and err.count("\n") == 1
    assert "Traceback" not in err and "SafetensorError" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_a_reference_checkpoint_named_safetensors_converts(tmp_path, capsys):
    ckpt, _ = reference_checkpoint(TINY_REF_ARGS, 16, with_optim=False)
    src = tmp_path / "ref.safetensors"
    torch.save(ckpt, src)
    assert main(["convert", str(src), str(tmp_path / "m.safetensors"), "--preset", "tiny-32"]) == 0
    assert load_model(tmp_path / "m.safetensors").config.size == 32


def test_safetensors_files_given_to_convert_say_what_to_do(tmp_path, tiny_model_file, capsys):
    assert main(["convert", str(tiny_model_file), str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "already a StyleMapGAN model file" in err and "--model" in err and err.count("\n") == 1
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    assert main(["convert", str(other), str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"{other} is a safetensors file, not a torch.save checkpoint" in err
    assert ".pt" in err and err.count("\n") == 1
    assert main(["convert", str(tmp_path), str(tmp_path / "m.safetensors")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_random_bytes_are_unreadable_not_unsafe(tmp_path):
    bad = tmp_path / "noise.pt"
    bad.write_bytes(bytes(range(256)) * 3)
    with pytest.raises(ModelFileError, match=r"noise\.pt is not a readable PyTorch checkpoint"):
        read_reference_checkpoint(bad)


@pytest.mark.parametrize("page", [
    b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>",
    b"\n  <html lang='en'><body>Sorry, you can't view or download this file at this time.",
])
def test_a_saved_web_page_is_named_as_such(tmp_path, capsys, page):
    """A download tool that saved Google Drive's HTML page instead of the checkpoint (torch
    says "invalid load key, '<'"): convert says what happened and what to do."""
    bad = tmp_path / "celeba_hq_256_8x8.pt"
    bad.write_bytes(page + b"x" * 3000)
    assert main(["convert", str(bad), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad} is a web page (HTML), not a checkpoint"), err
    assert "Google Drive" in err and "invalid load key" in err and err.count("\n") == 1
    assert not (tmp_path / "out.safetensors").exists()
