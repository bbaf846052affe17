"""The metric registry (register_metric, calc_metric) and the metrics a training run computes at
its checkpoints (`train --set metrics=...`)."""

import json
import subprocess
import sys

import pytest
import torch

import weights_fixture
from conftest import write_images
from stylemapgan import metrics
from stylemapgan.cli import main
from stylemapgan.config import PRESETS
from stylemapgan.errors import ConfigError, InputError
from stylemapgan.metrics import (
    MetricContext,
    builtin_registry,
    calc_metric,
    default_registry,
    list_metrics,
    register_metric,
    training_metric_names,
)
from stylemapgan.metrics.reconstruction import reconstruction
from stylemapgan.nn.perceptual import InceptionFeatures
from stylemapgan.training import TrainConfig, Trainer, list_checkpoints

real_weights_home = weights_fixture.real_weights_home
BUILTIN = ("reconstruction", "fid", "fid_lerp", "local_editing", "detectability", "runtime")


def _context(model, n=6, **kw):
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return MetricContext(model, lambda: iter(images.split(4)), n, **kw)


class CountingFeatures(torch.nn.Module):
    """A small feature network that counts the images it has seen."""

    def __init__(self):
        super().__init__()
        self.net = InceptionFeatures.random_init("tiny", seed=0)
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.net(x)


# --------------------------------------------------------------------------- the registry
def test_builtin_metrics_in_report_order_without_importing_torch():
    assert list_metrics() == BUILTIN
    code = ("import sys; from stylemapgan.metrics import list_metrics, training_metric_names; "
            "print(list_metrics(), training_metric_names('fid, Reconstruction'), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{BUILTIN} ['reconstruction', 'fid'] False"


def test_unknown_metric_is_a_one_line_error_listing_the_known_ones(tiny_model):
    with pytest.raises(InputError) as e:
        calc_metric("psnr", _context(tiny_model))
    msg = str(e.value)
    assert "'psnr'" in msg and ", ".join(BUILTIN) in msg and "\n" not in msg
    with pytest.raises(InputError, match="choose from reconstruction, fid, fid_lerp, runtime$"):
        training_metric_names("reconstruction,psnr")
    with pytest.raises(InputError, match="local_editing needs edit triples"):
        training_metric_names("local_editing")
    assert training_metric_names(" ") == []


def test_registering_a_metric(tiny_model):
    reg = builtin_registry()

    @register_metric(registry=reg, needs=("lpips",), notes=("a made-up metric",))
    def brightness(ctx):
        """Mean absolute value of the reconstructions."""
        with torch.no_grad():
            total = sum(float(ctx.model.reconstruct(x).abs().sum()) for x in ctx.images())
        return {"brightness": total / ctx.num_images, "note": "only 6 images"}

    @register_metric(registry=reg)
    def constant(ctx):
        return {"value": 1.5}

    assert reg.names() == (*BUILTIN, "brightness", "constant")
    assert list_metrics() == BUILTIN  # the default registry did not change
    spec = reg.get("brightness")
    assert spec.summary == "Mean absolute value of the reconstructions." and spec.needs == {"lpips"}
    result = calc_metric("brightness", _context(tiny_model), registry=reg)
    assert result.metric == "brightness" and result.results["brightness"] > 0
    assert result.notes == ("brightness: only 6 images", "a made-up metric")
    assert calc_metric("constant", _context(tiny_model), registry=reg).results == {"value": 1.5}
    with pytest.raises(ValueError, match="already registered"):
        register_metric(constant, registry=reg)
    with pytest.raises(ValueError, match="unknown needs"):
        register_metric(constant, name="other", needs=("gpu",), registry=reg)
    # a metric that needs the feature networks is not chosen where they are lacking
    assert reg.parse("constant,brightness") == ["brightness", "constant"]
    with pytest.raises(InputError, match="brightness needs lpips"):
        reg.parse("brightness", without=("lpips",))


def test_calc_metric_result_shape(tiny_model):
    ctx = _context(tiny_model)
    result = calc_metric("reconstruction", ctx)
    direct = reconstruction(tiny_model, ctx.images(), None)
    assert result.metric == "reconstruction" and result.results == direct
    assert set(direct) == {"mse", "mse_std", "count", "drift", "signed_rgb"} and direct["count"] == 6
    assert result.seconds >= 0 and result.notes == ()
    assert set(result.to_dict()) == {"metric", "results", "seconds", "notes"}
    scalars = result.scalars()
    # numbers only (the per-channel list and strings are left out), flattened by name
    assert set(scalars) == {f"metrics/reconstruction/{k}" for k in ("mse", "mse_std", "count", "drift")}
    assert scalars["metrics/reconstruction/mse"] == direct["mse"]


def test_fid_metrics_share_one_pass_over_the_reference_images(tiny_model):
    ext = CountingFeatures()
    ctx = _context(tiny_model, n=6, inception=ext, fid_samples=3, lerp_samples=4,
                   planned=("fid", "fid_lerp"))
    fid = calc_metric("fid", ctx)
    lerp = calc_metric("fid_lerp", ctx)
    # 6 reference images once, 3 samples, 4 interpolations
    assert ext.seen == 6 + 3 + 4
    assert fid.results["num_samples"] == 3 and fid.results["num_real"] == 6 and fid.results["fid"] > 0
    assert lerp.results["num_samples"] == 4 and lerp.results["fid_lerp"] > 0
    assert fid.notes[0].startswith("fid: only 3 samples")
    real, info = ctx.shared["fid_reference"]
    assert real.count == 6 and info == {"cache": "off"}


# --------------------------------------------------------------------------- during training
def _train_args(tmp_path, *sets):
    data = write_images(tmp_path / "imgs", n=8, size=36)
    args = ["train", "--data", str(data), "--preset", "tiny-32", "--outdir", str(tmp_path / "runs"),
            "--device", "cpu", "--threads", "1"]
    for s in ("iterations=3", "batch_size=2", "perceptual=none", "workers=0", "val_images=3",
              "image_every=0", "val_every=1", "log_every=3", "checkpoint_every=2", *sets):
        args += ["--set", s]
    return args


def _records(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_train_computes_the_chosen_metrics_at_each_checkpoint(tmp_path):
    assert main(_train_args(tmp_path, "metrics=reconstruction")) == 0
    run = tmp_path / "runs" / "00000-tiny-32"
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]
    records = _records(run)
    found = {r["step"]: r["metrics"] for r in records if "metrics" in r}
    assert sorted(found) == [2, 3] and all(set(m) == {"reconstruction"} for m in found.values())
    val = {r["step"]: r["validation"] for r in records if "validation" in r}
    for step, m in found.items():
        rec = m["reconstruction"]
        assert rec["count"] == 3 and rec["mse"] > 0 and "lpips" not in rec  # perceptual=none
        # the same EMA networks on the same held-out images as the validation's colour drift
        assert rec["drift"] == pytest.approx(val[step]["val/drift"], rel=1e-5)
    assert json.loads((run / "config.json").read_text())["train"]["metrics"] == "reconstruction"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    mse = events.Scalars("metrics/reconstruction/mse")
    assert [e.step for e in mse] == [2, 3]
    assert mse[0].value == pytest.approx(found[2]["reconstruction"]["mse"], rel=1e-6)


def test_train_refuses_unknown_metrics_in_one_line(tmp_path, capsys):
    assert main(_train_args(tmp_path, "metrics=reconstruction,psnr")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reconstruction, fid, fid_lerp, runtime" in err[0]
    assert main(_train_args(tmp_path, "metrics=detectability")) == 2
    assert "edit triples" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="psnr"):
        TrainConfig(metrics="psnr")


def _state(trainer):
    return {f"{n}.{k}": v.clone() for n in ("generator", "encoder", "discriminator", "g_ema", "e_ema")
            for k, v in getattr(trainer, n).state_dict().items()}


def test_metrics_leave_training_bit_identical(tmp_path):
    images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = dict(iterations=3, batch_size=2, val_images=3, checkpoint_every=2, workers=0,
              image_every=0, val_every=0, log_every=1, perceptual="none", amp="off")
    states, losses = [], []
    for name, chosen in (("plain", ""), ("with", "reconstruction,runtime")):
        tr = Trainer(PRESETS["tiny-32"], TrainConfig(**kw, metrics=chosen), images, tmp_path / name)
        tr.train()
        states.append(_state(tr))
        losses.append([r["losses"] for r in _records(tmp_path / name) if "losses" in r])
    assert states[0].keys() == states[1].keys()
    # (a generator's mean_stylemap is NaN until computed: NaN counts as equal to NaN)
    assert [k for k in states[0] if not torch.equal(states[0][k].nan_to_num(), states[1][k].nan_to_num())
            or not torch.equal(states[0][k].isnan(), states[1][k].isnan())] == []
    assert len(losses[0]) == 3 and losses[0] == losses[1]
    assert not any("metrics" in r for r in _records(tmp_path / "plain"))
    assert [r["step"] for r in _records(tmp_path / "with") if "metrics" in r] == [2, 3]


def test_train_with_fid_needs_the_inception_weights_before_it_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STYLEMAPGAN_HOME", str(tmp_path / "empty-home"))
    assert main(_train_args(tmp_path, "metrics=fid")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "stylemapgan weights fetch" in err
    assert not (tmp_path / "runs").exists()


def test_train_with_fid_and_real_weights(real_weights_home, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEMAPGAN_HOME", str(real_weights_home))
    assert main(_train_args(tmp_path, "metrics=fid,fid_lerp,runtime", "iterations=2")) == 0
    records = _records(tmp_path / "runs" / "00000-tiny-32")
    (m,) = [r["metrics"] for r in records if "metrics" in r]
    assert list(m) == ["fid", "fid_lerp", "runtime"]
    assert m["fid"]["fid"] > 0 and m["fid"]["num_samples"] == 3 and m["fid"]["num_real"] == 3
    assert m["fid_lerp"]["fid_lerp"] > 0 and m["runtime"]["seconds"] > 0


def test_the_package_names_resolve():
    for name in metrics.__all__:
        assert getattr(metrics, name) is not None, name
    assert default_registry.get("fid").needs == {"inception"}
