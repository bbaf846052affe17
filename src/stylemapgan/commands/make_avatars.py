"""``stylemapgan make-avatars``: render the Open Peeps avatar dataset (needs Node.js)."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    add_overwrite,
    add_parser,
    int_in,
    writes_folder,
)

_size = int_in(16, 512)
_start = int_in(0, 999_999)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "make-avatars", help="render the Open Peeps avatar dataset with part masks (Node.js)",
        description="""
            Render DiceBear "Open Peeps" cartoon faces (artwork by Pablo Stanley, CC0) from
            integer seeds, deterministically, with a binary mask per part (background, skin,
            clothing, head, hair, face, face_region, facial_hair, glasses). Seeds s with
            s % 10 <= 7 go to OUT/train, 8 to OUT/val, 9 to OUT/test; masks to
            OUT/masks/<part>/; OUT/manifest.json lists every image with its attributes and parts.
            Runs tools/avatars/render.mjs of the repository checkout with Node.js: install its
            locked packages once with `npm ci --prefix tools/avatars`. Running again with other
            seeds adds them to OUT.""",
        examples="""
            npm ci --prefix tools/avatars
            stylemapgan make-avatars --out data/avatars64 --size 64 --count 3000
            stylemapgan make-avatars --out data/avatars64 --start 3000 --count 1000
            stylemapgan make-avatars --out demo --seeds 9,19,29 --size 128""",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=_size, default=64, help="image side in pixels, 16..512 (default: 64)")
    p.add_argument("--start", type=_start, default=0, help="first seed (default: 0)")
    p.add_argument("--count", type=int_in(1, 10_000_000), default=3000,
                   help="number of seeds from --start, 1..10000000 (default: 3000)")
    p.add_argument("--seeds", default=None,
                   help="explicit seeds instead of --start/--count: 0-7, 1,5,9 or 0-3,10")
    p.add_argument("--no-masks", action="store_true", help="images and manifest only")
    add_overwrite(p)
    p.set_defaults(func=writes_folder(run))


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from tqdm import tqdm

    from stylemapgan.data.avatars import name_of, render_avatars, require_node, split_of
    from stylemapgan.errors import InputError
    from stylemapgan.imaging.images import check_writable
    from stylemapgan.utils import parse_seeds

    if args.seeds is not None:
        seeds = parse_seeds(args.seeds, limit=1_000_000)
    else:
        seeds = list(range(args.start, args.start + args.count))
    if max(seeds) > 999_999:
        raise InputError(f"avatar seeds must be in 0..999999; {max(seeds)} is too large")
    out = Path(args.out)
    check_writable([out / split_of(s) / f"{name_of(s)}.png" for s in seeds], args.overwrite)
    require_node()  # fail before the progress bar starts
    t0 = time.perf_counter()
    with tqdm(total=len(set(seeds)), unit="img", desc="make-avatars") as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        manifest = render_avatars(args.out, size=args.size, seeds=seeds, masks=not args.no_masks,
                                  overwrite=args.overwrite, progress=progress)
    counts = manifest["split_counts"]
    print(f"wrote {len(set(seeds))} avatar(s) at {args.size}px to {args.out} in "
          f"{time.perf_counter() - t0:.1f} s; it now holds train {counts['train']}, "
          f"val {counts['val']}, test {counts['test']}")
    return 0
