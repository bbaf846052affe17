"""Results do not depend on the number of processes: 2 gloo processes with global batch B train
what 1 process trains with batch B (issue 24).

Each sample's noise, flip and image come from (seed, step, global sample index), each process
averages its phases' gradients over the processes by hand (R1's double backward included), and
the processes take interleaved samples so that the discriminator's minibatch-stddev groups are
whole on each process (the group, 4, divides the per-process batch, 4)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import assert_close_to_scale
from stylemapgan.config import PRESETS
from stylemapgan.training import DistInfo, TrainConfig, Trainer, shutdown_distributed

STEPS = 3
# R1 runs at steps 0 and 2 (lazy, interval 2); every loss term is on, LPIPS included.
CONFIG = dict(iterations=STEPS, batch_size=8, r1_interval=2, workers=0, val_images=0,
              image_every=0, val_every=0, checkpoint_every=0, log_every=1, perceptual="none",
              amp="off", flip=True)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(20, 3, 32, 32, generator=g) * 2 - 1


def _trainer(dist_info):
    from stylemapgan.nn.perceptual import LPIPS

    return Trainer(PRESETS["tiny-32"], TrainConfig(**CONFIG), _data(), None, dist_info=dist_info,
                   perceptual=LPIPS.random_init("tiny", seed=0))


def _state(tr):
    out = {}
    for name in ("generator", "encoder", "discriminator", "g_ema", "e_ema"):
        for k, v in getattr(tr, name).state_dict().items():
            out[f"{name}.{k}"] = v.detach().clone()
    for name in ("g_opt", "e_opt", "d_opt"):
        for pid, st in getattr(tr, name).state_dict()["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    out[f"{name}.{pid}.{k}"] = v.clone()
    return out


def _train(tr):
    """Train; the losses each step reported (the per-interval reduction over processes)."""
    seen = []
    tr.train(lambda report: seen.append(report.losses))
    return seen


def _worker(rank, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    finished = False
    try:
        tr = _trainer(DistInfo(rank=rank, world_size=2))
        assert tr.local_batch == 4
        seen = _train(tr)
        tr.check_ranks_in_sync()  # the hand-written all-reduce keeps the ranks identical
        if rank == 0:
            torch.save({"state": _state(tr), "losses": seen}, out_file)
        finished = True
    finally:
        # As `stylemapgan train` ends: a barrier, then the teardown (without the barrier, a
        # rank that closes its connections first can make the other abort in gloo's C++).
        shutdown_distributed(wait=finished)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_train_what_one_process_trains(tmp_path):
    out_file = tmp_path / "rank0.pt"
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(_worker, args=(str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    two = torch.load(out_file)
    one_tr = _trainer(DistInfo())
    one_losses = _train(one_tr)
    one = _state(one_tr)
    assert len(one_losses) == len(two["losses"]) == STEPS
    assert "r1" in one_losses[0] and "r1" in one_losses[2] and "r1" not in one_losses[1]
    for step, (a, b) in enumerate(zip(two["losses"], one_losses, strict=True)):
        assert a.keys() == b.keys()
        for k in a:
            assert_close_to_scale(torch.tensor(a[k]), torch.tensor(b[k]), 1e-4,
                                  f"loss {k} at step {step + 1}")
    assert two["state"].keys() == one.keys()
    for k, v in one.items():
        if v.is_floating_point() and not bool(v.isnan().all()):  # mean_stylemap: unset, NaN
            assert_close_to_scale(two["state"][k], v, 1e-3, k)
    # The processes really shared the work: 1 process with the per-process batch differs.
    assert one_losses[0] != _train(Trainer(
        PRESETS["tiny-32"], TrainConfig(**{**CONFIG, "batch_size": 4}), _data(), None,
        perceptual=one_tr.percept))[0]


def test_processes_take_interleaved_samples_of_the_same_global_batch():
    from stylemapgan.training import StepBatchSampler
    from stylemapgan.training.sampling import local_rows

    idx = list(range(100, 120))
    one = StepBatchSampler(idx, 8, 0, 1, seed=3, interleaved=True)
    two = [StepBatchSampler(idx, 8, r, 2, seed=3, interleaved=True) for r in range(2)]
    for step in range(5):
        merged = [None] * 8
        for r in range(2):
            merged[local_rows(r, 2)] = two[r].batch(step)
        assert merged == one.batch(step) == StepBatchSampler(idx, 8, 0, 1, seed=3).batch(step)
    assert two[0].batch(0) == one.batch(0)[0::2] and two[1].batch(0) == one.batch(0)[1::2]


def test_losses_are_read_once_per_interval_and_nan_names_its_iteration():
    from stylemapgan.training.distributed import LossMeter

    meter = LossMeter.on(torch.device("cpu"))
    meter.add({"d": torch.tensor(1.0), "adv": torch.tensor(2.0)}, 1)
    meter.add({"d": torch.tensor(3.0), "adv": torch.tensor(4.0), "r1": torch.tensor(5.0)}, 2)
    means, bad_at, bad = meter.reduce(DistInfo())
    assert means == {"d": 2.0, "adv": 3.0, "r1": 5.0} and bad_at is None and bad == []
    meter.add({"d": torch.tensor(1.0), "adv": torch.tensor(float("inf"))}, 3)
    meter.add({"d": torch.tensor(float("nan")), "adv": torch.tensor(float("nan"))}, 4)
    _, bad_at, bad = meter.reduce(DistInfo())
    assert bad_at == 3 and bad == ["adv"]
    assert meter.reduce(DistInfo())[0] == {}  # a new interval
    # A check between log lines leaves the interval's sums alone.
    meter = LossMeter.on(torch.device("cpu"))
    meter.add({"d": torch.tensor(1.0)}, 1)
    assert meter.reduce(DistInfo(), end_interval=False) == ({}, None, [])
    meter.add({"d": torch.tensor(3.0)}, 2)
    assert meter.reduce(DistInfo())[0] == {"d": 2.0}


def test_progress_reports_the_last_interval_means(tmp_path):
    cfg = TrainConfig(**{**CONFIG, "iterations": 4, "log_every": 2, "batch_size": 4,
                         "r1_interval": 16})
    tr = Trainer(PRESETS["tiny-32"], cfg, _data(), None)
    seen = _train(tr)
    assert seen[0] == {} and seen[1] == seen[2] != {} and seen[3] != seen[1]


def test_log_lines_average_the_whole_interval_whatever_else_is_due(tmp_path):
    import json

    runs = {}
    for name, every in (("plain", 0), ("checkpoints", 1)):
        cfg = TrainConfig(**{**CONFIG, "iterations": 4, "log_every": 4, "batch_size": 4,
                             "checkpoint_every": every})
        Trainer(PRESETS["tiny-32"], cfg, _data(), tmp_path / name).train()
        runs[name] = [json.loads(x)["losses"]
                      for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    assert runs["plain"] == runs["checkpoints"] and len(runs["plain"]) == 1
