"""``stylemapgan regions PHOTOS --out DIR``: named region masks (mouth, eyes, skin, ...) of photos.

A face photo's regions come from the 68 landmarks alignment places
(:mod:`stylemapgan.imaging.face_regions`); an avatar image of a dataset built by
``make-avatars`` (the packaged gallery too) gives its part masks under the same names
(:meth:`stylemapgan.data.avatars.AvatarFolder.regions`). For each image: ``NAME.REGION.png``
per region (grayscale 0-255 at the image's own size, upright as EXIF orientation shows it) and
``NAME.labels.png``, a coloured label map (palette PNG whose pixel values are CelebAMask-HQ
label ids, so ``labels=NAME.labels.png parts=mouth`` reads it back).
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

    import numpy as np
    from PIL import Image

    from stylemapgan.data.avatars import avatar_of_image
    from stylemapgan.errors import InputError
    from stylemapgan.files import atomic_write
    from stylemapgan.imaging.face_regions import (
        FACE_REGIONS,
        check_region_names,
        face_region_masks,
        label_map,
        label_palette,
    )
    from stylemapgan.imaging.images import check_writable, list_images, load_rgb, save_png

    if args.face == "all" or (args.face != "largest" and not args.face.isdigit()):
        raise InputError(f"--face {args.face!r}: use largest or a face number (0 = largest)")
    paths = list_images(args.photos, recursive=args.recursive)
    out = Path(args.out)
    aligner = None
    pending: list[tuple[Path, dict[str, np.ndarray], np.ndarray | None, str]] = []
    stems: dict[str, int] = {}
    for path in paths:
        stem = path.stem
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:  # two photos with one name in different folders
            stem = f"{stem}-{stems[stem]}"
        avatar = avatar_of_image(path)
        if avatar is not None:
            folder, record = avatar
            if args.region_grow != round(args.region_grow):
                raise InputError(f"--region-grow {args.region_grow:g}: avatar masks grow by "
                                 "whole pixels; give an integer")
            masks = folder.regions(record, args.regions, grow=round(args.region_grow))
            pending.append((path, masks, None, stem))
            continue
        if aligner is None:
            from stylemapgan.imaging.faces import FaceAligner

            aligner = FaceAligner()
        img = load_rgb(path)
        if args.regions is not None:
            check_region_names(args.regions, FACE_REGIONS, str(path))
        faces = aligner.detect(np.asarray(img))
        if not faces:
            raise InputError(f"{path}: no face found; regions by name need a face the "
                             "landmarks can place (or an avatar image of a make-avatars "
                             "dataset); paint a mask instead")
        from stylemapgan.imaging.faces import select_faces

        (face,) = select_faces(faces, args.face)
        masks = face_region_masks(face.landmarks, img.size, args.regions,
                                  grow=args.region_grow, soft=args.region_soft)
        labels = label_map(face.landmarks, img.size, grow=args.region_grow, soft=args.region_soft)
        pending.append((path, masks, labels, stem))
    targets = [out / f"{stem}.{name}.png" for _, masks, _, stem in pending for name in masks]
    targets += [out / f"{stem}.labels.png" for _, _, labels, stem in pending if labels is not None]
    check_writable(targets, args.overwrite, inputs=paths)
    for path, masks, labels, stem in pending:
        for name, m in masks.items():
            save_png(np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8),
                     out / f"{stem}.{name}.png", overwrite=args.overwrite)
        if labels is not None:
            pim = Image.fromarray(labels, "P")
            pim.putpalette(label_palette())
            with atomic_write(out / f"{stem}.labels.png", overwrite=args.overwrite) as tmp:
                pim.save(tmp, format="PNG")
        print(f"{path}: {len(masks)} region(s) ({', '.join(masks)}) written to {out} as "
              f"{stem}.REGION.png" + (f" with {stem}.labels.png" if labels is not None else ""))
    return 0
