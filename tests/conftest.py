"""Shared test helpers and fixtures, for every folder under tests/.

The test folders mirror the package (tests/editing, tests/training, tests/web, ...); none has an
``__init__.py``, so pytest's default ``prepend`` import mode puts this folder on ``sys.path``
(``from conftest import ...``, ``import refimpl``, ``import weights_fixture`` work from any
depth) and imports each test file by its basename: test file names must be unique across
folders (tests/test_layering.py checks it). Paths go through the constants below, never
``Path(__file__).parent``, so a file can move between folders.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylemapgan.config import PRESETS
from stylemapgan.nn.networks import StyleMapGAN

#: tests/, the repository root, the fixture files, and the one real photo the tests use.
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
PHOTO = FIXTURES / "photos" / "astronaut-256.jpg"


def smooth_photo(width, height, seed=0, cells=(5, 7), resample=Image.Resampling.BICUBIC, noise=0):
    """A smooth, photo-like RGB picture (uint8, height x width x 3) of any shape: random colours
    on a ``cells`` (rows, columns) grid resampled up, plus grain in [-noise, noise] when asked
    (what a photo is, to a resampler or a codec). The same arguments give the same pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (*cells, 3), dtype=np.uint8)
    big = np.array(Image.fromarray(small).resize((width, height), resample))
    if noise:
        grain = rng.integers(-noise, noise + 1, big.shape)
        big = np.clip(big.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    return big


def write_images(folder, n=10, size=40, corrupt=0):
    """``n`` random RGB PNGs (size x size, image i drawn from seed i) in ``folder``, plus
    ``corrupt`` unreadable .jpg files: a training or validation set."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
    for i in range(corrupt):
        (folder / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


# Tiny reference train_args (the naver-ai/StyleMapGAN names) for conversion tests.
TINY_REF_ARGS = dict(size=32, latent_spatial_size=8, latent_channel_size=8, mapping_layer_num=2,
                     lr_mul=0.01, channel_multiplier=2, normalize_mode="LayerNorm",
                     small_generator=False, dataset="tiny", iter=10, batch=4)


def assert_close_to_scale(actual, expected, rtol, what="outputs"):
    """Two float computations of the same values agree to ``rtol`` times the largest magnitude
    of ``expected``: max |actual - expected| <= rtol * max |expected|.

    Float32 kernels that sum in different orders (oneDNN's AVX2 and AVX-512 paths, batched and
    single passes, folded and unfolded scales, ONNX Runtime and PyTorch) differ by rounding
    errors that grow with the size of the terms summed, i.e. with the outputs' scale, not with
    each element's own value: an element near 0 inside an output reaching 12 carries the
    rounding of the large terms that cancelled to give it. So the tolerance is relative to
    the tensor's magnitude, never a fixed absolute number.
    """
    a = torch.as_tensor(actual).detach().double()
    e = torch.as_tensor(expected).detach().double()
    assert a.shape == e.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(e.shape)}"
    scale = e.abs().max().item()
    diff = (a - e).abs().max().item()
    if os.environ.get("STYLEMAPGAN_TEST_REPORT_TOLERANCES"):
        print(f"\n[tolerance] {what}: max |diff| {diff:.3g}, scale {scale:.3g}, "
              f"diff/scale {diff / max(scale, 1e-300):.3g} (allowed {rtol:g})")
    assert diff <= rtol * scale, (f"{what}: max |diff| {diff:.3g} > {rtol:g} x max |expected| "
                                  f"{scale:.3g} (= {rtol * scale:.3g})")


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_config():
    return PRESETS["tiny-32"]


def make_model(config, seed=0):
    torch.manual_seed(seed)
    model = StyleMapGAN(config).eval()
    # Non-trivial biases and constants, so a mix-up of keys cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.generator.update_mean_stylemap(num_samples=512)
    return model


@pytest.fixture
def tiny_model(tiny_config):
    return make_model(tiny_config)


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    from stylemapgan.formats.checkpoint import save_model

    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(make_model(PRESETS["tiny-32"]), path, provenance={"source": "test"})
    return path


def reference_checkpoint(train_args, cap=None, seed=0, with_optim=True):
    """A checkpoint dict in the reference layout with random, non-trivial weights."""
    from refimpl import build_reference

    torch.manual_seed(seed)
    g, e, d = build_reference(train_args, cap)
    with torch.no_grad():
        for m in (g, e, d):
            for name, p in m.named_parameters():
                if name.endswith("bias") or name.endswith("input"):
                    p.add_(0.1 * torch.randn_like(p))
    ckpt = {
        "generator": g.state_dict(), "discriminator": d.state_dict(), "encoder": e.state_dict(),
        "g_ema": g.state_dict(), "e_ema": e.state_dict(),
        "train_args": argparse.Namespace(**train_args),
    }
    if with_optim:
        ckpt["g_optim"] = torch.optim.Adam(g.parameters()).state_dict()
    return ckpt, (g, e, d)


def faces_or_skip():
    """The faces module (dlib and its landmark model), or skip the test that needs it."""
    pytest.importorskip("dlib", reason='needs the faces extra: pip install -e ".[faces]"')
    from stylemapgan.imaging import faces

    try:
        faces.predictor_path()
    except faces.FacesUnavailable as exc:
        pytest.skip(str(exc))
    return faces
