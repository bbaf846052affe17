"""The model contract for every preset in ``stylemapgan.config.PRESETS`` (as diffusers'
``ModelTesterMixin`` does for its models): output shapes, determinism (same seed, same weights
and outputs) and the model file's save/load round trip.

The presets that run in well under a second on a busy CPU (``RUN``: tiny-32, tiny-32-light,
small-64) are built, run, saved and loaded. The others are not run: one 128 px pass of small-128
takes seconds on such a CPU and a 1024 px pass close to a minute, and an official-256 model file
is 390 MB. They are built on the meta device, where their output shapes are traced and their
construction is checked to be deterministic, and the four official ones' parameter shapes are
checked against the reference's published key/shape list
(``tests/fixtures/official_state_dict_shapes.json``) through the converter's key map.
"""

import json

import pytest
import torch

from conftest import FIXTURES, make_model
from stylemapgan.config import PRESETS
from stylemapgan.formats.checkpoint import (
    load_model,
    read_model_metadata,
    reference_key_map,
    save_model,
)
from stylemapgan.nn.networks import Discriminator, StyleMapGAN

RUN = ("tiny-32", "tiny-32-light", "small-64")
NOT_RUN = tuple(name for name in PRESETS if name not in RUN)
#: The published shape list's name for each official preset.
OFFICIAL = {"official-256": "256_8x8", "official-256-light": "256_8x8_light",
            "official-1024-16x16-light": "1024_16x16_light",
            "official-1024-32x32-light": "1024_32x32_light"}
BATCH = 2


def _inputs(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(BATCH, 3, config.size, config.size, generator=g) * 2 - 1
    z = torch.randn(BATCH, config.stylemap_channels, generator=g)
    return images, z


def _outputs(model, images, z):
    with torch.no_grad():
        w = model.project(images)
        return {"w": w, "reconstruction": model.generator(w), "generated": model.generator.generate(z)}


def test_the_presets_are_split_between_run_and_not_run():
    assert set(RUN) <= set(PRESETS) and set(OFFICIAL) <= set(NOT_RUN)
    assert set(RUN) | set(NOT_RUN) == set(PRESETS)


@pytest.mark.parametrize("name", RUN)
def test_output_shapes(name):
    config = PRESETS[name]
    model = make_model(config)
    images, z = _inputs(config)
    out = _outputs(model, images, z)
    assert out["w"].shape == (BATCH, *config.stylemap_shape)
    assert out["reconstruction"].shape == images.shape
    assert out["generated"].shape == images.shape
    with torch.no_grad():
        assert Discriminator(config)(images).shape == (BATCH, 1)
    for what, t in out.items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), f"{name}: {what}"


@pytest.mark.parametrize("name", NOT_RUN)
def test_output_shapes_traced_on_the_meta_device(name):
    config = PRESETS[name]
    with torch.device("meta"):
        model = StyleMapGAN(config)
        images = torch.empty(1, 3, config.size, config.size)
        w = model.project(images)
        reconstruction = model.generator(w)
        generated = model.generator.mapping(torch.empty(1, config.stylemap_channels))
        logits = Discriminator(config)(images)
    assert w.shape == (1, *config.stylemap_shape)
    assert reconstruction.shape == images.shape
    assert generated.shape == w.shape
    assert logits.shape == (1, 1)


@pytest.mark.parametrize("name", RUN)
def test_same_seed_same_weights_and_outputs(name):
    config = PRESETS[name]
    a, b, other = make_model(config, seed=7), make_model(config, seed=7), make_model(config, seed=8)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    images, z = _inputs(config)
    out_a, out_b, out_other = (_outputs(m, images, z) for m in (a, b, other))
    for what in out_a:
        assert torch.equal(out_a[what], out_b[what]), f"{name}: {what} differs between two builds"
        assert not torch.equal(out_a[what], out_other[what]), f"{name}: {what} ignores the seed"
    # The same model twice on the same input: no hidden state between calls.
    again = _outputs(a, images, z)
    assert all(torch.equal(out_a[k], again[k]) for k in out_a)


@pytest.mark.parametrize("name", NOT_RUN)
def test_same_seed_same_parameter_shapes_without_running(name):
    config = PRESETS[name]
    with torch.device("meta"):
        a, b = StyleMapGAN(config), StyleMapGAN(config)
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    assert shapes_a == {k: tuple(v.shape) for k, v in b.state_dict().items()}


@pytest.mark.parametrize("name", RUN)
def test_save_load_round_trip(name, tmp_path):
    config = PRESETS[name]
    model = make_model(config, seed=3)
    path = save_model(model, tmp_path / f"{name}.safetensors", provenance={"source": "contract"})
    loaded = load_model(path)
    assert loaded.config == config and not loaded.training
    assert read_model_metadata(path)["provenance"]["source"] == "contract"
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    for k in saved:
        assert torch.equal(saved[k], back[k]), f"{name}: {k} changed in the round trip"
    images, z = _inputs(config, seed=1)
    before, after = _outputs(model, images, z), _outputs(loaded, images, z)
    for what in before:
        assert torch.equal(before[what], after[what]), f"{name}: {what} changed in the round trip"
    with pytest.raises(FileExistsError):
        save_model(model, path)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_parameter_shapes_equal_the_published_list(name):
    published = json.loads((FIXTURES / "official_state_dict_shapes.json").read_text())[OFFICIAL[name]]
    config = PRESETS[name]
    with torch.device("meta"):
        model = StyleMapGAN(config)
        nets = {"generator": (model.generator, "g_ema"), "encoder": (model.encoder, "e_ema"),
                "discriminator": (Discriminator(config), "discriminator")}
    key_maps = reference_key_map(config)
    for net, (module, ref_name) in nets.items():
        ours = {k: list(v.shape) for k, v in module.state_dict().items() if k != "mean_stylemap"}
        key_map, kernels = key_maps[net]
        assert set(ours) == set(key_map), f"{name}: {net} keys"
        expected = {key_map[k]: ([1, *s] if key_map[k].endswith(".conv.weight") else s)
                    for k, s in ours.items()}
        expected.update({k: [4, 4] for k in kernels})
        assert expected == published[ref_name], f"{name}: {net} shapes differ from the reference"
