"""``stylemapgan generate``: random images from seeds."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    add_device,
    add_fast,
    add_model,
    add_overwrite,
    add_parser,
    fast_runtime,
    float_in,
    int_in,
    resolve_model,
    writes_folder,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "generate", help="generate random images from seeds",
        description="""
            Generate one image per seed (z drawn from N(0, I) with that seed, so an image does
            not depend on the batch or the device) and a grid of all of them.""",
        examples="""
            stylemapgan generate --model celeba_hq.safetensors --seeds 0-7 --truncation 0.7 --out samples
            stylemapgan generate --model m.safetensors --seeds 3,14,15 --out samples --device cpu
            stylemapgan generate --seeds 0-63 --fast --out samples64""",
    )
    add_model(p)
    p.add_argument("--seeds", default="0-7", help="seeds: 0-7, 1,5,9 or 0-3,10 (default: 0-7)")
    p.add_argument("--truncation", type=float_in(0.0, 2.0), default=1.0,
                   help="pull stylemaps toward the mean: 1 = none, 0.7 = typical (default: 1)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=8,
                   help="images per forward pass, 1..1024 (default: 8)")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    add_device(p)
    add_fast(p)
    add_overwrite(p)
    p.set_defaults(func=writes_folder(run))


def run(args: argparse.Namespace) -> int:
    args.model = resolve_model(args.model)
    from pathlib import Path

    import numpy as np
    import torch
    from tqdm import tqdm

    from stylemapgan.formats.checkpoint import load_model
    from stylemapgan.imaging.images import check_writable, make_grid, save_png, to_uint8
    from stylemapgan.utils import parse_seeds, resolve_device, seeded_normal

    seeds = parse_seeds(args.seeds)
    device = resolve_device(args.device)
    out = Path(args.out)
    targets = [out / f"seed{s:04d}.png" for s in seeds]
    if not args.no_grid:
        targets.append(out / "grid.png")
    check_writable(targets, args.overwrite)
    model = load_model(args.model, device=device)
    g = model.generator
    editor = None
    if args.fast:  # the mapping network in float32, the synthesis through the fast path
        from stylemapgan.editing.editor import Editor

        editor = Editor(model, batch_size=args.batch_size,
                        runtime=fast_runtime(args.fast, device))
    tiles = []
    with torch.inference_mode(), tqdm(total=len(seeds), unit="img", desc="generate") as bar:
        for i in range(0, len(seeds), args.batch_size):
            chunk = seeds[i: i + args.batch_size]
            z = torch.cat([seeded_normal(s, (1, model.config.stylemap_channels)) for s in chunk])
            if editor is None:
                images = to_uint8(g.generate(z.to(device), truncation=args.truncation))
            else:
                w = g.truncate(g.mapping(z.to(device)), args.truncation)
                images = to_uint8(editor.render(w))
            for s, img in zip(chunk, images, strict=True):
                save_png(img, out / f"seed{s:04d}.png", overwrite=args.overwrite)
                tiles.append(img)
            bar.update(len(chunk))
    if not args.no_grid:
        save_png(make_grid(np.stack(tiles)), out / "grid.png", overwrite=args.overwrite)
    print(f"wrote {len(seeds)} image(s){' and grid.png' if not args.no_grid else ''} to {out}")
    return 0
