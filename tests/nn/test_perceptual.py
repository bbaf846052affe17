"""LPIPS / Inception architecture and the weight readers, without the real weights."""

import io
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stylemapgan.errors import InputError, ModelFileError, StyleMapGANError
from stylemapgan.files import read_tagged
from stylemapgan.formats import safe_unpickle, weight_convert, weights
from stylemapgan.nn.perceptual import BACKBONES, LPIPS, FIDInception, InceptionFeatures


def reference_lpips(lp: LPIPS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A plain float64 LPIPS straight from the definition (per image, per layer loops)."""
    sd = {k: v.double() for k, v in lp.state_dict().items()}
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    out = []
    for i in range(x.shape[0]):
        feats = []
        for img in (x[i: i + 1], y[i: i + 1]):
            h = (img.double() - shift) / scale
            taps = []
            for j, layer in enumerate(BACKBONES[lp.net].layers[: max(lp.spec.taps) + 1]):
                if layer[0] == "conv":
                    h = F.conv2d(h, sd[f"features.{j}.weight"], sd[f"features.{j}.bias"],
                                 stride=layer[4], padding=layer[5])
                elif layer[0] == "relu":
                    h = h.clamp_min(0)
                else:
                    h = F.max_pool2d(h, layer[1], layer[2])
                if j in lp.spec.taps:
                    taps.append(h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10))
            feats.append(taps)
        total = 0.0
        for k, (a, b) in enumerate(zip(*feats, strict=True)):
            wk = sd[f"heads.{k}.weight"].flatten()
            total += ((a - b).square() * wk.view(1, -1, 1, 1)).sum(1).mean()
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("net, size", [("tiny", 16), ("alex", 40)])
def test_lpips_matches_plain_reference(net, size):
    lp = LPIPS.random_init(net, seed=1)
    torch.manual_seed(0)
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = torch.rand(2, 3, size, size) * 2 - 1
    torch.testing.assert_close(lp.double()(x.double(), y.double()), reference_lpips(lp, x, y),
                               rtol=1e-9, atol=1e-12)
    assert lp(x, y).dtype == torch.float64  # input converted to the module's dtype


def test_lpips_properties_and_gradients():
    lp = LPIPS.random_init("tiny", seed=0)
    torch.manual_seed(0)
    x = (torch.rand(3, 3, 16, 16) * 2 - 1).requires_grad_()
    y = torch.rand(3, 3, 16, 16) * 2 - 1
    d = lp(x, y)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(lp(y, x.detach()), d.detach())
    assert torch.allclose(lp(y, y), torch.zeros(3))
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lp.parameters())
    assert sum(len(layer) for layer in lp.layer_distances(x, y)) == 3 * len(lp.spec.taps)


def test_lpips_zero_features_give_finite_gradients():
    lp = LPIPS.random_init("tiny", seed=0)
    with torch.no_grad():  # a head channel whose features are always zero
        lp.features[0].weight.zero_()
        lp.features[0].bias.fill_(-1.0)
    x = torch.zeros(1, 3, 8, 8, requires_grad=True)
    lp(x, torch.ones(1, 3, 8, 8)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_lpips_rejects_bad_inputs():
    lp = LPIPS.random_init("alex", seed=0)
    with pytest.raises(InputError, match="too small"):
        lp(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(InputError, match="differ in shape"):
        lp(torch.zeros(1, 3, 32, 32), torch.zeros(2, 3, 32, 32))
    with pytest.raises(InputError, match=r"\[N, 3, H, W\]"):
        lp(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32))
    with pytest.raises(InputError, match="unknown LPIPS network"):
        LPIPS("resnet")


def test_loading_without_weights_names_the_fetch_command(tmp_path):
    with pytest.raises(StyleMapGANError, match="stylemapgan weights fetch"):
        weights.load_lpips("vgg", home=tmp_path)
    with pytest.raises(weights.WeightsMissingError, match="stylemapgan weights fetch"):
        weights.load_inception(home=tmp_path)
    with pytest.raises(InputError, match="no pretrained LPIPS weights for 'tiny'"):
        weights.load_lpips("tiny", home=tmp_path)


def test_from_state_builds_the_networks_and_refuses_misfits():
    lp = LPIPS.random_init("tiny", seed=2)
    back = LPIPS.from_state("tiny", lp.state_dict())
    assert not any(p.requires_grad for p in back.parameters()) and not back.training
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(back(x, y), lp(x, y), rtol=0, atol=0)
    bad = {k: v for k, v in lp.state_dict().items() if k != "heads.0.weight"}
    with pytest.raises(ModelFileError, match="LPIPS-tiny weights do not fit the network"):
        LPIPS.from_state("tiny", bad)
    with pytest.raises(ModelFileError, match="Inception weights do not fit the network"):
        InceptionFeatures.from_state({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)})


def test_stylemapgan_home_env(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEMAPGAN_HOME", str(tmp_path / "h"))
    assert weights.home_dir() == tmp_path / "h"
    assert weights.weights_dir() == tmp_path / "h" / "weights"
    monkeypatch.delenv("STYLEMAPGAN_HOME")
    assert weights.home_dir() == weights.Path.home() / ".cache" / "stylemapgan"


def _torchvision_style_files(tmp_path, lp):
    """Files as torchvision / lpips write them, from a random LPIPS."""
    feats = {f"features.{k}": v.clone() for k, v in lp.features.state_dict().items()}
    feats["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's head: ignored
    heads = {f"lin{k}.model.1.weight": h.weight.clone() for k, h in enumerate(lp.heads)}
    torch.save(feats, tmp_path / "alexnet-owt.pth")
    torch.save(heads, tmp_path / "alex.pth")
    return tmp_path / "alexnet-owt.pth", tmp_path / "alex.pth"


def test_import_torchvision_format_and_checksums(tmp_path):
    lp = LPIPS.random_init("alex", seed=3)
    backbone, heads = _torchvision_style_files(tmp_path, lp)
    home = tmp_path / "home"
    entry = weights.import_user_weights("lpips-alex", home=home, backbone=backbone, heads=heads)
    assert entry["source"]["kind"] == "user" and not entry["source"]["identical_to_pypi_weights"]
    loaded = weights.load_lpips("alex", home=home)
    assert loaded.weights_sha256 == entry["sha256"]
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 40, 40) * 2 - 1, torch.rand(2, 3, 40, 40) * 2 - 1
    torch.testing.assert_close(loaded(x, y), lp(x, y), rtol=0, atol=0)
    rows = {r["name"]: r for r in weights.list_weights(home, verify=True)}
    assert rows["lpips-alex"]["present"] and rows["lpips-alex"]["ok"]
    assert not rows["lpips-vgg"]["present"]
    # Converted files are tagged; the untagged files of earlier versions still load.
    path = weights.weights_dir(home) / "lpips-alex.safetensors"
    tagged = read_tagged(path, fmt="stylemapgan-weights", version=1, what="weights")
    assert tagged.version == 1 and json.loads(tagged.metadata["stylemapgan"])["name"] == "lpips-alex"
    save_file(lp.state_dict(), str(path), metadata={"stylemapgan": tagged.metadata["stylemapgan"]})
    manifest = weights.read_manifest(home)
    manifest["lpips-alex"]["sha256"] = weights.sha256_file(path)
    (weights.weights_dir(home) / weights.MANIFEST).write_text(json.dumps(manifest))
    torch.testing.assert_close(weights.load_lpips("alex", home=home)(x, y), lp(x, y), rtol=0, atol=0)
    # A file of another kind in the cache (with a matching checksum) names the fix.
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "stylemapgan-model",
                                                          "format_version": "1"})
    manifest["lpips-alex"]["sha256"] = weights.sha256_file(path)
    (weights.weights_dir(home) / weights.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(weights.WeightsCorruptError, match="not a converted weight file.*fetch --force"):
        weights.load_lpips("alex", home=home)
    # The same weights give the same bytes (the SHA-256 the FID statistics cache keys on).
    e1 = weights.store_weights("lpips-alex", lp.state_dict(), {"kind": "user"}, home)
    e2 = weights.store_weights("lpips-alex", lp.state_dict(), {"kind": "user"}, home)
    assert e1["sha256"] == e2["sha256"] == weights.sha256_file(path)
    # A damaged file is detected by its checksum.
    path = weights.weights_dir(home) / "lpips-alex.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsCorruptError, match="fetch --force"):
        weights.load_lpips("alex", home=home)


def test_import_rejects_wrong_files(tmp_path):
    torch.save({"features.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    lp = LPIPS.random_init("alex", seed=0)
    _, heads = _torchvision_style_files(tmp_path, lp)
    with pytest.raises(weights.WeightsCorruptError, match="does not fit"):
        weights.import_user_weights("lpips-alex", home=tmp_path / "h", backbone=tmp_path / "bad.pth",
                                    heads=heads)
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(InputError, match="not a readable torch state dict"):
        weights.import_user_weights("lpips-alex", home=tmp_path / "h", backbone=tmp_path / "text.pth",
                                    heads=heads)


def test_pytorch_fid_format_import(tmp_path):
    net = InceptionFeatures.random_init("inception", seed=0).net
    sd = dict(net.state_dict())
    for k in list(sd):  # pytorch-fid's file also has step counters and the classifier
        if k.endswith("running_var"):
            sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    torch.save(sd, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    home = tmp_path / "home"
    weights.import_user_weights("inception", home=home,
                                inception=tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    inc = weights.load_inception(home=home)
    assert inc.dim == 2048 and inc.input_size == 299
    loaded = inc.net.state_dict()
    assert loaded.keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_numpy_unpickler_refuses_other_globals():
    good = {"VGG16_0": {"Conv_0": {"kernel": np.ones((3, 3, 3, 4), np.float32)}}}
    loaded = safe_unpickle.load_numpy_pickle(pickle.dumps(good, protocol=3))
    np.testing.assert_array_equal(loaded["VGG16_0"]["Conv_0"]["kernel"], good["VGG16_0"]["Conv_0"]["kernel"])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(safe_unpickle.WeightsCorruptError, match="refusing"):
        safe_unpickle.load_numpy_pickle(pickle.dumps({"x": Evil()}))
    with pytest.raises(safe_unpickle.WeightsCorruptError, match="object array"):
        safe_unpickle.load_numpy_pickle(pickle.dumps({"x": np.array([1, "a"], dtype=object)}))


def test_flax_layout_conversion():
    lp = LPIPS.random_init("alex", seed=5)
    sd = lp.state_dict()
    conv_idx = [i for i, layer in enumerate(BACKBONES["alex"].layers) if layer[0] == "conv"]
    tree = {"AlexNet_0": {f"Conv_{j}": {"kernel": sd[f"features.{i}.weight"].permute(2, 3, 1, 0).numpy(),
                                        "bias": sd[f"features.{i}.bias"].numpy()}
                          for j, i in enumerate(conv_idx)}}
    for k in range(5):
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": sd[f"heads.{k}.weight"].permute(2, 3, 1, 0).numpy()}}
    tree = safe_unpickle.load_numpy_pickle(pickle.dumps(tree, protocol=3))  # through the safe reader
    state = weight_convert.lpips_from_flax(tree, None, "alex", "test")
    for k, v in sd.items():
        assert torch.equal(state[k], v), k
    heads = {k: v.clone() for k, v in state.items() if k.startswith("heads.")}
    heads["heads.0.weight"] += 1
    with pytest.raises(safe_unpickle.WeightsCorruptError, match="differs"):
        weight_convert.lpips_from_flax(tree, heads, "alex", "test")


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(6.0).view(2, 3))
        self.padding: list[int] = [1, 2]

    def forward(self, x):
        return x @ self.weight


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_torchscript_reader_without_running_code(tmp_path):
    m = torch.jit.script(_Block())
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    root = safe_unpickle.load_torchscript_objects(buf.getvalue(), "block.pt")
    assert torch.equal(root.weight, torch.arange(6.0).view(2, 3))
    assert list(root.padding) == [1, 2]
    with pytest.raises(safe_unpickle.WeightsCorruptError):
        safe_unpickle.load_torchscript_objects(b"not a zip", "x.pt")


def test_inception_features_resize_and_tiny():
    tiny = InceptionFeatures.random_init("tiny", seed=0)
    x = torch.rand(3, 3, 48, 48) * 2 - 1
    f = tiny(x)
    assert f.shape == (3, tiny.dim)
    small = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(f, tiny(small))
    with pytest.raises(InputError):
        tiny(torch.zeros(1, 1, 32, 32))


def test_fid_inception_architecture_shapes():
    with torch.device("meta"):
        net = FIDInception()
        out = net(torch.zeros(2, 3, 299, 299))
    assert out.shape == (2, 2048)
    assert sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers()) == 21_820_000  # fid-helper: 21,802,784 + BN scales
