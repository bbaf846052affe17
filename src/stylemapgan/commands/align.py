"""``stylemapgan align PHOTOS --out DIR``: face crops aligned as the face models were trained.

Each face becomes ``DIR/NAME.png`` (``--face largest``, the default) or ``DIR/NAME_faceK.png``
(``--face all`` or ``--face K``) at the model's size, with ``NAME[_faceK].json`` beside it: the
source photo's path and SHA-256, the face box, score and 68 landmarks, and the placement (the map
from crop pixels to photo pixels) that ``--paste-back`` needs. ``DIR/align.json`` lists them all.
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

ALIGNMENT_FORMAT = "stylemapgan-alignment"
ALIGNMENT_VERSION = 1


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
    import json
    import shlex
    import sys
    import time
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from stylemapgan.errors import InputError
    from stylemapgan.files import atomic_write, sha256_file
    from stylemapgan.imaging.faces import (
        DEFAULT_MIN_SCORE,
        FaceAligner,
        NoFaceError,
        aligned_placement,
        select_faces,
    )
    from stylemapgan.imaging.images import check_writable, list_images, load_rgb, save_png
    from stylemapgan.imaging.placement import fit_rgb

    if args.face not in ("largest", "all") and not args.face.isdigit():
        raise InputError(f"--face {args.face!r}: use largest, all or a face number (0 = largest)")
    size = _crop_size(args)
    paths = list_images(args.photos, recursive=args.recursive)
    out = Path(args.out)
    aligner = FaceAligner(min_score=DEFAULT_MIN_SCORE if args.min_score is None else args.min_score)
    command = shlex.join(["stylemapgan", *sys.argv[1:]]) if sys.argv[1:] else "stylemapgan align"
    entries, skipped = [], []
    timings = {"read": 0.0, "detect": 0.0, "crop": 0.0}
    from stylemapgan.commands._common import output_folder

    with output_folder(out, command):  # removes a folder it created if nothing was written
        if (out / "align.json").exists() and not args.overwrite:
            raise FileExistsError(f"{out / 'align.json'} already exists; pass --overwrite to replace")
        stems: dict[str, int] = {}
        pending: list[tuple[tuple[Path, Path], np.ndarray, dict]] = []
        for path in tqdm(paths, desc="align", unit="photo", disable=len(paths) < 2):
            t0 = time.perf_counter()
            try:
                img = load_rgb(path)
                rgb = np.asarray(img)
                t1 = time.perf_counter()
                faces = aligner.detect(rgb)
                if not faces:
                    # Under --skip-bad the photo is skipped: no advice to pass --skip-bad.
                    raise NoFaceError(f"{path}: no face found" + ("" if args.skip_bad else
                                      "; give the face's region to `project --box` or `edit "
                                      "--source-box` instead, or pass --skip-bad to leave such "
                                      "photos out"))
                chosen = select_faces(faces, args.face)
            except InputError as exc:
                if not args.skip_bad:
                    raise
                skipped.append({"path": str(path), "reason": str(exc)})
                print(f"skipped: {exc}")
                continue
            t2 = time.perf_counter()
            timings["read"] += t1 - t0
            timings["detect"] += t2 - t1
            stem = path.stem
            stems[stem] = stems.get(stem, 0) + 1
            if stems[stem] > 1:  # two photos with one name in different folders
                stem = f"{stem}-{stems[stem]}"
            digest = sha256_file(path)
            for face in chosen:
                k = next(i for i, f in enumerate(faces) if f is face)  # detect sorts them
                name = stem if args.face == "largest" else f"{stem}_face{k}"
                targets = (out / f"{name}.png", out / f"{name}.json")
                placement = aligned_placement(img.size, size, face.landmarks)
                t3 = time.perf_counter()
                crop = fit_rgb(img, placement)
                timings["crop"] += time.perf_counter() - t3
                entry = {"format": ALIGNMENT_FORMAT, "version": ALIGNMENT_VERSION,
                         "crop": targets[0].name, "source": str(path), "source_sha256": digest,
                         "photo_size": list(img.size), "face_index": k, "face": face.to_dict(),
                         "placement": placement.to_dict()}
                pending.append((targets, crop, entry))
        # Every photo is read and every face found before anything is written: a bad photo or
        # an existing file stops the run with the folder as it was.
        check_writable([p for targets, _, _ in pending for p in targets], args.overwrite,
                       inputs=paths)
        for (png_path, json_path), crop, entry in pending:
            save_png(crop, png_path, overwrite=args.overwrite)
            with atomic_write(json_path, overwrite=args.overwrite) as tmp:
                tmp.write_text(json.dumps(entry, indent=2, allow_nan=False) + "\n")
            entries.append(entry)
        summary = {"format": ALIGNMENT_FORMAT + "-list", "version": ALIGNMENT_VERSION,
                   "size": size, "faces": [{k: e[k] for k in ("crop", "source", "face_index")}
                                           for e in entries],
                   "skipped": skipped,
                   "seconds": {k: round(v, 4) for k, v in timings.items()}}
        with atomic_write(out / "align.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    n_photos = len({e["source"] for e in entries})
    print(f"align: {len(entries)} face(s) from {n_photos} photo(s) written to {out} at "
          f"{size}x{size}" + (f"; {len(skipped)} skipped" if skipped else "")
          + f" (detection {timings['detect']:.2f} s, cropping {timings['crop']:.2f} s)")
    return 0
