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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import numpy as np

from stylemapgan.data.avatars import avatar_of_image, avatar_region_names
from stylemapgan.errors import InputError
from stylemapgan.imaging.face_regions import FACE_REGIONS, check_region_names, face_region_masks
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
        folder, record = avatar
        if grow != round(grow):
            raise InputError(f"region grow {grow:g}: avatar masks grow by whole pixels; give "
                             "an integer")
        masks = folder.regions(record, names, grow=round(grow))
        if placement is None:
            return {k: to_square(m, size) for k, m in masks.items()}
        pl = placement if placement.source_size == (folder.size, folder.size) else \
            placement.scaled_to(folder.size, folder.size)
        return {k: fit_gray(m, pl) for k, m in masks.items()}
    if names is not None:
        check_region_names(names, FACE_REGIONS, str(path))
    if landmarks is None:
        from stylemapgan.imaging.images import load_rgb

        if aligner is None:
            from stylemapgan.imaging.faces import FaceAligner

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


__all__ = ["available_regions", "image_regions", "region_mask"]
