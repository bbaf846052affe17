"""``stylemapgan prepare-data``: an image folder or zip -> an LMDB training dataset."""

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


def _claim(folder) -> int | None:
    """Lock a temporary folder (``flock`` on the folder itself) for as long as this process
    lives; None where it cannot be locked. Raises BlockingIOError if a live process holds it."""
    import os

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _remove_abandoned(out) -> None:
    """Remove ``.OUT.*.tmp`` folders beside ``out`` left by a run that was killed: those whose
    lock nobody holds any more (a live run's folder is left alone)."""
    import glob
    import logging
    import os
    import shutil

    for name in glob.glob(glob.escape(str(out.parent / f".{out.name}.")) + "*.tmp"):
        if os.path.islink(name) or not os.path.isdir(name):
            continue
        try:
            fd = _claim(name)
        except OSError:  # held by a live run (or unreadable): not ours to remove
            continue
        try:
            shutil.rmtree(name, ignore_errors=True)
            logging.getLogger(__name__).info("removed %s, left by a run that was killed", name)
        finally:
            if fd is not None:
                os.close(fd)


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
    src = Path(args.src).resolve()
    if out.resolve() == src or out.resolve() in src.parents:
        raise InputError(f"--out {out} holds the images of {args.src}; replacing it would delete "
                         "them: write the dataset somewhere else with --out")
    source = list_sources(args.src)
    n = len(source)
    sizes = args.size
    workers = args.workers or min(8, os.cpu_count() or 1)
    import lmdb

    from stylemapgan.files import as_oserror, process_umask, unwritable

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        tmp.chmod(0o777 & ~process_umask())  # mkdtemp's 0700: the folder an ordinary mkdir makes
        claim = _claim(tmp)  # held until this process (and its workers) end, even by kill -9
    except FileExistsError as exc:  # a file where a folder of the path should be
        raise unwritable(out, OSError(20, os.strerror(20), exc.filename)) from None
    except OSError as exc:  # a read-only disk, no permission, ...
        raise unwritable(out, exc) from None
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

            try:
                if workers > 1 and n > 1:
                    with ProcessPoolExecutor(workers, initializer=convert.install) as pool:
                        results = pool.map(ImageConverter.run_installed, range(n), chunksize=16)
                        count = write_lmdb(tmp, encoded(results), sizes)
                else:
                    count = write_lmdb(tmp, encoded(map(convert, range(n))), sizes)
            except (lmdb.Error, OSError) as exc:  # a full or read-only disk: one line naming OUT
                if isinstance(exc, InputError):
                    raise
                raise unwritable(out, as_oserror(exc)) from None
        if count == 0:
            raise InputError(f"{args.src}: none of the {n} image file(s) could be read "
                             f"(first problem: {skipped[0].split(chr(9))[-1] if skipped else 'no images'})")
        try:
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
        except OSError as exc:
            raise unwritable(out, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if claim is not None:
            os.close(claim)
    msg = f"wrote {count} image(s) at {','.join(map(str, sizes))}px to {out}"
    if skipped:
        msg += f"; skipped {len(skipped)} unreadable file(s), listed in {out / 'skipped.txt'}"
    print(msg)
    return 0
