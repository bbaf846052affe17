"""Fast paths against the float32 reference, and ONNX export checked with ONNX Runtime."""

import json

import pytest
import torch

from conftest import assert_close_to_scale, make_model
from stylemapgan.cli import main
from stylemapgan.config import PRESETS
from stylemapgan.editing.operations import local_edit_wplus
from stylemapgan.errors import ConfigError
from stylemapgan.nn.runtime import Runner, RuntimeOptions, fold_scales, prepare, psnr


@pytest.fixture
def model():
    return make_model(PRESETS["tiny-32"]).requires_grad_(False)


def test_fold_scales_keeps_outputs(model):
    import copy

    folded = fold_scales(copy.deepcopy(model))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert_close_to_scale(folded.reconstruct(x), model.reconstruct(x), 1e-5, "reconstruct")
        assert_close_to_scale(folded.generator.generate(z), model.generator.generate(z), 1e-5,
                              "generate")
    # every constant factor went into the weights
    for m in folded.modules():
        for name in ("scale", "lr_mul", "residual_gain"):
            assert getattr(m, name, 1.0) == 1.0, (m, name)
        if getattr(m, "activate", True):
            assert getattr(m, "act_gain", 1.0) == 1.0, m


def test_runner_caches_phase_kernels_of_its_own_copy(model):
    from stylemapgan.nn.layers import StyledConv

    runner = prepare(model, "cpu", RuntimeOptions(channels_last=True))
    ups = [m for m in runner.model.modules() if isinstance(m, StyledConv) and m.up]
    assert ups and all(m.phase_cache is not None for m in ups)
    assert all(m.phase_cache is None for m in model.modules() if isinstance(m, StyledConv))
    layer = ups[0].double()
    with pytest.raises(RuntimeError, match="clear_phase_kernels"):
        layer(torch.randn(1, layer.weight.shape[1], 4, 4, dtype=torch.float64),
              torch.randn(1, layer.gamma.weight.shape[1], 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("options, tol_db", [
    (RuntimeOptions(), 80.0),
    (RuntimeOptions(channels_last=True), 80.0),
    (RuntimeOptions(precision="bfloat16"), 25.0),
    (RuntimeOptions(precision="bfloat16", channels_last=True), 25.0),
])
def test_runner_matches_float32_reference(model, options, tol_db):
    runner = prepare(model, "cpu", options)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        ref_w = model.project(x)
        ref = model.reconstruct(x)
        w = runner.project(x)
        out = runner.reconstruct(x)
        styles = runner.pyramid(w)
        edit = runner.synthesize(local_edit_wplus(styles, styles, torch.ones(1, 1, 32, 32)))
    assert out.dtype == w.dtype == torch.float32
    assert out.shape == ref.shape and w.shape == ref_w.shape
    assert psnr(out, ref) >= tol_db
    assert psnr(edit, out) >= 80  # blending a pyramid with itself changes nothing
    # the original model is untouched by prepare()
    assert next(model.parameters()).dtype == torch.float32


def test_runner_rejects_impossible_options(model):
    with pytest.raises(ConfigError, match="CUDA graphs"):
        Runner(model, torch.device("cpu"), RuntimeOptions(cuda_graphs=True))
    with pytest.raises(ConfigError, match="bfloat16 on the CPU"):
        Runner(model, torch.device("cpu"), RuntimeOptions(precision="float16"))
    with pytest.raises(ConfigError, match="precision"):
        RuntimeOptions(precision="int8")


def test_psnr():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a + 0.02, a) - 10 * torch.log10(torch.tensor(4 / 0.0004)).item()) < 1e-6


def test_export_onnx_cli_and_runtime_check(tmp_path, tiny_model_file, capfd):
    import logging
    import warnings

    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    logged = []  # what PyTorch's exporter logs about its operator registry
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    handler = logging.Handler(logging.DEBUG)
    handler.emit = logged.append
    registry.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["export-onnx", "--model", str(tiny_model_file), "--out", str(out)]) == 0
    finally:
        registry.removeHandler(handler)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"encoder.onnx", "generator.onnx", "synthesis.onnx"}
    assert all(g["max_abs_diff_vs_pytorch"] <= 1e-3 for g in manifest["graphs"].values())
    printed = capfd.readouterr()
    assert "max |ONNX Runtime - PyTorch|" in printed.out
    # No noise from PyTorch's exporter: neither its torchvision log lines (torchvision is not
    # needed) nor its own deprecation warnings.
    assert "torchvision" not in printed.out + printed.err, printed.err
    assert not [r for r in logged if "torchvision" in r.getMessage()]
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert "Warning" not in printed.err, printed.err
    # An independent check at another batch size (the batch axis is dynamic).
    from stylemapgan.formats.checkpoint import load_model

    model = load_model(tiny_model_file)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        w = model.project(x)
        styles = model.generator.pyramid(w)
        ref_img = model.generator(w)
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    gen = ort.InferenceSession(str(out / "generator.onnx"), providers=["CPUExecutionProvider"])
    syn = ort.InferenceSession(str(out / "synthesis.onnx"), providers=["CPUExecutionProvider"])
    assert_close_to_scale(enc.run(None, {"images": x.numpy()})[0], w, 1e-4, "onnx encoder")
    assert_close_to_scale(gen.run(None, {"stylemap": w.numpy()})[0], ref_img, 1e-4,
                          "onnx generator")
    feeds = {f"style_{i:02d}": s.numpy() for i, s in enumerate(styles)}
    assert_close_to_scale(syn.run(None, feeds)[0], ref_img, 1e-4, "onnx synthesis")
    # existing files are not replaced without --overwrite
    before = (out / "manifest.json").read_bytes()
    assert main(["export-onnx", "--model", str(tiny_model_file), "--out", str(out)]) == 1
    assert (out / "manifest.json").read_bytes() == before
    assert "--overwrite" in capfd.readouterr().err
