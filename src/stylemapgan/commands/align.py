"""``stylemapgan align PHOTOS --out DIR``: face crops aligned as the face models were trained.

Each face becomes ``DIR/NAME.png`` (``--face largest``, the default) or ``DIR/NAME_faceK.png``
(``--face all`` or ``--face K``) at the model's size, with ``NAME[_faceK].json`` beside it: the
source photo's path and SHA-256, the face box, score and 68 landmarks, and the placement (the map
from crop pixels to photo pixels) that ``--paste-back`` needs. ``DIR/align.json`` lists them all. The work is
:func:`stylemapgan.imaging.alignment.align_photos`.
"""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    abspath,
    add_model,
    add_overwrite,
    add_parser,
    float_in,
    int_in,
    resolve_model,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "align", help="detect faces and write crops aligned like the face models' training data",
        description="""
            Find the faces in photos of any size (dlib's frontal face detector and 68-point
            landmarks; needs the faces extra: pip install "stylemapgan[faces]") and write each
            as a crop aligned by the FFHQ recipe (eyes and mouth at fixed places) at the
            model's size, with a JSON file holding the transform from crop pixels to photo
            pixels. Project or edit the crops, or pass --align to project/edit directly.""",
        examples="""
            stylemapgan align selfie.jpg --out aligned
            stylemapgan align photos/ --face all --size 256 --out aligned --skip-bad
            stylemapgan align group.jpg --face 1 --model celeba_hq.safetensors --out aligned""",
    )
    p.add_argument("photos", nargs="+", type=abspath, help="photos or folders of photos")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--face", default="largest",
                   help="which faces: largest (default), all, or a number (0 = largest)")
    p.add_argument("--size", type=int_in(8, 4096), default=None,
                   help="crop size in pixels (default: the model's size, see --model)")
    add_model(p)
    p.add_argument("--min-score", type=float_in(-10.0, 10.0), default=None,
                   help="drop detections scoring below this (default: 0.3)")
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out photos that cannot be read or have no face, instead of stopping")
    add_overwrite(p)
    p.set_defaults(func=run)


def _crop_size(args: argparse.Namespace) -> int:
    if args.size:
        return args.size
    from stylemapgan.formats.checkpoint import read_model_metadata

    return read_model_metadata(resolve_model(args.model))["config"].size


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from tqdm import tqdm

    from stylemapgan.commands._common import output_folder
    from stylemapgan.errors import InputError
    from stylemapgan.imaging.alignment import align_photos
    from stylemapgan.imaging.faces import DEFAULT_MIN_SCORE

    if args.face not in ("largest", "all") and not args.face.isdigit():
        raise InputError(f"--face {args.face!r}: use largest, all or a face number (0 = largest)")
    size = _crop_size(args)
    command = shlex.join(["stylemapgan", *sys.argv[1:]]) if sys.argv[1:] else "stylemapgan align"
    result = align_photos(
        args.photos, args.out, size=size, face=args.face,
        min_score=DEFAULT_MIN_SCORE if args.min_score is None else args.min_score,
        recursive=args.recursive, skip_bad=args.skip_bad, overwrite=args.overwrite,
        # the folder lock; removes a folder it created if nothing was written
        hold_folder=lambda out: output_folder(out, command),
        on_skip=lambda skipped: print(f"skipped: {skipped.reason}"), bar=tqdm)
    print(f"align: {len(result.faces)} face(s) from {result.photos} photo(s) written to "
          f"{result.out} at {size}x{size}"
          + (f"; {len(result.skipped)} skipped" if result.skipped else "")
          + f" (detection {result.seconds['detect']:.2f} s, cropping {result.seconds['crop']:.2f} s)")
    return 0
