"""The EMA warm-up on a short run: validation reconstruction of the EMA networks with the fixed
decay (``ema_rampup=0``, as before) and with the warm-up (``ema_rampup=0.05``, the default).

The EMA never feeds back into training, so one run serves both: the script trains once (the
raw networks), keeps two EMA copies of G and E (one per rule) and validates both, and the raw
networks, every ``--val-every`` iterations. It prints a table and can write it as JSON.

    python benchmarks/ema_warmup.py --data data/avatars64/train --val-data data/avatars64/val \\
        --preset small-64 --set channel_cap=32 --iterations 1500 --val-every 100 --threads 2

Training settings come from ``--set`` as in ``stylemapgan train`` (``perceptual`` defaults to
``none`` here, so no LPIPS weights are needed).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from stylemapgan.config import get_preset
from stylemapgan.data import open_dataset
from stylemapgan.errors import StyleMapGANError
from stylemapgan.files import atomic_write
from stylemapgan.training import (
    DistInfo,
    TrainConfig,
    Trainer,
    ema_decay_at,
    ema_update,
    parse_overrides,
)
from stylemapgan.utils import cpu_name, resolve_device


@torch.no_grad()
def val_mse(g: torch.nn.Module, e: torch.nn.Module, images: torch.Tensor, batch: int) -> float:
    total = 0.0
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        total += (g(e(x)).float() - x).square().flatten(1).mean(1).sum().item()
    return total / len(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training images (folder, .zip or LMDB)")
    p.add_argument("--val-data", required=True, help="held-out images for validation")
    p.add_argument("--val-images", type=int, default=64, help="held-out images used (default 64)")
    p.add_argument("--preset", default="small-64")
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--rampup", type=float, default=0.05, help="the warm-up compared (default 0.05)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.val_every < 1 or args.val_images < 1 or args.rampup <= 0:
        p.error("--iterations, --val-every and --val-images must be >= 1 and --rampup > 0")
    if args.json and Path(args.json).exists():
        p.error(f"--json {args.json} already exists; give a new file (nothing is overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model_changes, train_changes = parse_overrides(args.overrides)
    model = get_preset(args.preset).replace(**model_changes)
    cfg = TrainConfig(**{"perceptual": "none", "workers": 0, "val_images": 0, "log_every": 0,
                         **train_changes, "iterations": args.iterations,
                         "ema_rampup": args.rampup})
    data = open_dataset(args.data, model.size)
    val = open_dataset(args.val_data, model.size)
    images = torch.stack([val[i] for i in range(min(args.val_images, len(val)))]).to(device)
    trainer = Trainer(model, cfg, data, None, dist_info=DistInfo(device=device))
    # The fixed-decay EMA: a second copy from the same initialization, updated after each step.
    g_fixed, e_fixed = copy.deepcopy(trainer.g_ema), copy.deepcopy(trainer.e_ema)

    print(f"{args.preset} {' '.join(args.overrides)}  batch {cfg.batch_size}  ema_decay "
          f"{cfg.ema_decay}  on {device} ({cpu_name()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}; validation MSE of {len(images)} held-out images")
    header = f"{'step':>6} {'fixed decay':>12} {'warm-up':>12} {'raw networks':>13} {'decay':>8}"
    print(header)
    rows = []
    t0 = time.perf_counter()
    while trainer.step < args.iterations:
        trainer.train_step()
        ema_update(g_fixed, trainer.generator, cfg.ema_decay)
        ema_update(e_fixed, trainer.encoder, cfg.ema_decay)
        if trainer.step % args.val_every == 0 or trainer.step == args.iterations:
            row = {"step": trainer.step,
                   "fixed": val_mse(g_fixed, e_fixed, images, cfg.batch_size),
                   "warmup": val_mse(trainer.g_ema, trainer.e_ema, images, cfg.batch_size),
                   "raw": val_mse(trainer.generator, trainer.encoder, images, cfg.batch_size),
                   "decay": ema_decay_at(trainer.step - 1, cfg.batch_size, cfg.ema_decay,
                                         args.rampup),
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"{row['step']:>6} {row['fixed']:>12.4f} {row['warmup']:>12.4f} "
                  f"{row['raw']:>13.4f} {row['decay']:>8.5f}", flush=True)
    if args.json:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2),
                           encoding="utf-8")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StyleMapGANError as exc:  # bad settings or data: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
