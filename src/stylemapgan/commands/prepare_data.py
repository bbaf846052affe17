"""``stylemapgan prepare-data``: an image folder or zip -> an LMDB training dataset."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import add_overwrite, add_parser, int_in, positive_int


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
            Read every image under SRC (a folder, searched recursively, or a .zip; jpg, png,
            webp, bmp in any mode: transparency is flattened onto white, grayscale and CMYK are
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
    p.add_argument("--workers", type=positive_int, default=None,
                   help="decoding processes (default: number of CPUs, at most 8)")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from tqdm import tqdm

    from stylemapgan.data.datasets import ImageConverter, list_sources, write_lmdb
    from stylemapgan.errors import InputError

    if not 1 <= args.quality <= 100:
        raise InputError(f"--quality must be in 1..100, got {args.quality}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    source = list_sources(args.src)
    n = len(source)
    sizes = args.size
    workers = args.workers or min(8, os.cpu_count() or 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    skipped: list[str] = []
    convert = ImageConverter(source, sizes, args.fit, args.format, args.quality)
    try:
        with tqdm(total=n, unit="img", desc="prepare-data") as bar:

            def encoded(results):
                for index, data, error in results:
                    bar.update(1)
                    if data is None:
                        skipped.append(f"{source.name(index)}\t{error}")
                        bar.set_postfix(skipped=len(skipped))
                        continue
                    yield data

            if workers > 1 and n > 1:
                with ProcessPoolExecutor(workers, initializer=convert.install) as pool:
                    results = pool.map(ImageConverter.run_installed, range(n), chunksize=16)
                    count = write_lmdb(tmp, encoded(results), sizes)
            else:
                count = write_lmdb(tmp, encoded(map(convert, range(n))), sizes)
        if count == 0:
            raise InputError(f"{args.src}: none of the {n} image file(s) could be read "
                             f"(first problem: {skipped[0].split(chr(9))[-1] if skipped else 'no images'})")
        (tmp / "skipped.txt").write_text("".join(f"{s}\n" for s in skipped), encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    msg = f"wrote {count} image(s) at {','.join(map(str, sizes))}px to {out}"
    if skipped:
        msg += f"; skipped {len(skipped)} unreadable file(s), listed in {out / 'skipped.txt'}"
    print(msg)
    return 0
