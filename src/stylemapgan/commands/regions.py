"""``stylemapgan regions PHOTOS --out DIR``: named region masks (mouth, eyes, skin, ...) of photos.

A face photo's regions come from the 68 landmarks alignment places
(:mod:`stylemapgan.imaging.face_regions`); an avatar image of a dataset built by
``make-avatars`` (the packaged gallery too) gives its part masks under the same names
(:meth:`stylemapgan.data.avatars.AvatarFolder.regions`). For each image: ``NAME.REGION.png``
per region (grayscale 0-255 at the image's own size, upright as EXIF orientation shows it) and
``NAME.labels.png``, a coloured label map (palette PNG whose pixel values are CelebAMask-HQ
label ids, so ``labels=NAME.labels.png parts=mouth`` reads it back). The work is
:func:`stylemapgan.data.regions.write_region_masks`.
"""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    abspath,
    add_overwrite,
    add_parser,
    float_in,
    writes_folder,
)

_grow = float_in(-512.0, 512.0)
_soft = float_in(0.0, 512.0, lo_open=True)


#: The region names the help lists (tests/imaging/test_face_regions.py checks them against the
#: library's; importing the library here would load torch for every `stylemapgan --help`).
FACE_NAMES = ("left_eye, right_eye, eyes, brows, nose, mouth, lips, features, features_hull, "
              "face, skin, background")
AVATAR_NAMES = ("background, face, skin, features, features_hull, neck, head, hair, clothing, "
                "facial_hair, glasses")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "regions", help="write named region masks (mouth, eyes, skin, ...) of face photos and avatars",
        description="""
            Find the face of each photo (dlib's 68 landmarks; needs the faces extra: pip install
            "stylemapgan[faces]") and write its named regions as masks at the photo's own size:
            OUT/NAME.REGION.png (grayscale, 255 = inside, soft at the edges) and
            OUT/NAME.labels.png, a coloured label map to inspect or hand-edit (its pixel values
            are CelebAMask-HQ label ids: give it to `edit local --labels FILE --parts mouth`).
            Face regions: left_eye, right_eye, eyes, brows, nose, mouth, lips, features,
            features_hull, face, skin, background (left_eye is the eye on the image's left;
            background is approximate: the landmarks see no hair or body). An avatar image of a
            make-avatars dataset (or the packaged gallery) gives its part masks instead:
            background, face, skin, features, features_hull, neck, head, hair, clothing,
            facial_hair, glasses. A photo without a face is an error.""",
        examples="""
            stylemapgan regions astronaut.jpg --out r
            stylemapgan regions selfie.jpg --out r --regions mouth,eyes --region-grow 4
            stylemapgan regions group.jpg --face 1 --out r
            stylemapgan regions data/avatars64/test/seed000019.png --out r""",
    )
    p.add_argument("photos", nargs="+", type=abspath, help="photos (or avatar images), or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--regions", default=None,
                   help="which regions, comma-separated (default: all the image has)")
    p.add_argument("--region-grow", type=_grow, default=0.0, metavar="PX",
                   help="grow each region by PX pixels of the image (negative: shrink; "
                        "default: 0)")
    p.add_argument("--region-soft", type=_soft, default=None, metavar="PX",
                   help="width of the soft edge in pixels (default: a tenth of the eye "
                        "distance; avatar masks stay hard)")
    p.add_argument("--face", default="largest",
                   help="which face: largest (default) or a number (0 = largest)")
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    add_overwrite(p)
    p.set_defaults(func=writes_folder(run))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stylemapgan.data.regions import RegionFiles, write_region_masks
    from stylemapgan.errors import InputError

    if args.face == "all" or (args.face != "largest" and not args.face.isdigit()):
        raise InputError(f"--face {args.face!r}: use largest or a face number (0 = largest)")
    out = Path(args.out)

    def written(done: RegionFiles) -> None:
        print(f"{done.path}: {len(done.names)} region(s) ({', '.join(done.names)}) written to "
              f"{out} as {done.stem}.REGION.png"
              + (f" with {done.stem}.labels.png" if done.labels else ""))

    write_region_masks(args.photos, out, names=args.regions, grow=args.region_grow,
                       soft=args.region_soft, face=args.face, recursive=args.recursive,
                       overwrite=args.overwrite, on_written=written)
    return 0
