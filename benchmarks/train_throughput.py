"""Training throughput of StyleMapGAN: iterations/s, images/s and peak memory for a preset.

Runs the real training step (all loss terms, lazy R1 every r1_interval steps, EMA) on random
images held in memory, so the numbers measure the networks, not the disk.

    python benchmarks/train_throughput.py --preset small-64 --batch 16 --perceptual none
    python benchmarks/train_throughput.py --preset small-64 --batch 16 --perceptual random:tiny
    python benchmarks/train_throughput.py --preset official-256 --batch 16 --device cuda --amp bf16
    python benchmarks/train_throughput.py --preset small-64 --set lambda_d_rec=0 --json
    python benchmarks/train_throughput.py --preset small-64 --set channel_cap=64 \
        --perceptual random:alex --compare      # the default model's step, old vs new

``--baseline`` times the previous step code path (G(E(x)) computed separately in the
discriminator and reconstruction phases, as before the two shared it); ``--compare`` times
both in one run, alternating an iteration of each so that a busy machine slows both alike,
and prints the speedup. Both give the same losses and weights (tests/training/test_training.py).

``--perceptual random:vgg`` / ``random:alex`` time LPIPS with randomly initialized weights (the
cost of the real networks, without needing the downloaded weights); ``vgg`` / ``alex`` load
the real ones (``stylemapgan weights fetch``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from stylemapgan.config import get_preset
from stylemapgan.errors import StyleMapGANError
from stylemapgan.metrics.runtime import sync, time_calls
from stylemapgan.training import (
    PERCEPTUAL_CHOICES,
    DistInfo,
    TrainConfig,
    Trainer,
    parse_overrides,
)
from stylemapgan.utils import cpu_name, resolve_device


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small-64")
    p.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    p.add_argument("--iters", type=int, default=16,
                   help="timed iterations (default: 16, so one lazy R1 step is included)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default: 1)")
    p.add_argument("--perceptual", default="none", choices=PERCEPTUAL_CHOICES)
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="autocast precision, as the training setting amp (default: auto)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="model or training setting, as in `stylemapgan train --set`")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--baseline", action="store_true",
                       help="time the previous step code path (G(E(x)) computed twice)")
    which.add_argument("--compare", action="store_true",
                       help="time the previous and the current step side by side in one run")
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--iters and --batch must be >= 1 and --warmup >= 0")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model_changes, train_changes = parse_overrides(args.overrides)
    model = get_preset(args.preset)
    if model_changes:
        model = model.replace(**model_changes)
    cfg = TrainConfig(**{"batch_size": args.batch, "perceptual": args.perceptual, "amp": args.amp,
                         "workers": 0, "val_images": 0, **train_changes})
    data = RandomImages(max(cfg.batch_size * 4, 64), model.size)
    variants = (["baseline", "current"] if args.compare else
                ["baseline"] if args.baseline else ["current"])
    trainers = {}
    for name in variants:
        # The same seed, so both variants train the same networks on the same data.
        trainers[name] = Trainer(model, cfg, data, None, dist_info=DistInfo(device=device))
        trainers[name].share_reconstruction = name == "current"

    for _ in range(args.warmup):
        for trainer in trainers.values():
            trainer.train_step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    cpu: dict[str, float] = dict.fromkeys(trainers, 0.0)
    peaks: dict[str, float] = {}
    for name in trainers:  # the peak memory of each variant alone, before the timing
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            trainers[name].train_step()
            sync(device)
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
    for _ in range(args.iters):
        for name, trainer in trainers.items():
            c0 = time.process_time()
            times[name] += time_calls(trainer.train_step, repeats=1, device=device)
            cpu[name] += time.process_time() - c0
    if device.type == "cuda":
        peak_what = "peak CUDA memory allocated"
    else:
        # One process: the peak RSS covers every variant it ran.
        peak_what = "peak process RSS" + (" (both variants)" if len(trainers) > 1 else "")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        peaks = dict.fromkeys(trainers, rss)
    some = next(iter(trainers.values()))
    results = {}
    for name in trainers:
        total = sum(times[name])
        results[name] = {
            "sec_per_iter": total / args.iters, "iters_per_sec": args.iters / total,
            "images_per_sec": args.iters * cfg.batch_size / total,
            "fastest_sec_per_iter": min(times[name]), "cpu_sec_per_iter": cpu[name] / args.iters,
            "peak_memory_mib": round(peaks[name], 1),
        }
    result = {
        "preset": args.preset, "overrides": args.overrides, "batch": cfg.batch_size,
        "perceptual": cfg.perceptual,
        "precision": str(some.amp_dtype or torch.float32).replace("torch.", ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)",
        "iterations": args.iters, "torch": torch.__version__, "peak_memory": peak_what,
        **({"variants": results} if len(results) > 1 else results[variants[0]]),
    }
    if len(results) > 1:
        result["speedup"] = (results["current"]["iters_per_sec"]
                             / results["baseline"]["iters_per_sec"])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    extra = f"  {' '.join(args.overrides)}" if args.overrides else ""
    print(f"{result['preset']}{extra}  batch {result['batch']}  perceptual {result['perceptual']}  "
          f"precision {result['precision']}  on {result['device']}  (torch {result['torch']})")
    for name, r in results.items():
        label = f"{name:<9}" if len(results) > 1 else ""
        print(f"  {label}{r['sec_per_iter']:.3f} s/iter  {r['iters_per_sec']:.3f} it/s  "
              f"{r['images_per_sec']:.1f} images/s  (mean of {args.iters}; fastest "
              f"{r['fastest_sec_per_iter']:.3f} s)  process CPU {r['cpu_sec_per_iter']:.3f} s/iter"
              f"  {peak_what} {r['peak_memory_mib']:.0f} MiB")
    if "speedup" in result:
        print(f"  speedup of the current step over the previous one: {result['speedup']:.3f}x")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StyleMapGANError as exc:  # bad settings or data: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
