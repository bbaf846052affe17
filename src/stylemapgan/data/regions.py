"""Named regions of an input image in the model's square: one door for face photos and avatars.

What an edit needs for ``--region mouth`` (or the web editor's region menu): the masks of some
named regions of a reference image, in the square the model sees (after the image's
:class:`~stylemapgan.imaging.placement.Placement`: a crop, a pad, or a face alignment). An
avatar image of a ``make-avatars`` dataset (the packaged gallery too) gives its part masks
(:meth:`stylemapgan.data.avatars.AvatarFolder.regions`), anything else is taken as a face
photo and gives the regions of its landmarks
(:func:`stylemapgan.imaging.face_regions.face_region_masks`), drawn directly in the square.

``grow`` is in the image's own pixels, as ``stylemapgan regions --region-grow`` takes it, so a
region chosen by name for an edit is the one ``regions`` writes for that image, brought into
the square like a painted mask file.

:func:`write_region_masks` (``stylemapgan regions``' work) writes the regions of images at
their own size instead: ``OUT/NAME.REGION.png`` per region and, for a face photo,
``OUT/NAME.labels.png``, a palette PNG whose pixel values are CelebAMask-HQ label ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stylemapgan.data.avatars import avatar_of_image, avatar_region_names
from stylemapgan.errors import InputError
from stylemapgan.files import atomic_write
from stylemapgan.imaging.face_regions import (
    FACE_REGIONS,
    check_region_names,
    face_region_masks,
    label_map,
    label_palette,
)
from stylemapgan.imaging.faces import FaceAligner, select_faces
from stylemapgan.imaging.images import check_writable, list_images, load_rgb, save_png
from stylemapgan.imaging.masks import to_square
from stylemapgan.imaging.placement import Placement, fit_gray

log = logging.getLogger(__name__)


def available_regions(path: str | os.PathLike[str]) -> list[str]:
    """The region names an image can have: its avatar regions, or every face region (a photo
    may still have no face: :func:`image_regions` finds out)."""
    avatar = avatar_of_image(path)
    if avatar is not None:
        return avatar_region_names(avatar[1])
    return list(FACE_REGIONS)


def _avatar_masks(avatar, names, grow: float, what: str) -> dict[str, np.ndarray]:
    """The named part masks of ``avatar`` (:func:`avatar_of_image`'s answer), grown by
    ``grow`` whole pixels (``what`` names that setting in the error)."""
    folder, record = avatar
    if grow != round(grow):
        raise InputError(f"{what} {grow:g}: avatar masks grow by whole pixels; give an integer")
    return folder.regions(record, names, grow=round(grow))


def image_regions(path: str | os.PathLike[str], size: int, placement: Placement | None = None,
                  names: str | Iterable[str] | None = None, *, grow: float = 0.0,
                  landmarks: np.ndarray | None = None, aligner=None) -> dict[str, np.ndarray]:
    """Masks [size, size] float32 in [0, 1] of the named regions of the image at ``path``, in
    the model's square given by ``placement`` (None: the image is already the square, or is
    squeezed into it like a mask image).

    Avatars: their part regions. Photos: the face regions of ``landmarks`` (68 points in the
    photo's pixels, e.g. from the alignment that made ``placement``), or of the largest face
    ``aligner`` (a :class:`~stylemapgan.imaging.faces.FaceAligner`, made when None) finds.
    ``grow``: pixels of the image. A name the image lacks, or a photo without a face, is a
    one-line :class:`InputError` naming the image and the regions it has.
    """
    avatar = avatar_of_image(path)
    if avatar is not None:
        folder, _ = avatar
        masks = _avatar_masks(avatar, names, grow, "region grow")
        if placement is None:
            return {k: to_square(m, size) for k, m in masks.items()}
        pl = placement if placement.source_size == (folder.size, folder.size) else \
            placement.scaled_to(folder.size, folder.size)
        return {k: fit_gray(m, pl) for k, m in masks.items()}
    if names is not None:
        check_region_names(names, FACE_REGIONS, str(path))
    if landmarks is None:
        if aligner is None:
            aligner = FaceAligner()
        img = load_rgb(path)
        faces = aligner.detect(np.asarray(img))
        if not faces:
            raise InputError(f"{path}: no face found, so it has no named regions (avatars of a "
                             "make-avatars dataset have theirs); paint a mask instead")
        landmarks = faces[0].landmarks
        if placement is None:
            placement = Placement(img.size, (0, 0, *img.size), (0, 0, *img.size), size, "stretch")
    if placement is None:
        raise InputError(f"{path}: landmarks need the placement of the photo they belong to")
    lm = placement.from_photo(np.asarray(landmarks, dtype=np.float64))
    lin = placement.matrix()[:, :2]
    photo_px = float(np.sqrt(abs(np.linalg.det(lin))))  # photo pixels per square pixel
    return face_region_masks(lm, size, names, grow=grow / photo_px)


def region_mask(path: str | os.PathLike[str], names: str | Iterable[str], size: int,
                placement: Placement | None = None, **kwargs) -> np.ndarray:
    """The union of the named regions (``"eyes,brows"``) of :func:`image_regions`."""
    masks = image_regions(path, size, placement, names, **kwargs)
    return np.maximum.reduce(list(masks.values()))


@dataclass(frozen=True)
class RegionFiles:
    """The masks :func:`write_region_masks` wrote for one image: ``OUT/STEM.NAME.png`` for each
    of ``names`` and, when ``labels``, ``OUT/STEM.labels.png``."""

    path: Path
    stem: str
    names: tuple[str, ...]
    labels: bool


def _unique_stem(stems: dict[str, int], path: Path) -> str:
    """``path``'s stem, numbered from the second image of one name (in different folders)."""
    stem = path.stem
    stems[stem] = stems.get(stem, 0) + 1
    return stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"


def write_region_masks(photos: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                       names: str | None = None, grow: float = 0.0, soft: float | None = None,
                       face: str = "largest", recursive: bool = False, overwrite: bool = False,
                       on_written: Callable[[RegionFiles], None] | None = None
                       ) -> tuple[RegionFiles, ...]:
    """Write the named regions of ``photos`` (images, or folders of them: ``recursive``
    searches their subfolders) into the folder ``out`` at each image's own size, upright as
    EXIF orientation shows it.

    Avatar images of a make-avatars dataset give their part masks (``grow`` must then be whole
    pixels); any other image is a face photo and gives the regions of the landmarks of its
    ``face`` (``largest`` or a number, 0 = largest), soft at the edges (``soft`` pixels wide;
    default a tenth of the eye distance), plus a label map. ``names``: comma-separated regions
    (default: all the image has). ``grow``: pixels of the image (negative shrinks). Every image
    is read before anything is written; ``on_written`` hears of each image once its files are
    written. Raises a one-line :class:`InputError` (no face, a region the image lacks) or
    ``FileExistsError`` (an existing file without ``overwrite``).
    """
    from PIL import Image

    paths = list_images(photos, recursive=recursive)
    out = Path(out)
    aligner = None
    pending: list[tuple[Path, dict[str, np.ndarray], np.ndarray | None, str]] = []
    stems: dict[str, int] = {}
    for path in paths:
        stem = _unique_stem(stems, path)
        avatar = avatar_of_image(path)
        if avatar is not None:
            pending.append((path, _avatar_masks(avatar, names, grow, "--region-grow"), None,
                            stem))
            continue
        if aligner is None:
            aligner = FaceAligner()
        img = load_rgb(path)
        if names is not None:
            check_region_names(names, FACE_REGIONS, str(path))
        faces = aligner.detect(np.asarray(img))
        if not faces:
            raise InputError(f"{path}: no face found; regions by name need a face the "
                             "landmarks can place (or an avatar image of a make-avatars "
                             "dataset); paint a mask instead")
        (chosen,) = select_faces(faces, face)
        masks = face_region_masks(chosen.landmarks, img.size, names, grow=grow, soft=soft)
        labels = label_map(chosen.landmarks, img.size, grow=grow, soft=soft)
        pending.append((path, masks, labels, stem))
    targets = [out / f"{stem}.{name}.png" for _, masks, _, stem in pending for name in masks]
    targets += [out / f"{stem}.labels.png" for _, _, labels, stem in pending if labels is not None]
    check_writable(targets, overwrite, inputs=paths)
    written: list[RegionFiles] = []
    for path, masks, labels, stem in pending:
        for name, m in masks.items():
            save_png(np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8),
                     out / f"{stem}.{name}.png", overwrite=overwrite)
        if labels is not None:
            pim = Image.fromarray(labels, "P")
            pim.putpalette(label_palette())
            with atomic_write(out / f"{stem}.labels.png", overwrite=overwrite) as tmp:
                pim.save(tmp, format="PNG")
        written.append(RegionFiles(path, stem, tuple(masks), labels is not None))
        if on_written is not None:
            on_written(written[-1])
    return tuple(written)


__all__ = ["RegionFiles", "available_regions", "image_regions", "region_mask",
           "write_region_masks"]
