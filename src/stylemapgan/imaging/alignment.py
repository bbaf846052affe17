"""Aligned face crops of many photos, written with their transforms: ``stylemapgan align``'s work.

:func:`align_photos` reads every photo, finds its faces (:class:`~stylemapgan.imaging.faces.
FaceAligner`), keeps the chosen ones and writes each as ``OUT/NAME.png`` (``face="largest"``)
or ``OUT/NAME_faceK.png`` at ``size`` pixels, made by the FFHQ recipe
(:func:`~stylemapgan.imaging.faces.aligned_placement`), with ``NAME[_faceK].json`` beside it:
the source photo's path and SHA-256, the face box, score and 68 landmarks, and the placement
(crop pixels -> photo pixels) that pasting back needs. ``OUT/align.json`` lists them all, the
photos left out and the seconds spent reading, detecting and cropping.

Every photo is read and every face found before anything is written: a bad photo (unless
``skip_bad``) or an existing file stops the run with the folder as it was.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
from stylemapgan.utils import NoProgress

ALIGNMENT_FORMAT = "stylemapgan-alignment"
ALIGNMENT_VERSION = 1
#: What to do instead when a photo has no face (ends the error, unless photos are skipped).
NO_FACE_HINT = ("give the face's region to `project --box` or `edit --source-box` instead, or "
                "pass --skip-bad to leave such photos out")


@dataclass(frozen=True)
class AlignedFace:
    """One written crop: its PNG, its JSON file and what that file holds (``entry``)."""

    crop: Path
    record: Path
    entry: dict[str, Any]


@dataclass(frozen=True)
class SkippedPhoto:
    """A photo left out (``skip_bad``): it could not be read, had no face or not the one asked."""

    path: Path
    reason: str


@dataclass(frozen=True)
class AlignResult:
    """What :func:`align_photos` wrote: the faces in order, the photos skipped and the seconds
    spent reading, detecting and cropping (unrounded; ``align.json`` holds them rounded)."""

    out: Path
    size: int
    faces: tuple[AlignedFace, ...]
    skipped: tuple[SkippedPhoto, ...]
    seconds: dict[str, float]

    @property
    def photos(self) -> int:
        """How many photos gave at least one face."""
        return len({f.entry["source"] for f in self.faces})


def _unique_stem(stems: dict[str, int], path: Path) -> str:
    """``path``'s stem, numbered from the second photo of one name (in different folders)."""
    stem = path.stem
    stems[stem] = stems.get(stem, 0) + 1
    return stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"


def align_photos(photos: Sequence[str | Path], out: str | Path, *, size: int,
                 face: str = "largest", min_score: float = DEFAULT_MIN_SCORE,
                 recursive: bool = False, skip_bad: bool = False, overwrite: bool = False,
                 hold_folder: Callable[[Path], AbstractContextManager[Any]] | None = None,
                 on_skip: Callable[[SkippedPhoto], None] | None = None,
                 bar: Callable[..., Any] | None = None) -> AlignResult:
    """Align the faces of ``photos`` (files, or folders of them: ``recursive`` searches their
    subfolders) into ``size``-pixel crops in the folder ``out``.

    ``face``: ``largest``, ``all`` or a face number (0 = largest). ``min_score``: weaker
    detections are dropped. ``skip_bad``: a photo that cannot be read or lacks the face asked
    for is left out (reported to ``on_skip`` as it is found) instead of stopping the run.
    ``overwrite``: replace existing files. ``hold_folder(out)``: a context manager held while
    the folder is checked and written (the command's folder lock; default none, the folder is
    made as needed). ``bar``: a ``tqdm.tqdm``-like progress factory (None shows nothing).
    Raises :class:`InputError` (:class:`NoFaceError` for a photo without a
    face) or ``FileExistsError`` before anything is written.
    """
    paths = list_images(photos, recursive=recursive)
    out = Path(out)
    aligner = FaceAligner(min_score=min_score)
    timings = {"read": 0.0, "detect": 0.0, "crop": 0.0}
    skipped: list[SkippedPhoto] = []
    written: list[AlignedFace] = []
    with hold_folder(out) if hold_folder is not None else contextlib.nullcontext():
        if (out / "align.json").exists() and not overwrite:
            raise FileExistsError(f"{out / 'align.json'} already exists; pass --overwrite to replace")
        stems: dict[str, int] = {}
        pending: list[tuple[AlignedFace, np.ndarray]] = []
        for path in (bar or NoProgress)(paths, desc="align", unit="photo",
                                        disable=len(paths) < 2):
            t0 = time.perf_counter()
            try:
                img = load_rgb(path)
                rgb = np.asarray(img)
                t1 = time.perf_counter()
                faces = aligner.detect(rgb)
                if not faces:
                    # Under skip_bad the photo is skipped: no advice to pass --skip-bad.
                    raise NoFaceError(f"{path}: no face found"
                                      + ("" if skip_bad else f"; {NO_FACE_HINT}"))
                chosen = select_faces(faces, face)
            except InputError as exc:
                if not skip_bad:
                    raise
                skipped.append(SkippedPhoto(path, str(exc)))
                if on_skip is not None:
                    on_skip(skipped[-1])
                continue
            t2 = time.perf_counter()
            timings["read"] += t1 - t0
            timings["detect"] += t2 - t1
            stem = _unique_stem(stems, path)
            digest = sha256_file(path)
            for f in chosen:
                k = next(i for i, g in enumerate(faces) if g is f)  # detect sorts them
                name = stem if face == "largest" else f"{stem}_face{k}"
                crop_path, record_path = out / f"{name}.png", out / f"{name}.json"
                placement = aligned_placement(img.size, size, f.landmarks)
                t3 = time.perf_counter()
                crop = fit_rgb(img, placement)
                timings["crop"] += time.perf_counter() - t3
                entry = {"format": ALIGNMENT_FORMAT, "version": ALIGNMENT_VERSION,
                         "crop": crop_path.name, "source": str(path), "source_sha256": digest,
                         "photo_size": list(img.size), "face_index": k, "face": f.to_dict(),
                         "placement": placement.to_dict()}
                pending.append((AlignedFace(crop_path, record_path, entry), crop))
        check_writable([p for a, _ in pending for p in (a.crop, a.record)], overwrite,
                       inputs=paths)
        for aligned, crop in pending:
            save_png(crop, aligned.crop, overwrite=overwrite)
            with atomic_write(aligned.record, overwrite=overwrite) as tmp:
                tmp.write_text(json.dumps(aligned.entry, indent=2, allow_nan=False) + "\n")
            written.append(aligned)
        summary = {"format": ALIGNMENT_FORMAT + "-list", "version": ALIGNMENT_VERSION,
                   "size": size,
                   "faces": [{k: a.entry[k] for k in ("crop", "source", "face_index")}
                             for a in written],
                   "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped],
                   "seconds": {k: round(v, 4) for k, v in timings.items()}}
        with atomic_write(out / "align.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return AlignResult(out, size, tuple(written), tuple(skipped), timings)


__all__ = ["ALIGNMENT_FORMAT", "ALIGNMENT_VERSION", "NO_FACE_HINT", "AlignResult", "AlignedFace",
           "SkippedPhoto", "align_photos"]
