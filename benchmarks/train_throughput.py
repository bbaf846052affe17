"""Training throughput of StyleMapGAN: iterations/s, images/s and peak memory for a preset.

Runs the real training step (all loss terms, lazy R1 every r1_interval steps, EMA) on random
images held in memory, so the numbers measure the networks, not the disk.

    python benchmarks/train_throughput.py --preset small-64 --batch 16 --perceptual none
    python benchmarks/train_throughput.py --preset small-64 --batch 16 --perceptual random:tiny
    python benchmarks/train_throughput.py --preset official-256 --batch 16 --device cuda --amp bf16
    python benchmarks/train_throughput.py --preset small-64 --set lambda_d_rec=0 --json

``--perceptual random:vgg`` / ``random:alex`` time LPIPS with randomly initialized weights (the
cost of the real networks, without needing the downloaded weights); ``vgg`` / ``alex`` load
the real ones (``stylemapgan weights fetch``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import torch

from stylemapgan.config import get_preset
from stylemapgan.training import (
    PERCEPTUAL_CHOICES,
    DistInfo,
    TrainConfig,
    Trainer,
    parse_overrides,
)
from stylemapgan.utils import resolve_device


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
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model_changes, train_changes = parse_overrides(args.overrides)
    model = get_preset(args.preset)
    if model_changes:
        model = model.replace(**model_changes)
    cfg = TrainConfig(**{"batch_size": args.batch, "perceptual": args.perceptual, "amp": args.amp,
                         "workers": 0, "val_images": 0, **train_changes})
    trainer = Trainer(model, cfg, RandomImages(max(cfg.batch_size * 4, 64), model.size), None,
                      dist_info=DistInfo(device=device))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        trainer.train_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    cpu0 = time.process_time()
    for _ in range(args.iters):
        t0 = time.perf_counter()
        trainer.train_step()
        sync()
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    total = sum(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        peak_what = "peak CUDA memory allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        peak_what = "peak process RSS"
    result = {
        "preset": args.preset, "batch": cfg.batch_size, "perceptual": cfg.perceptual,
        "precision": str(trainer.amp_dtype or torch.float32).replace("torch.", ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "iterations": args.iters, "sec_per_iter": total / args.iters,
        "iters_per_sec": args.iters / total, "images_per_sec": args.iters * cfg.batch_size / total,
        "fastest_sec_per_iter": min(times), "cpu_sec_per_iter": cpu / args.iters,
        "peak_memory_mib": round(peak, 1),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['preset']}  batch {result['batch']}  perceptual {result['perceptual']}  "
          f"precision {result['precision']}  on {result['device']}  (torch {result['torch']})")
    print(f"  {result['sec_per_iter']:.3f} s/iter  {result['iters_per_sec']:.3f} it/s  "
          f"{result['images_per_sec']:.1f} images/s  (mean of {args.iters}; fastest "
          f"{result['fastest_sec_per_iter']:.3f} s)")
    if device.type == "cpu":
        # On a shared machine wall time includes waiting for the cores; process CPU time per
        # iteration (all threads) is what an idle machine would need with one thread.
        print(f"  process CPU time {result['cpu_sec_per_iter']:.3f} s/iter")
    print(f"  {peak_what}: {result['peak_memory_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
