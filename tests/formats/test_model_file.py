import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from conftest import make_model
from stylemapgan.config import PRESETS
from stylemapgan.errors import ModelFileError
from stylemapgan.files import atomic_write
from stylemapgan.formats.checkpoint import load_model, read_model_metadata, save_model


def test_save_load_gives_bit_identical_outputs(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "m.safetensors", provenance={"source": "unit"})
    loaded = load_model(path)
    assert loaded.config == tiny_model.config
    assert loaded.provenance["source"] == "unit"
    for (k, a), (k2, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    z = torch.randn(2, 8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tiny_model.generator.generate(z, 0.7), loaded.generator.generate(z, 0.7))
        assert torch.equal(tiny_model.reconstruct(x), loaded.reconstruct(x))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_light_and_batchnorm_models_round_trip(tmp_path):
    cfg = PRESETS["tiny-32-light"].replace(normalization="batch")
    model = make_model(cfg)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    w = torch.randn(2, *cfg.stylemap_shape)
    with torch.no_grad():
        assert torch.equal(model.generator(w), loaded.generator(w))


def test_save_computes_missing_mean_and_refuses_overwrite(tmp_path, tiny_config):
    from stylemapgan.nn.networks import StyleMapGAN

    model = StyleMapGAN(tiny_config)
    path = save_model(model, tmp_path / "m.safetensors")
    assert load_model(path).generator.has_mean_stylemap()
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_model(model, path)
    assert path.read_bytes() == before
    save_model(model, path, overwrite=True)


def test_atomic_write_leaves_target_untouched_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_errors_name_the_file(tmp_path, tiny_model_file, tiny_model):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.safetensors")

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_model_file.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match=r"truncated\.safetensors.*truncated"):
        load_model(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a model at all")
    with pytest.raises(ModelFileError, match="garbage.safetensors"):
        load_model(garbage)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelFileError, match="not a StyleMapGAN model"):
        load_model(foreign)

    # Right format, wrong config: the weights are for tiny-32, the metadata says light.
    mismatched = tmp_path / "mismatched.safetensors"
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    meta = {"format": "stylemapgan-model", "format_version": "1",
            "config": PRESETS["tiny-32-light"].to_json(), "provenance": "{}"}
    save_file(state, str(mismatched), metadata=meta)
    with pytest.raises(ModelFileError, match=r"mismatched\.safetensors: weights do not match"):
        load_model(mismatched)

    newer = tmp_path / "newer.safetensors"
    save_file(state, str(newer), metadata={**meta, "config": tiny_model.config.to_json(),
                                           "format_version": "99"})
    with pytest.raises(ModelFileError, match="newer"):
        load_model(newer)

    badcfg = tmp_path / "badcfg.safetensors"
    save_file(state, str(badcfg), metadata={**meta, "config": json.dumps({"size": 33})})
    with pytest.raises(ModelFileError, match=r"badcfg\.safetensors: invalid model config"):
        read_model_metadata(badcfg)


def test_corrupted_weights_with_intact_header(tmp_path, tiny_model_file):
    data = bytearray(tiny_model_file.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    start = 8 + header_len
    data[start: start + 4] = struct.pack("<f", float("nan"))
    bad = tmp_path / "nan.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        load_model(bad)
