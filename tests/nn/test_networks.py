import pytest
import torch

from conftest import assert_close_to_scale, make_model
from stylemapgan.config import PRESETS, ModelConfig, get_preset
from stylemapgan.nn.networks import Discriminator, Encoder, Generator, StyleMapGAN, count_parameters


@pytest.mark.parametrize("name", list(PRESETS))
def test_shapes_of_every_preset(name):
    """Every size/stylemap combination of the presets, on the meta device (shapes only)."""
    cfg = PRESETS[name]
    with torch.device("meta"):
        g, e, d = Generator(cfg), Encoder(cfg), Discriminator(cfg)
        w = torch.empty(2, *cfg.stylemap_shape)
        styles = g.pyramid(w)
        img = g.synthesize(styles)
        assert g.mapping(torch.empty(2, cfg.stylemap_channels)).shape == w.shape
        assert e(img).shape == w.shape
        assert d(img).shape == (2, 1)
    assert img.shape == (2, 3, cfg.size, cfg.size)
    assert [s.shape[-1] for s in styles] == cfg.style_resolutions()
    assert [s.shape[1] for s in styles] == [cfg.style_channels(r) for r in cfg.style_resolutions()]


@pytest.mark.parametrize("size, smap", [(32, 1), (32, 2), (32, 4), (64, 8), (64, 32), (128, 16)])
def test_shapes_of_small_models_for_real(size, smap):
    cfg = ModelConfig(size=size, stylemap_size=smap, stylemap_channels=4, mapping_layers=2,
                      channel_cap=8)
    model = StyleMapGAN(cfg)
    x = torch.rand(2, 3, size, size) * 2 - 1
    w = model.project(x)
    assert w.shape == (2, 4, smap, smap)
    assert model.reconstruct(x).shape == x.shape
    assert Discriminator(cfg)(x).shape == (2, 1)


@pytest.mark.parametrize("name, g, e, d", [
    ("official-256", 79_744_323, 17_617_600, 28_864_129),
    ("official-256-light", 26_066_243, 17_617_600, 28_864_129),
    ("official-1024-16x16-light", 21_243_619, 12_784_224, 29_012_513),
    ("official-1024-32x32-light", 18_594_403, 7_802_464, 29_012_513),
])
def test_parameter_counts_equal_the_reference(name, g, e, d):
    cfg = get_preset(name)
    with torch.device("meta"):
        assert count_parameters(Generator(cfg)) == g
        assert count_parameters(Encoder(cfg)) == e
        assert count_parameters(Discriminator(cfg)) == d


def test_determinism_and_batch_independence(tiny_config):
    a, b = make_model(tiny_config, seed=3), make_model(tiny_config, seed=3)
    z = torch.randn(4, tiny_config.stylemap_channels)
    with torch.no_grad():
        ya, yb = a.generator.generate(z), b.generator.generate(z)
        assert torch.equal(ya, yb)
        y1 = a.generator.generate(z[:1])
    # float32 rounding differs with the batch size (oneDNN picks other kernels); outputs reach ~25
    assert_close_to_scale(y1, ya[:1], 1e-5, "batch of 1 vs batch of 4")
    assert not torch.equal(ya[0], ya[1])


def test_pieces_compose(tiny_model):
    g = tiny_model.generator
    z = torch.randn(2, tiny_model.config.stylemap_channels)
    with torch.no_grad():
        w = g.mapping(z)
        assert torch.equal(g.synthesize(g.pyramid(w)), g(w))
        assert torch.equal(g.generate(z), g(w))


def test_truncation(tiny_model):
    g = tiny_model.generator
    z = torch.randn(3, tiny_model.config.stylemap_channels)
    with torch.no_grad():
        w = g.mapping(z)
        assert torch.equal(g.truncate(w, 1.0), w)
        mean = g.mean_stylemap.expand_as(w)
        assert torch.allclose(g.truncate(w, 0.0), mean)
        assert torch.allclose(g.truncate(w, 0.5), (w + mean) / 2, atol=1e-6)
    fresh = Generator(tiny_model.config)
    assert not fresh.has_mean_stylemap()
    with pytest.raises(RuntimeError, match="mean stylemap"):
        fresh.truncate(w, 0.7)
    fresh.update_mean_stylemap(num_samples=100, batch_size=33)
    assert fresh.has_mean_stylemap()


def test_discriminator_handles_any_batch(tiny_config):
    d = Discriminator(tiny_config)
    for n in (1, 2, 3, 5, 6, 8):
        assert d(torch.randn(n, 3, 32, 32)).shape == (n, 1)


def test_bad_inputs_get_clear_errors(tiny_model):
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        tiny_model.encoder(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="mapping expects z"):
        tiny_model.generator.mapping(torch.randn(1, 5))
    with pytest.raises(ValueError, match="stylemaps of shape"):
        tiny_model.generator(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="expects 6 stylemaps"):
        tiny_model.generator.synthesize([torch.randn(1, 8, 8, 8)])


def test_gradients_flow_to_every_parameter(tiny_config):
    model = StyleMapGAN(tiny_config)
    d = Discriminator(tiny_config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = d(model.reconstruct(x)).sum() + model.generator.generate(torch.randn(2, 8)).square().mean()
    loss.backward()
    for name, p in [*model.named_parameters(), *d.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
