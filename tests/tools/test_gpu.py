"""GPU tests (marked ``gpu``): they skip without a CUDA device.

``tools/gpu_check.sh`` runs them on a GPU machine. ``STYLEMAPGAN_GPU_TEST_DEVICE=cpu`` runs the
same code on the CPU instead (``tools/gpu_check.sh --device cpu --quick`` does, inside the
default suite, so this file cannot rot unnoticed); the cases that exist only on CUDA (float16,
CUDA graphs) skip there. Each fast-inference case prints its PSNR against float32 (``-s``).
"""

import json
import os

import pytest
import torch

from stylemapgan.config import PRESETS
from stylemapgan.formats.checkpoint import default_model_path, load_model
from stylemapgan.nn.runtime import RuntimeOptions, prepare, psnr
from stylemapgan.training import (
    LOSS_NAMES,
    DistInfo,
    TrainConfig,
    Trainer,
    list_checkpoints,
    model_from_checkpoint,
    read_checkpoint,
)

pytestmark = pytest.mark.gpu

DEVICE_ENV = "STYLEMAPGAN_GPU_TEST_DEVICE"
TINY = PRESETS["tiny-32"]


@pytest.fixture
def device():
    name = os.environ.get(DEVICE_ENV, "cuda")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device(name)


@pytest.fixture
def exact_float32():
    """Full float32 matmuls and convolutions on CUDA (no TF32) while a test compares numbers."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _needs_cuda(device, what):
    if device.type != "cuda":
        pytest.skip(f"{what} is CUDA-only")


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, n=16, size=32, seed=0):
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def _trainer(device, run_dir=None, resume=False, **kw):
    from stylemapgan.nn.perceptual import LPIPS

    cfg = TrainConfig(**{**dict(iterations=3, batch_size=4, r1_interval=2, workers=0,
                                val_images=0, image_every=0, val_every=0, log_every=1,
                                perceptual="none", amp="off"), **kw})
    return Trainer(TINY, cfg, TensorImages(), run_dir, dist_info=DistInfo(device=device),
                   perceptual=LPIPS.random_init("tiny", seed=0).to(device), resume=resume)


def _params(module):
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- G and E
def test_generator_and_encoder_match_the_cpu(device, exact_float32):
    model = load_model(default_model_path())  # the shipped weights, not a random init
    x = torch.rand(4, 3, model.config.size, model.config.size,
                   generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(4, model.config.stylemap_channels, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        w_cpu = model.encoder(x)
        rec_cpu = model.generator(w_cpu)
        sample_cpu = model.generator(model.generator.mapping(z))
    on = model.to(device)
    with torch.inference_mode():
        w_dev = on.encoder(x.to(device))
        rec_dev = on.generator(w_dev)
        sample_dev = on.generator(on.generator.mapping(z.to(device)))
    # Other convolution algorithms round differently (about 1e-6 per layer); a wrong kernel or
    # layout is off by 0.1 and more.
    torch.testing.assert_close(w_dev.cpu(), w_cpu, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(rec_dev.cpu(), rec_cpu, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(sample_dev.cpu(), sample_cpu, rtol=1e-3, atol=2e-3)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("amp", ["fp16", "bf16", "off"])
def test_training_steps_change_the_weights_and_stay_finite(device, amp):
    if amp == "fp16":
        _needs_cuda(device, "float16 training")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    tr = _trainer(device, amp=amp)
    assert (tr.scaler is not None) == (amp == "fp16")
    before = {name: _params(getattr(tr, name))
              for name in ("generator", "encoder", "discriminator", "g_ema", "e_ema")}
    seen = set()
    for _ in range(3):  # step 0 and 2 carry the lazy R1 (interval 2)
        values = tr.train_step()
        bad = {k: v.item() for k, v in values.items() if not torch.isfinite(v)}
        assert not bad, bad
        seen |= set(values)
    assert seen == set(LOSS_NAMES)  # all six terms, R1 and the perceptual one included
    for name, old in before.items():
        new = _params(getattr(tr, name))
        assert all(torch.isfinite(v).all() for k, v in new.items() if "mean_stylemap" not in k)
        changed = [k for k in old if not torch.equal(old[k], new[k])]
        assert changed, f"{name} did not change under amp={amp}"
    if tr.scaler is not None:
        scale = tr.scaler.get_scale()
        assert 0 < scale < float("inf")


def test_resume_on_the_device_continues_the_run(device, tmp_path, exact_float32):
    kw = dict(iterations=4, checkpoint_every=2, r1_interval=3)
    straight = _trainer(device, tmp_path / "a", **kw)
    straight.train()
    first = _trainer(device, tmp_path / "b", **{**kw, "iterations": 2})
    first.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2]
    resumed = _trainer(device, tmp_path / "b", resume=True, **kw)
    assert resumed.step == 2 and resumed.resumed_from is not None
    assert next(resumed.generator.parameters()).device.type == device.type
    resumed.train()
    # On the CPU bit for bit (tests/training/test_training.py holds the exact CPU resume test). cuDNN
    # may pick other, equally valid algorithms in the resumed process, and Adam turns a
    # rounding difference in a near-zero gradient into a full step, so on CUDA each tensor
    # must agree as a whole (relative L2 distance), not element by element.
    for name in ("generator", "encoder", "discriminator", "g_ema", "e_ema"):
        a, b = _params(getattr(straight, name)), _params(getattr(resumed, name))
        for k in a:
            if device.type == "cpu":
                assert torch.equal(a[k].nan_to_num(), b[k].nan_to_num()), f"{name}.{k}"
            elif a[k].is_floating_point() and a[k].isfinite().all():
                dist = (a[k].double() - b[k].double()).norm().item()
                assert dist <= 1e-3 * a[k].double().norm().item() + 1e-6, f"{name}.{k}: {dist}"
    logs = [[json.loads(x)["losses"] for x in (tmp_path / r / "log.jsonl").read_text().splitlines()
             if "losses" in json.loads(x)] for r in ("a", "b")]
    assert len(logs[0]) == len(logs[1]) == 4
    for la, lb in zip(*logs, strict=True):
        for k in la:
            assert lb[k] == pytest.approx(la[k], rel=1e-3, abs=1e-4), k
    # A checkpoint written on the device loads on the CPU (as `stylemapgan export` does).
    tensors, state = read_checkpoint(list_checkpoints(tmp_path / "b")[-1][1])
    model = model_from_checkpoint(tensors, state)
    assert next(model.parameters()).device.type == "cpu"


# --------------------------------------------------------------------------- fast inference
FAST_PATHS = {
    "float16": (RuntimeOptions(precision="float16"), 30.0),
    "bfloat16": (RuntimeOptions(precision="bfloat16"), 25.0),
    "float32 channels-last": (RuntimeOptions(channels_last=True), 60.0),
    "float16 channels-last": (RuntimeOptions(precision="float16", channels_last=True), 30.0),
    "float16 compiled": (RuntimeOptions(precision="float16", channels_last=True, compile=True),
                         30.0),
    "float16 CUDA graphs": (RuntimeOptions(precision="float16", channels_last=True,
                                           cuda_graphs=True), 30.0),
    "float32 CUDA graphs": (RuntimeOptions(channels_last=True, cuda_graphs=True), 60.0),
}


@pytest.mark.parametrize("name", list(FAST_PATHS))
def test_fast_inference_paths_against_float32(device, exact_float32, name):
    options, min_db = FAST_PATHS[name]
    if options.precision == "float16" or options.cuda_graphs:
        _needs_cuda(device, name)
    if options.compile and device.type != "cuda":
        pytest.skip("compiling is timed on the GPU only (slow to build on the CPU)")
    model = load_model(default_model_path())
    ref = prepare(model, device)
    runner = prepare(model, device, options)
    size = model.config.size
    xs = [torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(i)) * 2 - 1
          for i in range(3)]
    with torch.inference_mode():
        want = [ref.reconstruct(x) for x in xs]
        got = [runner.reconstruct(x) for x in xs]  # compiled / graph paths: later calls replay
    assert all(g.dtype == torch.float32 and g.shape == w.shape for g, w in zip(got, want, strict=True))
    # Every result still holds its own input's images (a replay must not overwrite them).
    db = min(psnr(g, w) for g, w in zip(got, want, strict=True))
    print(f"\n[fast path] {name} on {device}: PSNR {db:.1f} dB against float32")
    assert db >= min_db, f"{name}: {db:.1f} dB < {min_db} dB"
