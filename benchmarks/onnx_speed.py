"""ONNX Runtime (CPU) against PyTorch for projection + generation, after `stylemapgan export-onnx`.

    stylemapgan export-onnx --model M.safetensors --out onnx/
    python benchmarks/onnx_speed.py --onnx-dir onnx/ --model M.safetensors --batch 1
    stylemapgan export-onnx --out onnx64/         # the embedded model, as without --model here
    python benchmarks/onnx_speed.py --onnx-dir onnx64/

Prints medians after warm-up for the encoder, the generator and both together, for ONNX
Runtime and for PyTorch float32 on the same inputs, with the largest output difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from stylemapgan.formats.checkpoint import default_model_path, load_model
from stylemapgan.metrics import time_calls
from stylemapgan.nn.onnx_export import onnx_session


def median_time(fn, warmup: int, repeats: int) -> float:
    return statistics.median(time_calls(fn, repeats=repeats, warmup=warmup))  # CPU only


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx-dir", required=True)
    p.add_argument("--model", default=None,
                   help="the model file the graphs were exported from (default: the embedded "
                        "model, which export-onnx exports without --model)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    d = Path(args.onnx_dir)
    manifest = d / "manifest.json"
    if not manifest.is_file():
        p.error(f"{manifest} not found: export the graphs first (stylemapgan export-onnx "
                f"--out {d})")
    model_path = args.model or default_model_path()
    model = load_model(model_path)
    cfg = model.config
    exported = json.loads(manifest.read_text()).get("config", {})
    if exported != json.loads(json.dumps(cfg.to_dict())):
        p.error(f"the graphs in {d} were exported from another model than {model_path}; pass "
                "--model with the file they were exported from")
    enc = onnx_session(d / "encoder.onnx", args.threads)
    gen = onnx_session(d / "generator.onnx", args.threads)
    x = torch.rand(args.batch, 3, cfg.size, cfg.size) * 2 - 1
    xn = x.numpy()
    wn = enc.run(None, {"images": xn})[0]
    w = torch.from_numpy(wn)

    with torch.inference_mode():
        rows = {
            "encoder": (median_time(lambda: enc.run(None, {"images": xn}), args.warmup, args.repeats),
                        median_time(lambda: model.encoder(x), args.warmup, args.repeats)),
            "generator": (median_time(lambda: gen.run(None, {"stylemap": wn}), args.warmup, args.repeats),
                          median_time(lambda: model.generator(w), args.warmup, args.repeats)),
        }
        both_ort = median_time(lambda: gen.run(None, {"stylemap": enc.run(None, {"images": xn})[0]}),
                               args.warmup, args.repeats)
        both_pt = median_time(lambda: model.reconstruct(x), args.warmup, args.repeats)
        diff = float(np.abs(gen.run(None, {"stylemap": enc.run(None, {"images": xn})[0]})[0]
                            - model.reconstruct(x).numpy()).max())
    rows["projection + generation"] = (both_ort, both_pt)
    print(f"{cfg.size}px {cfg.stylemap_size}x{cfg.stylemap_size}, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'stage':26s} {'ONNX Runtime s':>15s} {'PyTorch s':>10s} {'ratio':>6s}")
    for name, (o, t) in rows.items():
        print(f"{name:26s} {o:15.4f} {t:10.4f} {t / o:6.2f}")
    print(f"max |ONNX Runtime - PyTorch| on the reconstruction: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
