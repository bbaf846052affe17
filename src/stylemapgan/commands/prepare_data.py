"""``stylemapgan prepare-data``: an image folder or zip -> an LMDB training dataset
(:func:`stylemapgan.data.prepare.prepare_dataset` does the work)."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import add_overwrite, add_parser, int_in


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256 or 256,1024, got {text!r}") from None
    if not sizes or min(sizes) < 8 or max(sizes) > 4096:
        raise argparse.ArgumentTypeError(f"sizes must be in 8..4096, got {text!r}")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "prepare-data", help="convert an image folder or zip into an LMDB training dataset",
        description="""
            Read every image under SRC (a folder, searched recursively, or a .zip; jpg, jpeg,
            png, webp, bmp, gif, tif, tiff files in any mode: transparency is flattened onto
            white, grayscale and CMYK are
            converted, EXIF orientation is applied), fit it to a square (by default the largest
            centered square is cropped, then resized with a Lanczos filter) and store it at each
            --size in an LMDB database, in sorted file-name order. The layout is the reference
            implementation's, so its tools can read the result too. Unreadable files are skipped,
            counted, and listed in OUT/skipped.txt. The database is built beside OUT and moved
            into place when complete.""",
        examples="""
            stylemapgan prepare-data photos/ --out data/faces-lmdb --size 256
            stylemapgan prepare-data photos.zip --out data/faces-lmdb --size 256,1024 --format png""",
    )
    p.add_argument("src", help="folder of images (recursive) or a .zip of images")
    p.add_argument("--out", required=True, help="output LMDB folder")
    p.add_argument("--size", type=_sizes, default=[256],
                   help="square side(s) in pixels, comma-separated (default: 256)")
    p.add_argument("--fit", choices=("crop", "pad", "stretch"), default="crop",
                   help="make images square by center crop (default), padding (edge pixels "
                        "repeated, as for editing) or stretching")
    p.add_argument("--format", choices=("jpeg", "png"), default="jpeg",
                   help="how images are stored (default: jpeg)")
    p.add_argument("--quality", type=int_in(1, 100), default=95,
                   help="JPEG quality 1..100 (default: 95)")
    p.add_argument("--workers", type=int_in(1, 256), default=None,
                   help="decoding processes, 1..256 (default: number of CPUs, at most 8)")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stylemapgan.data.prepare import prepare_dataset

    done = prepare_dataset(args.src, args.out, sizes=args.size, fit=args.fit, fmt=args.format,
                           quality=args.quality, workers=args.workers, overwrite=args.overwrite,
                           bar=tqdm)
    msg = f"wrote {done.count} image(s) at {','.join(map(str, done.sizes))}px to {done.out}"
    if done.skipped:
        msg += (f"; skipped {len(done.skipped)} unreadable file(s), listed in "
                f"{done.out / 'skipped.txt'}")
    print(msg)
    return 0
