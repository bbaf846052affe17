import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_images
from stylemapgan.cli import main
from stylemapgan.config import PRESETS
from stylemapgan.errors import ConfigError
from stylemapgan.formats.checkpoint import load_model
from stylemapgan.training import (
    StepBatchSampler,
    TrainConfig,
    Trainer,
    TrainingError,
    ema_decay_at,
    latest_checkpoint,
    list_checkpoints,
    losses,
    parse_overrides,
    read_checkpoint,
)
from stylemapgan.training.sampling import STREAM_Z, seeded_generator, split_indices

TINY = PRESETS["tiny-32"]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: one thread is as fast, and far faster when other jobs share the cores.
    torch.set_num_threads(1)
QUIET = dict(workers=0, image_every=0, val_every=0, log_every=1, perceptual="none", amp="off")


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, n=12, size=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, size, size, generator=g) * 2 - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def make_trainer(run_dir=None, dataset=None, perceptual=None, resume=False, **kw):
    cfg = TrainConfig(**{**dict(iterations=2, batch_size=4, val_images=0), **QUIET, **kw})
    return Trainer(TINY, cfg, dataset if dataset is not None else TensorImages(), run_dir,
                   perceptual=perceptual, resume=resume)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _tiny_lpips():
    perceptual = pytest.importorskip("stylemapgan.nn.perceptual")
    return perceptual.LPIPS.random_init("tiny", seed=0)


# --------------------------------------------------------------------------- configuration
def test_parse_overrides_types_and_scopes():
    model, train = parse_overrides(["size=64", "channel_cap=null", "light=true", "lr=1e-3",
                                    "train.batch_size=8", "model.normalization=instance",
                                    "perceptual=none", "iterations=1_000"])
    assert model == {"size": 64, "channel_cap": None, "light": True, "normalization": "instance"}
    assert train == {"lr": 1e-3, "batch_size": 8, "perceptual": "none", "iterations": 1000}


@pytest.mark.parametrize("item, msg", [
    ("batch_size=eight", "expected an integer"),
    ("lr=fast", "expected a number"),
    ("lr=nan", "finite"),
    ("flip=maybe", "true or false"),
    ("lamda_adv=0", "unknown setting 'lamda_adv'"),
    ("model.lr=1", "unknown setting 'lr'"),
    ("noequals", "key=value"),
])
def test_parse_overrides_errors(item, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_overrides([item])


@pytest.mark.parametrize("kw, msg", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(lambda_adv=-1.0), "lambda_adv must be >= 0"),
    (dict(beta2=1.0), "beta2"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(ema_rampup=-0.1), "ema_rampup must be >= 0"),
    (dict(perceptual="resnet"), "perceptual must be one of"),
    (dict(amp="fp8"), "amp must be one of"),
    (dict(iterations=2.5), "iterations must be an integer"),
])
def test_train_config_validation(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kw)


@pytest.mark.parametrize("sets, msg", [
    (["batch_size=x"], "error: --set batch_size=x: expected an integer"),
    (["bogus=1"], "error: --set: unknown setting 'bogus'"),
    (["size=48"], "error: invalid model config: size must be a power of two"),
    (["r1_interval=0"], "error: invalid train config: r1_interval must be >= 1"),
    (["amp=fp16"], "error: amp=fp16 needs a CUDA device"),
])
def test_cli_bad_set_values_are_one_line_errors(tmp_path, capsys, sets, msg):
    data = write_images(tmp_path / "imgs", n=4)
    args = ["train", "--data", str(data), "--preset", "tiny-32", "--outdir", str(tmp_path / "runs"),
            "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    if "amp" not in sets[0]:
        args.append("--dry-run")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(msg)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--preset", "small-64", "--set", "lr=0.001",
                 "--set", "stylemap_size=4", "--outdir", str(tmp_path / "runs"), "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"]["size"] == 64 and cfg["model"]["stylemap_size"] == 4
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["batch_size"] == 16
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- data order
def test_step_sampler_is_independent_of_world_size_and_covers_epochs():
    idx = list(range(100, 110))
    one = StepBatchSampler(idx, 4, 0, 1, seed=3)
    two = [StepBatchSampler(idx, 4, r, 2, seed=3) for r in range(2)]
    for step in range(7):
        assert one.batch(step) == two[0].batch(step) + two[1].batch(step)
    stream = [i for s in range(5) for i in one.batch(s)]  # 20 = two epochs
    assert sorted(stream[:10]) == idx and sorted(stream[10:]) == idx
    assert stream[:10] != stream[10:]
    resumed = iter(StepBatchSampler(idx, 4, 0, 1, seed=3, start_step=3))
    assert next(resumed) == one.batch(3)
    with pytest.raises(ConfigError, match="divisible"):
        StepBatchSampler(idx, 5, 0, 2, seed=0)


# --------------------------------------------------------------------------- the objective
def test_first_step_losses_are_the_documented_terms():
    tr = make_trainer(r1_interval=1)
    g0, e0, d0 = (_params(m) for m in (tr.generator, tr.encoder, tr.discriminator))
    z = torch.randn(4, TINY.stylemap_channels, generator=seeded_generator(0, 0, 0, STREAM_Z))
    with torch.no_grad():
        w = tr.generator.mapping(z)
        fake = tr.generator(w)
        adv = losses.generator_adversarial(tr.discriminator(fake))
        w_rec = losses.mse(tr.encoder(fake), w)
    values = tr.train_step()
    assert torch.allclose(values["adv"], adv, atol=1e-6)
    assert torch.allclose(values["w_rec"], w_rec, atol=1e-6)  # E had not moved yet
    assert set(values) == {"adv", "w_rec", "d", "d_rec", "r1", "x_rec", "e_adv"}
    # Optimizers as in the reference: Adam(0, 0.99); D scaled for the lazy R1 (interval 1).
    assert tr.g_opt.param_groups[0]["betas"] == (0.0, 0.99)
    assert tr.d_opt.param_groups[0]["lr"] == pytest.approx(0.002 * 1 / 2)
    for before, module in ((g0, tr.generator), (e0, tr.encoder), (d0, tr.discriminator)):
        after = _params(module)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        params = {k for k, _ in module.named_parameters()}
        assert set(changed) >= params, sorted(params - set(changed))[:5]


def test_all_losses_with_perceptual_change_weights_and_ema():
    lp = _tiny_lpips()
    tr = make_trainer(perceptual=lp, iterations=3, r1_interval=2, ema_decay=0.5, ema_rampup=0.0)
    g0 = _params(tr.g_ema)
    seen = set()
    for _ in range(3):
        values = tr.train_step()
        assert all(torch.isfinite(v) for v in values.values())
        seen |= set(values)
    assert seen == {"adv", "w_rec", "d", "d_rec", "r1", "x_rec", "perceptual", "e_adv"}
    assert values["perceptual"] > 0
    # EMA moved, and is between the start and the raw weights.
    k = "synthesis.conv0.weight"
    ema, raw = tr.g_ema.state_dict()[k], tr.generator.state_dict()[k]
    assert not torch.equal(ema, g0[k]) and not torch.equal(ema, raw)


@pytest.mark.parametrize("zeroed, frozen, absent", [
    (dict(lambda_adv=0.0), "generator.mapping", {"adv"}),
    (dict(lambda_w_rec=0.0, lambda_x_rec=0.0, lambda_e_adv=0.0), "encoder", {"w_rec", "x_rec", "e_adv"}),
    (dict(lambda_d=0.0, lambda_d_rec=0.0, r1_gamma=0.0), "discriminator", {"d", "d_rec", "r1"}),
])
def test_zero_weight_disables_terms(zeroed, frozen, absent):
    tr = make_trainer(r1_interval=1, **zeroed)
    module = tr.generator.mapping if frozen == "generator.mapping" else getattr(tr, frozen)
    before = _params(module)
    values = tr.train_step()
    after = _params(module)
    assert all(torch.equal(before[k], after[k]) for k in before), f"{frozen} changed"
    assert not absent & set(values)


def test_shared_reconstruction_gives_the_same_step_as_two_forwards():
    # Phases 3 and 5 share one G(E(x)) forward; the step must equal the one that computes it
    # twice (the previous code path, still used under DistributedDataParallel).
    runs = []
    for share in (False, True):
        tr = make_trainer(perceptual=_tiny_lpips(), r1_interval=2, iterations=3)
        tr.share_reconstruction = share
        runs.append((tr, [tr.train_step() for _ in range(3)]))
    (old, old_losses), (new, new_losses) = runs
    for a, b in zip(old_losses, new_losses, strict=True):
        assert a.keys() == b.keys() and "d_rec" in a and "perceptual" in a
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    sa, sb = _state_of(old), _state_of(new)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-6, equal_nan=True, msg=k)


def _ema_decay_reference(step, batch, decay, rampup):
    # StyleGAN2-ADA's rule in float64: half-life (in images) = min(the decay's, rampup * seen).
    import math

    limit = batch * math.log(0.5) / math.log(decay)
    half_life = min(limit, rampup * (step + 1) * batch) if rampup > 0 else limit
    return 0.5 ** (batch / half_life)


@pytest.mark.parametrize("step, batch", [(0, 16), (99, 16), (999, 16), (4999, 16),
                                         (13_855, 16), (20_000, 16), (10, 1), (500, 64)])
def test_ema_decay_warms_up_to_the_configured_limit(step, batch):
    got = ema_decay_at(step, batch, 0.999, 0.05)
    assert got == pytest.approx(_ema_decay_reference(step, batch, 0.999, 0.05), rel=1e-12)
    assert got <= 0.999
    assert ema_decay_at(step, batch, 0.999, 0.0) == 0.999  # rampup 0: fixed decay
    assert ema_decay_at(step, batch, 0.0, 0.05) == 0.0


def test_ema_decay_ramp_is_monotone_and_reaches_the_limit():
    d = [ema_decay_at(s, 16, 0.999, 0.05) for s in range(0, 20_000, 50)]
    assert all(b >= a for a, b in itertools.pairwise(d))
    assert d[0] < 1e-3 and ema_decay_at(13_856, 16, 0.999, 0.05) == 0.999
    assert ema_decay_at(13_854, 16, 0.999, 0.05) < 0.999


def test_ema_starts_from_the_trained_weights_not_the_initialization():
    k = "synthesis.conv0.weight"
    warm = make_trainer()
    init = _params(warm.g_ema)[k]
    warm.train_step()
    raw = warm.generator.state_dict()[k]
    # Decay ~1e-6 at step 0: the EMA is (nearly) the stepped weights.
    torch.testing.assert_close(warm.g_ema.state_dict()[k], raw, rtol=0, atol=1e-5)
    fixed = make_trainer(ema_rampup=0.0)
    fixed.train_step()
    expected = 0.999 * init + 0.001 * fixed.generator.state_dict()[k]
    torch.testing.assert_close(fixed.g_ema.state_dict()[k], expected, rtol=1e-5, atol=1e-6)


def test_saved_configs_from_before_the_warm_up_resume_without_it():
    saved = TrainConfig().to_dict()
    del saved["ema_rampup"]
    assert TrainConfig.from_dict(saved).ema_rampup == 0.0
    assert TrainConfig.from_dict(TrainConfig().to_dict()).ema_rampup == 0.05


def test_bf16_autocast_on_cpu_runs():
    tr = make_trainer(amp="bf16", r1_interval=1)
    assert tr.amp_dtype == torch.bfloat16
    values = tr.train_step()
    assert all(torch.isfinite(v) for v in values.values())


# --------------------------------------------------------------------------- run folder, resume
def _state_of(tr):
    out = {}
    for name in ("generator", "encoder", "discriminator", "g_ema", "e_ema"):
        for k, v in getattr(tr, name).state_dict().items():
            out[f"{name}.{k}"] = v
    for name in ("g_opt", "e_opt", "d_opt"):
        for pid, st in getattr(tr, name).state_dict()["state"].items():
            for k, v in st.items():
                out[f"{name}.{pid}.{k}"] = v
    return out


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, amp):
    kw = dict(iterations=4, r1_interval=3, checkpoint_every=2, batch_size=4, amp=amp)
    straight = make_trainer(tmp_path / "a", **kw)
    straight.train()
    # Half the run, then a fresh process state resumes (with a DataLoader worker this time).
    first = make_trainer(tmp_path / "b", **{**kw, "iterations": 2})
    first.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2]
    torch.manual_seed(1234)  # resuming restores the global RNG state too
    resumed = make_trainer(tmp_path / "b", resume=True, **{**kw, "workers": 1})
    assert resumed.step == 2
    assert torch.equal(torch.get_rng_state(), read_checkpoint(
        tmp_path / "b/checkpoints/ckpt-00000002.safetensors")[0]["rng.torch_cpu"])
    resumed.train()
    a, b = _state_of(straight), _state_of(resumed)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k].nan_to_num(), b[k].nan_to_num())
            or not torch.equal(a[k].isnan(), b[k].isnan())]
    assert not diff, diff[:5]
    # The logged losses agree too.
    la = [json.loads(x) for x in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    assert [r["losses"] for r in la if "losses" in r] == [r["losses"] for r in lb if "losses" in r]


def test_resume_refuses_changed_math(tmp_path):
    # lr, loss weights, amp... may change on resume (tests/training/test_training_reliability.py); the
    # settings that fix the data order, the noise and the split may not.
    make_trainer(tmp_path / "r", checkpoint_every=1, iterations=1).train()
    for key, value in (("seed", 1), ("batch_size", 2), ("val_images", 2)):
        with pytest.raises(TrainingError, match=f"cannot resume with changed settings {key}"):
            make_trainer(tmp_path / "r", resume=True, iterations=2, **{key: value})


def test_nan_stops_run_and_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    data = write_images(tmp_path / "imgs", n=6)
    real_mse = losses.mse
    calls = {"n": 0}

    def flaky_mse(a, b):
        calls["n"] += 1
        out = real_mse(a, b)
        # Two mse calls per step (w_rec, x_rec); poison step 4 (0-based 3).
        return out * float("nan") if calls["n"] == 7 else out

    monkeypatch.setattr(losses, "mse", flaky_mse)
    args = ["train", "--data", str(data), "--preset", "tiny-32", "--outdir", str(tmp_path / "runs"),
            "--device", "cpu", "--set", "iterations=6", "--set", "batch_size=2",
            "--set", "checkpoint_every=2", "--set", "perceptual=none", "--set", "workers=0",
            "--set", "val_images=0", "--set", "image_every=0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: loss w_rec") and "NaN/Inf in iteration 4" in err
    assert "ckpt-00000002.safetensors" in err
    run = tmp_path / "runs" / "00000-tiny-32"
    assert [s for s, _ in list_checkpoints(run)] == [2]
    tensors, state, _ = latest_checkpoint(run)
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for k, t in tensors.items()
               if t.is_floating_point() and "mean_stylemap" not in k)


def test_checkpoint_save_is_atomic_and_pruned(tmp_path, monkeypatch):
    import safetensors.torch

    tr = make_trainer(tmp_path / "r", iterations=3, checkpoint_every=1, keep_checkpoints=2)
    tr.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "r")] == [2, 3]
    good = (tmp_path / "r/checkpoints/ckpt-00000003.safetensors").read_bytes()

    def crash(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of the save

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    tr.step = 4
    with pytest.raises(KeyboardInterrupt):
        tr.save_checkpoint()
    monkeypatch.undo()
    ckpt_dir = tmp_path / "r/checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["ckpt-00000002.safetensors",
                                                          "ckpt-00000003.safetensors"]
    assert (ckpt_dir / "ckpt-00000003.safetensors").read_bytes() == good
    # A damaged newest file (e.g. a disk problem) is skipped in favour of the previous one.
    (ckpt_dir / "ckpt-00000005.safetensors").write_bytes(b"junk")
    _, state, path = latest_checkpoint(tmp_path / "r")
    assert state["step"] == 3 and path.name == "ckpt-00000003.safetensors"


def test_cli_train_folder_with_corrupt_images_then_export(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=12, corrupt=2)
    args = ["train", "--data", str(data), "--preset", "tiny-32", "--outdir", str(tmp_path / "runs"),
            "--device", "cpu", "--set", "iterations=3", "--set", "batch_size=2",
            "--set", "perceptual=none", "--set", "workers=0", "--set", "val_images=2",
            "--set", "image_every=2", "--set", "val_every=3", "--set", "log_every=2",
            "--set", "checkpoint_every=2", "--set", "grid_size=4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "skipped 2 unreadable file(s)" in err
    run = tmp_path / "runs" / "00000-tiny-32"
    assert len((run / "skipped.txt").read_text().splitlines()) == 2
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["skipped_files"] == 2 and cfg["train_images"] == 10 and cfg["val_images"] == 2
    assert cfg["model"]["size"] == 32 and cfg["train"]["iterations"] == 3
    records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "losses" in r] == [2, 3]
    val = [r["validation"] for r in records if "validation" in r]
    assert len(val) == 1 and val[0]["val/mse"] > 0
    assert {"adv", "d", "x_rec", "r1"} <= set(records[0]["losses"])
    images = sorted(p.name for p in (run / "images").iterdir())
    assert images == ["reals.png", "reconstructions-00000000.png", "reconstructions-00000002.png",
                      "reconstructions-00000003.png", "samples-00000000.png",
                      "samples-00000002.png", "samples-00000003.png"]
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]

    out = tmp_path / "m.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    model = load_model(out)
    prov = model.provenance
    assert prov["iterations"] == 3 and prov["images_seen"] == 6
    assert prov["dataset"] == str(data) and "train" in prov["command"] and prov["wall_time_s"] >= 0
    tensors, _ = read_checkpoint(run / "checkpoints/ckpt-00000003.safetensors")
    for k, v in model.generator.state_dict().items():
        if k != "mean_stylemap":
            assert torch.equal(v, tensors[f"g_ema.{k}"])
    assert main(["export", str(run), "--out", str(out)]) == 1  # no --overwrite
    capsys.readouterr()
    # Resume through the CLI continues the same run folder.
    assert main(["train", "--resume", str(run), "--set", "iterations=4", "--device", "cpu"]) == 0
    assert [s for s, _ in list_checkpoints(run)][-1] == 4
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["iterations"] == 4 and "--preset tiny-32" in cfg["command"]
    assert len(cfg["resumed_with"]) == 1 and "--resume" in cfg["resumed_with"][0]
    assert main(["train", "--resume", str(run), "--set", "seed=1"]) == 2
    assert "cannot resume with changed settings seed" in capsys.readouterr().err


def test_torchrun_two_processes_gloo(tmp_path):
    data = write_images(tmp_path / "imgs", n=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "stylemapgan.cli", "train", "--data", str(data), "--preset", "tiny-32",
           "--outdir", str(tmp_path / "runs"), "--device", "cpu",
           "--set", "iterations=3", "--set", "batch_size=4", "--set", "perceptual=none",
           "--set", "workers=0", "--set", "val_images=2", "--set", "r1_interval=2",
           "--set", "checkpoint_every=3", "--set", "image_every=0", "--set", "log_every=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # only rank 0 creates and writes
    run = runs[0]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "losses" in r] == [1, 2, 3]
    tensors, state, _ = latest_checkpoint(run)
    assert state["step"] == 3 and state["world_size"] == 2
    assert all(torch.isfinite(t).all() for k, t in tensors.items()
               if t.is_floating_point() and "mean_stylemap" not in k)
    # Resume the distributed run (the ranks' weights are checked to agree at each checkpoint).
    cmd = [*cmd[:cmd.index("train") + 1], "--resume", str(run), "--device", "cpu",
           "--set", "iterations=4", "--set", "checkpoint_every=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, state, _ = latest_checkpoint(run)
    assert state["step"] == 4


def test_missing_lpips_weights_fail_before_the_run_starts(tmp_path, monkeypatch, capsys):
    pytest.importorskip("stylemapgan.nn.perceptual")
    monkeypatch.setenv("STYLEMAPGAN_HOME", str(tmp_path / "empty-home"))
    data = write_images(tmp_path / "imgs", n=4)
    assert main(["train", "--data", str(data), "--preset", "tiny-32", "--outdir",
                 str(tmp_path / "runs"), "--device", "cpu", "--set", "perceptual=vgg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "stylemapgan weights fetch" in err
    assert not (tmp_path / "runs").exists()


def test_train_help_lists_every_setting(capsys):
    from dataclasses import fields

    from stylemapgan.config import ModelConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in (*fields(ModelConfig), *fields(TrainConfig)):
        assert f.name in text, f.name


def test_small_dataset_holds_out_a_tenth_with_a_warning(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=8, size=32)
    args = ["train", "--data", str(data), "--preset", "tiny-32", "--outdir", str(tmp_path / "runs"),
            "--device", "cpu", "--set", "iterations=1", "--set", "batch_size=2",
            "--set", "perceptual=none", "--set", "workers=0", "--set", "image_every=0",
            "--set", "checkpoint_every=0", "--set", "val_every=1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "has 8 images, so 1 of val_images=64 are held out" in err
    assert "7 training images, 1 held out" in err
    assert split_indices(8, 64, 0)[1] and split_indices(1, 64, 0) == ([0], [])
    assert len(split_indices(100, 64, 0)[1]) == 10 and len(split_indices(200, 64, 0)[1]) == 64


def test_train_threads_is_range_checked(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "x", "--threads", "99999999999999999999", "--dry-run"])
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_skipped_list_is_never_written_through_a_link(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=12, corrupt=1)
    run = tmp_path / "runs" / "00000-tiny-32"
    run.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "skipped.txt").symlink_to(victim)
    (run / "config.json").write_text(json.dumps({
        "model": TINY.to_dict(), "train": TrainConfig(**{**QUIET, "iterations": 1}).to_dict(),
        "dataset": str(data)}))
    assert main(["train", "--resume", str(run), "--device", "cpu"]) == 2
    assert "skipped.txt" in capsys.readouterr().err
    assert victim.read_text() == "keep me"
