"""Reliability of training runs: kills, divergence, resuming, run folder ownership.

Tiny runs only (preset tiny-32, a handful of 32x32 images, a few steps, one thread); the
subprocess tests start `python -m stylemapgan.cli train` and kill it. The module imports only
names older versions had too, so each test can be run against older code and seen to fail.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_images
from stylemapgan.cli import main
from stylemapgan.files import LOCK_NAME
from stylemapgan.training import list_checkpoints, read_checkpoint
from test_training import make_trainer


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny_args(data, outdir, *sets):
    args = ["train", "--data", str(data), "--preset", "tiny-32", "--outdir", str(outdir),
            "--device", "cpu", "--threads", "1"]
    for s in ("batch_size=2", "perceptual=none", "workers=0", "val_images=0", "image_every=0",
              "amp=off", "log_every=1", *sets):
        args += ["--set", s]
    return args


def resume_args(run, *sets):
    args = ["train", "--resume", str(run), "--device", "cpu", "--threads", "1"]
    for s in sets:
        args += ["--set", s]
    return args


def log_steps(run):
    records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "losses" in r]


def temp_files(run):
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*.tmp"))


def assert_all_finite(path):
    """Every tensor of a checkpoint is finite (a generator's mean_stylemap may be all NaN: the
    'not computed yet' marker)."""
    tensors, _ = read_checkpoint(path)
    for k, t in tensors.items():
        if not t.is_floating_point():
            continue
        if k.endswith("mean_stylemap") and bool(t.isnan().all()):
            continue
        assert bool(torch.isfinite(t).all()), f"{path.name}: {k} holds NaN/Inf"


def start_training(tmp_path, *sets, data=None):
    """A `stylemapgan train` subprocess (new run in tmp_path/runs) and its run folder path."""
    data = data or write_images(tmp_path / "imgs", n=6, size=32)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    err = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 - lives as long as the process
    cmd = [sys.executable, "-m", "stylemapgan.cli",
           *tiny_args(data, tmp_path / "runs", "iterations=1000000", *sets)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    return proc, tmp_path / "runs" / "00000-tiny-32"


def wait_for(predicate, proc, timeout=60.0, what="the training process"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"{what} exited early with {proc.returncode}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def kill(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# --------------------------------------------------------------------------- 1. temp files
def test_resume_removes_leftover_checkpoint_temp_files(tmp_path, capsys, caplog):
    data = write_images(tmp_path / "imgs", n=6, size=32)
    assert main(tiny_args(data, tmp_path / "runs", "iterations=2", "checkpoint_every=1",
                          "image_every=1")) == 0
    run = tmp_path / "runs" / "00000-tiny-32"
    assert temp_files(run) == []  # a normal run leaves none
    ckpts = run / "checkpoints"
    # What kill -9 during atomic writes leaves behind, and files that are not ours.
    leftovers = [ckpts / ".ckpt-00000003.safetensors.k2j4_x9a.tmp",
                 ckpts / ".ckpt-00000003.safetensors.abcdefgh.tmp",
                 run / ".log.jsonl.qwertyui.tmp", run / "images" / ".samples-00000003.png.zz.tmp"]
    foreign = [ckpts / "notes.tmp", ckpts / ".other.safetensors.x.tmp", run / "mine.tmp"]
    for p in leftovers + foreign:
        p.write_bytes(b"partial")
    caplog.set_level(logging.WARNING, logger="stylemapgan.training")
    assert main(resume_args(run, "iterations=3")) == 0
    assert temp_files(run) == sorted(p.relative_to(run).as_posix() for p in foreign)
    assert "removed 4 temporary file(s) left by an interrupted write" in caplog.text
    assert [s for s, _ in list_checkpoints(run)][-1] == 3
    capsys.readouterr()


def _writing(name):
    """The temp file of a checkpoint write from step 3 on (so that complete ones exist)."""
    return name.endswith(".tmp") and name.startswith(".ckpt-") and int(name[6:14]) >= 3


def test_kill_9_while_writing_a_checkpoint_then_resume(tmp_path, capsys, caplog):
    """A real kill -9 in the middle of a checkpoint write: the process is stopped (SIGSTOP)
    when a temp file is seen and killed only if it is still there, so the kill lands inside
    the write every time. Resume then removes the temp file and logs every step once."""
    proc, run = start_training(tmp_path, "checkpoint_every=1", "keep_checkpoints=2")
    ckpts = run / "checkpoints"
    caught = None
    try:
        end = time.monotonic() + 90
        while caught is None and time.monotonic() < end and proc.poll() is None:
            names = os.listdir(ckpts) if ckpts.is_dir() else []
            if any(_writing(n) for n in names):
                os.kill(proc.pid, signal.SIGSTOP)
                tmps = [n for n in os.listdir(ckpts) if _writing(n)]
                if tmps:
                    caught = tmps[0]
                    os.kill(proc.pid, signal.SIGKILL)
                else:
                    os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.0005)
    finally:
        kill(proc)
    assert caught, "never saw a checkpoint being written"
    assert (ckpts / caught).exists()  # the leftover of the killed write
    killed_at = int(caught.split("-")[1].split(".")[0])
    assert killed_at in log_steps(run)  # step k was logged before its checkpoint was cut off
    caplog.set_level(logging.WARNING, logger="stylemapgan.training")
    assert main(resume_args(run, f"iterations={killed_at + 1}")) == 0
    assert temp_files(run) == []
    assert "removed 1 temporary file(s)" in caplog.text
    assert log_steps(run) == list(range(1, killed_at + 2))  # each step exactly once
    assert [s for s, _ in list_checkpoints(run)] == [killed_at, killed_at + 1]
    assert_all_finite(run / f"checkpoints/ckpt-{killed_at:08d}.safetensors")
    capsys.readouterr()


# --------------------------------------------------------------------------- 2. divergence
def test_diverging_run_names_a_checkpoint_that_is_all_finite(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=6, size=32)
    # lr 1.5 on tiny-32: Adam's second moments overflow to Inf in iteration 2 while every
    # loss is still finite (the old code wrote that state as a checkpoint and called it good).
    assert main(tiny_args(data, tmp_path / "runs", "iterations=8", "checkpoint_every=1",
                          "lr=1.5")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    run = tmp_path / "runs" / "00000-tiny-32"
    assert err.startswith("error: ") and "NaN/Inf" in err and "training stopped" in err
    assert "the last good checkpoint is " in err and "resume from it with --resume" in err
    named = Path(err.split("the last good checkpoint is ")[1].split(" (step")[0])
    assert named.parent == run / "checkpoints" and named.is_file()
    assert_all_finite(named)
    for _, path in list_checkpoints(run):  # nothing non-finite was written at all
        assert_all_finite(path)


def test_resume_with_lower_lr_from_the_named_checkpoint_runs(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=6, size=32)
    assert main(tiny_args(data, tmp_path / "runs", "iterations=2", "checkpoint_every=1")) == 0
    run = tmp_path / "runs" / "00000-tiny-32"
    # Going on with lr 3 diverges within a few iterations.
    assert main(resume_args(run, "lr=3", "iterations=8", "checkpoint_every=100")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    named = run / "checkpoints/ckpt-00000002.safetensors"
    assert "NaN/Inf" in err and f"the last good checkpoint is {named} (step 2)" in err
    assert_all_finite(named)
    # Following the advice works: resume from it with a lower lr.
    assert main(resume_args(run, "lr=0.001", "iterations=4", "checkpoint_every=1")) == 0
    assert f"resuming from {named} (step 2)" in capsys.readouterr().err
    assert [s for s, _ in list_checkpoints(run)] == [2, 3, 4]  # keep_checkpoints=3
    last = run / "checkpoints/ckpt-00000004.safetensors"
    assert_all_finite(last)
    _, state = read_checkpoint(last)
    assert state["optimizers"]["g"]["param_groups"][0]["lr"] == 0.001
    # The abandoned lr=3 session is gone from the history, the change that stayed is there.
    history = json.loads((run / "config.json").read_text())["history"]
    assert history == [{"step": 2, "key": "iterations", "old": 2, "new": 4},
                       {"step": 2, "key": "lr", "old": 0.002, "new": 0.001}]
    assert log_steps(run) == [1, 2, 3, 4]


def test_diverged_first_step_writes_no_checkpoint(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=6, size=32)
    # lr 3, batch 4: Inf in Adam's second moments after iteration 1, losses still finite.
    assert main(tiny_args(data, tmp_path / "runs", "iterations=8", "checkpoint_every=1",
                          "lr=3", "batch_size=4")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    run = tmp_path / "runs" / "00000-tiny-32"
    assert err.startswith("error: the training state holds NaN/Inf values after iteration 1")
    assert "exp_avg_sq" in err and "no checkpoint was written before that" in err
    assert list_checkpoints(run) == []
    # --resume with a lower lr starts the run again from step 0.
    assert main(resume_args(run, "lr=0.002", "iterations=2")) == 0
    assert "no checkpoint was written yet; training it again from step 0" in capsys.readouterr().err
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]
    assert log_steps(run) == [1, 2]


def test_resume_accepts_lr_and_amp_changes_and_records_them(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=6, size=32)
    args = tiny_args(data, tmp_path / "runs", "iterations=2", "checkpoint_every=1")
    args[args.index("amp=off")] = "amp=auto"  # float32 on this CPU
    assert main(args) == 0
    run = tmp_path / "runs" / "00000-tiny-32"
    assert main(resume_args(run, "lr=0.001", "amp=off", "iterations=3")) == 0
    err = capsys.readouterr().err
    assert "changed at step 2: lr 0.002 -> 0.001" in err and "amp 'auto' -> 'off'" in err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["amp"] == "off"
    at2 = [{"step": 2, "key": "iterations", "old": 2, "new": 3},
           {"step": 2, "key": "lr", "old": 0.002, "new": 0.001},
           {"step": 2, "key": "amp", "old": "auto", "new": "off"}]
    assert cfg["history"] == at2
    _, state = read_checkpoint(run / "checkpoints/ckpt-00000003.safetensors")
    groups = state["optimizers"]
    assert groups["g"]["param_groups"][0]["lr"] == groups["e"]["param_groups"][0]["lr"] == 0.001
    assert groups["d"]["param_groups"][0]["lr"] == pytest.approx(0.001 * 16 / 17)
    assert state["history"] == cfg["history"]
    # A later resume keeps the earlier changes, and one from the same checkpoint again
    # replaces (does not repeat) what the abandoned session recorded there.
    assert main(resume_args(run, "lambda_adv=0.5", "iterations=4")) == 0
    (run / "checkpoints/ckpt-00000004.safetensors").unlink()  # as if killed before it
    assert main(resume_args(run, "lambda_adv=0.25", "iterations=4")) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["history"] == [*at2, {"step": 3, "key": "iterations", "old": 3, "new": 4},
                              {"step": 3, "key": "lambda_adv", "old": 1.0, "new": 0.25}]
    assert log_steps(run) == [1, 2, 3, 4]
    capsys.readouterr()


@pytest.mark.parametrize("sets, msg", [
    (["stylemap_size=4"], "error: --resume keeps the run's model: stylemap_size cannot change on "
                          "resume (the model settings define the networks' shapes)"),
    (["batch_size=4"], "error: cannot resume with changed settings batch_size (2 -> 4): "),
    (["seed=1", "lr=0.001"], "error: cannot resume with changed settings seed (0 -> 1): "),
    (["val_images=2"], "error: cannot resume with changed settings val_images (0 -> 2): "),
])
def test_resume_still_refuses_shape_and_data_order_changes(tmp_path, capsys, sets, msg):
    data = write_images(tmp_path / "imgs", n=6, size=32)
    assert main(tiny_args(data, tmp_path / "runs", "iterations=1", "checkpoint_every=1")) == 0
    run = tmp_path / "runs" / "00000-tiny-32"
    before = (run / "config.json").read_text()
    capsys.readouterr()
    assert main(resume_args(run, *sets, "iterations=2")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(msg), err
    assert (run / "config.json").read_text() == before
    assert [s for s, _ in list_checkpoints(run)] == [1]


# --------------------------------------------------------------------------- 3. no checkpoint yet
def test_resume_before_the_first_checkpoint_starts_again_from_step_0(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=6, size=32)
    # Killed before its first checkpoint: a run folder with config.json and log.jsonl only.
    assert main(tiny_args(data, tmp_path / "runs", "iterations=3", "checkpoint_every=0")) == 0
    run = tmp_path / "runs" / "00000-tiny-32"
    assert list_checkpoints(run) == [] and log_steps(run) == [1, 2, 3]
    capsys.readouterr()
    assert main(resume_args(run, "checkpoint_every=3")) == 0
    err = capsys.readouterr().err
    assert f"{run}: no checkpoint was written yet; training it again from step 0 with its " \
           "recorded config" in err
    assert log_steps(run) == [1, 2, 3]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["history"] == [{"step": 0, "key": "checkpoint_every", "old": 0, "new": 3}]
    # The same weights as a run that was never interrupted.
    assert main(tiny_args(data, tmp_path / "runs", "iterations=3", "checkpoint_every=3")) == 0
    again, _ = read_checkpoint(run / "checkpoints/ckpt-00000003.safetensors")
    straight, _ = read_checkpoint(tmp_path / "runs/00001-tiny-32/checkpoints/ckpt-00000003.safetensors")
    rng = {k for k in straight if k.startswith("rng.")}
    assert again.keys() == straight.keys()
    assert all(torch.equal(again[k].nan_to_num(), straight[k].nan_to_num())
               for k in straight if k not in rng)


def test_no_checkpoint_messages_tell_a_run_folder_from_any_folder(tmp_path, capsys):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    assert main(resume_args(folder)) == 2
    assert "no config.json there" in capsys.readouterr().err
    # A run folder without checkpoints: export says what happened.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(["export", str(run), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint was written yet (the run stopped before its first checkpoint)" in err
    from stylemapgan.training import NoCheckpointError  # (new; imported here, see the docstring)

    with pytest.raises(NoCheckpointError, match="no checkpoints found .*is this a training run"):
        make_trainer(folder, resume=True)


# --------------------------------------------------------------------------- 4. log rollback
def test_resume_rolls_back_log_and_tensorboard_to_the_checkpoint(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr = make_trainer(tmp_path / "r", iterations=4, checkpoint_every=2)
    tr.train()
    run = tmp_path / "r"
    # As if killed after step 4 was logged but before its checkpoint, mid-way through a line.
    (run / "checkpoints/ckpt-00000004.safetensors").unlink()
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 5, "images_seen": 20, "loss')
    time.sleep(1.1)  # a new event file name (they carry the second)
    resumed = make_trainer(run, resume=True, iterations=5, checkpoint_every=2)
    assert resumed.step == 2
    resumed.train()
    lines = (run / "log.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines]
    assert steps == [1, 2, 3, 4, 5]
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/d")] == [1, 2, 3, 4, 5]
    capsys.readouterr()


def test_resume_rolls_back_replayed_log_lines(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", n=6, size=32)
    assert main(tiny_args(data, tmp_path / "runs", "iterations=4", "checkpoint_every=2",
                          "image_every=1")) == 0
    run = tmp_path / "runs" / "00000-tiny-32"
    # The process got to step 4 (logged, images written) but its checkpoint 4 never finished.
    (run / "checkpoints/ckpt-00000004.safetensors").unlink()
    assert main(resume_args(run, "iterations=5")) == 0
    assert log_steps(run) == [1, 2, 3, 4, 5]
    assert (run / "images/samples-00000004.png").exists()  # written again by the resumed run
    capsys.readouterr()


# --------------------------------------------------------------------------- 5. orphaned workers
def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_dataloader_workers_die_with_a_killed_training_process(tmp_path):
    proc, run = start_training(tmp_path, "workers=2", "checkpoint_every=0", "log_every=0")
    try:
        workers = wait_for(lambda: (c := _children(proc.pid)) and len(c) >= 2 and c, proc)
        time.sleep(0.3)  # let them work
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        end = time.monotonic() + 2.0
        while time.monotonic() < end and any(_alive(w) for w in workers):
            time.sleep(0.02)
        alive = [w for w in workers if _alive(w)]
    finally:
        kill(proc)
    for w in alive:  # clean up after a failure
        os.kill(w, signal.SIGKILL)
    assert not alive, f"DataLoader workers {alive} outlived the killed training process by 2 s"


# --------------------------------------------------------------------------- 6. one writer
def test_second_training_process_on_the_same_run_folder_is_refused(tmp_path, capsys):
    proc, run = start_training(tmp_path, "checkpoint_every=0", "log_every=0")
    try:
        wait_for(lambda: (run / LOCK_NAME).is_file() and (run / "config.json").is_file(), proc)
        log_before = (run / "config.json").read_text()
        t0 = time.monotonic()
        assert main(resume_args(run, "iterations=1")) == 2
        took = time.monotonic() - t0
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {run} is in use by another stylemapgan process "
                              f"(pid {proc.pid}, `stylemapgan train --data"), err
        assert "--outdir" in err and "--out " not in err, err
        assert took < 10, took
        assert (run / "config.json").read_text() == log_before
        assert proc.poll() is None  # the first one trains on
    finally:
        kill(proc)
    # The lock dies with its owner (kill -9 included): the run folder is free again.
    assert main(resume_args(run, "iterations=1", "checkpoint_every=1")) == 0
    assert [s for s, _ in list_checkpoints(run)] == [1]
    assert not (run / LOCK_NAME).exists()
    capsys.readouterr()
