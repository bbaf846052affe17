"""``stylemapgan train --init-from``: a new run from a model file, a training checkpoint (or run
folder) or a reference .pt; exact at step 0, refused on a different architecture, exact on
resume, recorded in config.json and the exported model's provenance."""

import json

import pytest
import torch

from conftest import TINY_REF_ARGS, make_model, reference_checkpoint, write_images
from stylemapgan.cli import main
from stylemapgan.config import PRESETS
from stylemapgan.errors import ConfigError, ModelFileError
from stylemapgan.files import sha256_file
from stylemapgan.formats.checkpoint import (
    config_from_reference_args,
    convert_reference,
    load_model,
    save_model,
)
from stylemapgan.training import TrainConfig, Trainer, list_checkpoints, read_checkpoint
from stylemapgan.training.init import check_architecture, read_initial_weights
from test_training import QUIET, TensorImages, _state_of

TINY = PRESETS["tiny-32"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _trainer(init, run_dir=None, resume=False, model=TINY, **kw):
    cfg = TrainConfig(**{**dict(iterations=2, batch_size=4, val_images=0, ema_rampup=0.0),
                         **QUIET, **kw})
    return Trainer(model, cfg, TensorImages(), run_dir, init_weights=init, resume=resume)


def test_model_file_start_reproduces_its_outputs_exactly(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(make_model(TINY, seed=3), path)
    model = load_model(path)
    init = read_initial_weights(path)
    assert init.source["kind"] == "model-file" and init.source["sha256"] == sha256_file(path)
    tr = _trainer(init, channels_last="off")
    assert tr.init_source["fresh"] == ["discriminator"]
    for net, ref in (("generator", model.generator), ("g_ema", model.generator),
                     ("encoder", model.encoder), ("e_ema", model.encoder)):
        mine, theirs = getattr(tr, net).state_dict(), ref.state_dict()
        for k, v in theirs.items():
            if k != "mean_stylemap":
                assert torch.equal(mine[k], v), f"{net}.{k}"
    # The mean stylemap is "not computed" again: export computes it for the trained weights.
    assert not tr.g_ema.has_mean_stylemap()
    x = TensorImages(n=4).x
    with torch.no_grad():
        assert torch.equal(tr.g_ema(tr.e_ema(x)), model.generator(model.encoder(x)))
        assert torch.equal(tr.generator(tr.encoder(x)), model.generator(model.encoder(x)))
    # A fresh D is the same as a run without --init-from would draw (seeded).
    plain = _trainer(None, channels_last="off")
    for k, v in plain.discriminator.state_dict().items():
        assert torch.equal(tr.discriminator.state_dict()[k], v)


def test_checkpoint_and_run_folder_start_take_all_five_networks(tmp_path):
    src = _trainer(None, tmp_path / "src", iterations=3, checkpoint_every=3)
    src.train()
    ckpt = tmp_path / "src/checkpoints/ckpt-00000003.safetensors"
    for given in (ckpt, tmp_path / "src"):
        init = read_initial_weights(given)
        assert init.source["kind"] == "training-checkpoint" and init.source["step"] == 3
        assert init.source["name"] == ckpt.name
        tr = _trainer(init)
        assert tr.init_source["fresh"] == [] and tr.step == 0
        a, b = _state_of(src), _state_of(tr)
        for k in a:
            if ".mean_stylemap" in k or k.split(".")[0] in ("g_opt", "e_opt", "d_opt"):
                continue
            assert torch.equal(a[k], b[k]), k
        # Optimizers start fresh.
        assert not tr.g_opt.state_dict()["state"]


def test_reference_checkpoint_start_uses_raw_ema_and_discriminator(tmp_path):
    ckpt, _ = reference_checkpoint(TINY_REF_ARGS, with_optim=False)
    # Distinct raw and EMA weights, so a mix-up shows.
    ckpt["g_ema"] = {k: v + 0.01 if k.endswith(("weight", "bias")) else v
                     for k, v in ckpt["g_ema"].items()}
    path = tmp_path / "ref.pt"
    torch.save(ckpt, path)
    init = read_initial_weights(path)
    assert init.source["kind"] == "reference-checkpoint" and init.source["train_dataset"] == "tiny"
    config = config_from_reference_args(TINY_REF_ARGS)
    assert init.config == config
    ema, disc, _ = convert_reference(ckpt, "ref", with_discriminator=True)
    raw, _, _ = convert_reference(ckpt, "ref", use_ema=False)
    tr = _trainer(init, model=config)
    assert tr.init_source["fresh"] == []
    for net, ref in (("generator", raw.generator), ("g_ema", ema.generator),
                     ("encoder", raw.encoder), ("discriminator", disc)):
        mine = getattr(tr, net).state_dict()
        for k, v in ref.state_dict().items():
            if k != "mean_stylemap":
                assert torch.equal(mine[k], v), f"{net}.{k}"
    g, g_ema = tr.generator.state_dict(), tr.g_ema.state_dict()
    assert any(not torch.equal(g[k], g_ema[k]) for k in g if k != "mean_stylemap")


def test_architecture_mismatch_names_each_setting(tmp_path, tiny_model_file, capsys):
    init = read_initial_weights(tiny_model_file)
    other = TINY.replace(stylemap_size=4, stylemap_channels=4)
    with pytest.raises(ConfigError) as exc:
        check_architecture(other, init.config, "tiny.safetensors")
    msg = str(exc.value)
    assert "stylemap_size 4 vs 8" in msg and "stylemap_channels 4 vs" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="stylemap_size 4 vs 8"):
        _trainer(init, model=other)
    data = write_images(tmp_path / "imgs", n=4, size=32)
    base = ["train", "--data", str(data), "--init-from", str(tiny_model_file), "--dry-run"]
    assert main([*base, "--set", "stylemap_size=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "stylemap_size 4 vs 8" in err and len(err.splitlines()) == 1
    assert main([*base, "--preset", "small-64"]) == 2
    assert "size 64 vs 32" in capsys.readouterr().err
    # The file's own architecture, by default; the EMA warm-up is off for trained weights.
    assert main(base) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == TINY.to_dict() and shown["train"]["ema_rampup"] == 0.0
    assert shown["init_from"]["kind"] == "model-file"
    assert main([*base, "--resume", str(tmp_path)]) == 2
    assert "--init-from starts a new run" in capsys.readouterr().err


def test_unusable_sources_are_one_line_errors(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        read_initial_weights(tmp_path / "missing.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(ModelFileError, match="junk.pt"):
        read_initial_weights(tmp_path / "junk.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="not a training run"):
        read_initial_weights(tmp_path / "empty")


def test_cli_init_from_records_source_resumes_exactly_and_exports_provenance(
        tmp_path, tiny_model_file, capsys):
    data = write_images(tmp_path / "imgs", n=8, size=32)
    common = ["--device", "cpu", "--set", "batch_size=2", "--set", "perceptual=none",
              "--set", "workers=0", "--set", "val_images=2", "--set", "image_every=0",
              "--set", "val_every=2", "--set", "log_every=1", "--set", "checkpoint_every=2",
              "--set", "amp=off"]
    start = ["train", "--data", str(data), "--init-from", str(tiny_model_file)]
    assert main([*start, "--outdir", str(tmp_path / "a"), *common, "--set", "iterations=4"]) == 0
    err = capsys.readouterr().err
    assert "starting from" in err and "discriminator fresh" in err
    run_a = tmp_path / "a/00000-finetune"
    cfg = json.loads((run_a / "config.json").read_text())
    assert cfg["init_from"]["sha256"] == sha256_file(tiny_model_file)
    assert "--init-from" in cfg["command"]
    # The initial weights are checkpoint 0, and the curve starts at step 0.
    records = [json.loads(x) for x in (run_a / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "validation" in r] == [0, 2, 4]
    assert {"val/mse", "val/drift"} <= set(records[0]["validation"])
    # Half the run, then resume: the same weights, EMAs and Adam moments as run a.
    assert main([*start, "--outdir", str(tmp_path / "b"), *common, "--set", "iterations=2"]) == 0
    run_b = tmp_path / "b/00000-finetune"
    assert [s for s, _ in list_checkpoints(run_b)] == [0, 2]
    assert main(["train", "--resume", str(run_b), "--set", "iterations=4", "--device", "cpu"]) == 0
    ta, _ = read_checkpoint(run_a / "checkpoints/ckpt-00000004.safetensors")
    tb, _ = read_checkpoint(run_b / "checkpoints/ckpt-00000004.safetensors")
    assert ta.keys() == tb.keys()
    diff = [k for k in ta if not k.startswith("rng.") and not torch.equal(
        ta[k].nan_to_num(), tb[k].nan_to_num())]
    assert not diff, diff[:5]
    cfg_b = json.loads((run_b / "config.json").read_text())
    assert cfg_b["init_from"]["sha256"] == sha256_file(tiny_model_file)
    out = tmp_path / "m.safetensors"
    assert main(["export", str(run_b), "--out", str(out)]) == 0
    prov = load_model(out).provenance
    assert prov["init_from"]["sha256"] == sha256_file(tiny_model_file)
    assert prov["init_from"]["kind"] == "model-file" and "file" not in prov["init_from"]
    assert load_model(out).generator.has_mean_stylemap()
