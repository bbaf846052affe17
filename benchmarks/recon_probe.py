"""Reconstruction probe: can a training recipe fit a few images, and do their colours drift?

Trains on the first ``--images`` images of ``--data`` (a small set the networks see again and
again) and, every ``--every`` iterations, reconstructs those same images with the raw and the EMA
networks: MSE (images in [-1, 1], reconstructions clamped as the metrics do), the mean signed
error per channel (R, G, B; negative = darker) and the drift (the mean over images and
channels of the absolute per-image, per-channel mean error). A recipe that learns
reconstruction well drives all three towards 0; one whose MSE stalls or whose signed error
stays away from 0 holds the model back (the default-model issue's colour drift).

    python benchmarks/recon_probe.py --data data/avatars64/train --images 32 --iterations 400 \\
        --every 50 --threads 1 --set lambda_adv=0 --set lambda_w_rec=0 --set lambda_e_adv=0 \\
        --set lambda_d_rec=0
    python benchmarks/recon_probe.py --data data/avatars64/train --init-from avatars64.safetensors

Settings come from ``--set`` as in ``stylemapgan train`` (defaults: the default model's recipe,
preset ``small-64`` with ``channel_cap=64``, ``perceptual=alex`` when its weights are cached,
else ``none``). Prints the CPU model beside the timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from stylemapgan.config import get_preset
from stylemapgan.data import open_dataset
from stylemapgan.errors import StyleMapGANError
from stylemapgan.files import atomic_write
from stylemapgan.metrics import colour_errors
from stylemapgan.training import DistInfo, TrainConfig, Trainer, parse_overrides
from stylemapgan.training.init import read_initial_weights
from stylemapgan.utils import cpu_name, resolve_device


@torch.no_grad()
def measure(g: torch.nn.Module, e: torch.nn.Module, images: torch.Tensor, batch: int) -> dict:
    recs = torch.cat([g(e(images[i:i + batch])).float().clamp(-1, 1)
                      for i in range(0, len(images), batch)])
    err = colour_errors(images, recs)
    return {"mse": err["mse"], "drift": err["drift"], "signed_rgb": err["signed"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training images (folder, .zip or LMDB)")
    p.add_argument("--images", type=int, default=32, help="images to fit (default 32)")
    p.add_argument("--preset", default="small-64")
    p.add_argument("--init-from", default=None,
                   help="start from a model file / checkpoint (as `train --init-from`)")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--every", type=int, default=50, help="measure every N iterations")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = p.parse_args(argv)
    if min(args.iterations, args.every, args.images) < 1:
        p.error("--iterations, --every and --images must be >= 1")
    if args.json and Path(args.json).exists():
        p.error(f"--json {args.json} already exists; give a new file (nothing is overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model_changes, train_changes = parse_overrides(args.overrides)
    init = read_initial_weights(args.init_from) if args.init_from else None
    if init is not None:
        model = init.config.replace(**model_changes)
    else:
        model = get_preset(args.preset).replace(**{"channel_cap": 64, **model_changes})
    if "perceptual" not in train_changes:
        from stylemapgan.formats.weights import weights_path

        try:
            weights_path("lpips-alex", verify=False)
            train_changes["perceptual"] = "alex"
        except StyleMapGANError:
            train_changes["perceptual"] = "none"
    cfg = TrainConfig(**{"workers": 0, "val_images": 0, "log_every": 0,
                         **({"ema_rampup": 0.0} if init is not None else {}),
                         **train_changes, "iterations": args.iterations})
    data = open_dataset(args.data, model.size)
    n = min(args.images, len(data))
    subset = torch.utils.data.Subset(data, range(n))
    images = torch.stack([subset[i] for i in range(n)]).to(device)
    trainer = Trainer(model, cfg, subset, None, dist_info=DistInfo(device=device),
                      init_weights=init)
    print(f"{cpu_name()}, {torch.get_num_threads()} thread(s), device {device}, precision "
          f"{str(trainer.amp_dtype or torch.float32).replace('torch.', '')}; {n} images, "
          f"batch {cfg.batch_size}, perceptual {cfg.perceptual}; settings: "
          f"{' '.join(args.overrides) or '(defaults)'}")
    print(f"{'iter':>6} {'s/iter':>7} {'MSE raw':>8} {'MSE ema':>8} {'drift raw':>9} "
          f"{'drift ema':>9}  signed R,G,B (raw)")
    rows = []
    t_total = 0.0
    for step in range(0, args.iterations + 1):
        if step:
            t0 = time.perf_counter()
            trainer.train_step()
            t_total += time.perf_counter() - t0
        if step % args.every == 0 or step == args.iterations:
            raw = measure(trainer.generator, trainer.encoder, images, cfg.batch_size)
            ema = measure(trainer.g_ema, trainer.e_ema, images, cfg.batch_size)
            spi = t_total / step if step else 0.0
            rows.append({"step": step, "sec_per_iter": spi, "raw": raw, "ema": ema})
            print(f"{step:>6} {spi:>7.2f} {raw['mse']:>8.4f} {ema['mse']:>8.4f} "
                  f"{raw['drift']:>9.4f} {ema['drift']:>9.4f}  "
                  + ", ".join(f"{v:+.3f}" for v in raw["signed_rgb"]), flush=True)
    if args.json:
        result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "images": n,
                  "settings": args.overrides, "init_from": args.init_from,
                  "train_config": cfg.to_dict(), "rows": rows}
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StyleMapGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
