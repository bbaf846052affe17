"""Score hair transplantation against ground truth on the avatar test split.

The ground truth comes from tools/avatars/swap_heads.mjs: avatar A re-rendered with B's head
(hair style / headwear and its colour), everything else of A unchanged. For each pair the edit
mask is the union of A's and B's hair masks, grown by --grow pixels. Compared methods:

* stylemapgan W+ local edit (Eq. 2 on every per-layer stylemap) and W local edit;
* naive pixel copy-paste of B into A inside the mask;
* no edit (A's reconstruction), which shows how much the edit moves toward the target.

Reported per method: MSE against the ground truth (whole image, inside and outside the mask),
and the paper's MSE_src (outside the mask vs A) and MSE_ref (inside vs B); images in [-1, 1].

    node tools/avatars/swap_heads.mjs --out data/hairswap64 --size 64 --pairs "$(python tools/default_model/test_pairs.py)"
    python tools/default_model/evaluate_hair_swap.py --pairs data/hairswap64 --out hair_swap.json --grid hair_swap.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stylemapgan.editing.editor import Editor
from stylemapgan.formats.checkpoint import default_model_path
from stylemapgan.imaging.images import from_uint8, make_grid, save_png, to_uint8


def load(folder: Path, names: list[str]) -> torch.Tensor:
    return torch.cat([from_uint8(np.asarray(Image.open(folder / n).convert("RGB"))) for n in names])


def load_mask(folder: Path, names: list[str]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(Image.open(folder / n).convert("L")) > 127)
                        for n in names])[:, None].float()


def region_mse(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error over the pixels where m = 1 (all channels)."""
    err = ((a - b) ** 2).mean(1, keepdim=True)
    return (err * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="folder written by swap_heads.mjs")
    p.add_argument("--model", default=None, help="model file (default: the embedded one)")
    p.add_argument("--grow", type=int, default=2, help="pixels to grow the hair masks by")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    p.add_argument("--grid", default=None, help="write a PNG of the first 8 pairs here")
    p.add_argument("--write-triples", action="store_true",
                   help="also write PAIRS/mask/*.png (the grown union masks) and PAIRS/triples.jsonl "
                        "for `stylemapgan evaluate --edit-triples`")
    args = p.parse_args(argv)
    root = Path(args.pairs)
    records = json.loads((root / "pairs.json").read_text())
    names = [r["name"] for r in records]
    editor = Editor.load(args.model or default_model_path(), "cpu")
    src, ref, target = load(root / "src", names), load(root / "ref", names), load(root / "target", names)
    mask = torch.maximum(load_mask(root / "mask_src", names), load_mask(root / "mask_ref", names))
    if args.grow:
        k = 2 * args.grow + 1
        mask = F.max_pool2d(mask, k, stride=1, padding=args.grow)
    if args.write_triples:
        (root / "mask").mkdir(exist_ok=True)
        with open(root / "triples.jsonl", "w") as f:
            for i, n in enumerate(names):
                save_png((mask[i, 0].numpy() * 255).astype(np.uint8), root / "mask" / n, overwrite=True)
                f.write(json.dumps({"src": f"src/{n}", "ref": f"ref/{n}", "mask": f"mask/{n}",
                                    "part": "hair"}) + "\n")
    w_src, w_ref = editor.project(src), editor.project(ref)
    outs = {
        "stylemapgan W+ local edit": torch.cat([editor.local_edit(w_src[i:i + 32], w_ref[i:i + 32], mask[i:i + 32], space="wplus")
                                                for i in range(0, len(names), 32)]),
        "stylemapgan W local edit": torch.cat([editor.local_edit(w_src[i:i + 32], w_ref[i:i + 32], mask[i:i + 32], space="w")
                                               for i in range(0, len(names), 32)]),
        "pixel copy-paste": torch.lerp(src, ref, mask),
        "no edit (reconstruction of A)": torch.cat([editor.reconstruct(w_src[i:i + 32]) for i in range(0, len(names), 32)]),
    }
    ones = torch.ones_like(mask)
    results = {"pairs": len(names), "mask_grow_px": args.grow,
               "mask_fraction": float(mask.mean()), "methods": {}}
    print(f"{len(names)} pairs, mask = hair(A) | hair(B) grown by {args.grow} px "
          f"({100 * float(mask.mean()):.1f}% of pixels)")
    print(f"{'method':32s} {'MSE vs target':>13s} {'inside':>8s} {'outside':>8s} {'MSE_src':>8s} {'MSE_ref':>8s}")
    for name, out in outs.items():
        out = out.clamp(-1, 1)
        row = {
            "mse_vs_target": float(region_mse(out, target, ones).mean()),
            "mse_vs_target_inside_mask": float(region_mse(out, target, mask).mean()),
            "mse_vs_target_outside_mask": float(region_mse(out, target, 1 - mask).mean()),
            "mse_src": float(region_mse(out, src, 1 - mask).mean()),
            "mse_ref": float(region_mse(out, ref, mask).mean()),
        }
        results["methods"][name] = row
        print(f"{name:32s} {row['mse_vs_target']:13.4f} {row['mse_vs_target_inside_mask']:8.4f} "
              f"{row['mse_vs_target_outside_mask']:8.4f} {row['mse_src']:8.4f} {row['mse_ref']:8.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if args.grid:
        n = min(8, len(names))
        cols = [src[:n], ref[:n], mask[:n].expand(-1, 3, -1, -1) * 2 - 1, target[:n],
                outs["pixel copy-paste"][:n], outs["stylemapgan W+ local edit"][:n]]
        tiles = np.concatenate([to_uint8(torch.stack([c[i] for c in cols])) for i in range(n)])
        labels = ["A", "B", "mask", "truth", "copy-paste", "W+ edit"]
        save_png(make_grid(tiles, ncols=len(cols), col_labels=labels), args.grid, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
