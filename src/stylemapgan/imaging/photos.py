"""A photo -> the model's square, with the placement that says where the square came from.

The one way a photo (a file, or an image already decoded) becomes what the model sees: fitted
by ``crop``/``pad``/``stretch`` (optionally inside a box of the photo), or with its face
aligned (the FFHQ recipe of :mod:`stylemapgan.imaging.faces`), or by a placement chosen
earlier (a face the web editor detected). The command line (``edit``, ``project``,
``direction``) and the web editor all call :func:`photo_square`; the placement it returns is
what a paste-back uses to put an edit back into the photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from stylemapgan.errors import InputError

if TYPE_CHECKING:
    from stylemapgan.imaging.faces import Face, FaceAligner
    from stylemapgan.imaging.placement import Placement

__all__ = ["Square", "photo_faces", "photo_square"]


@dataclass(frozen=True)
class Square:
    """A photo at the model's size: ``pixels`` [size, size, 3] uint8, the ``placement`` of
    the square in the photo, and the RGB ``photo`` (EXIF orientation applied); ``landmarks``:
    the 68 points [68, 2] (photo pixels) of the face an alignment used (None without one), for
    named regions."""

    pixels: np.ndarray
    placement: Placement
    photo: Image.Image
    landmarks: np.ndarray | None = None


def photo_square(photo: str | os.PathLike[str] | Image.Image, size: int, *, fit: str = "crop",
                 box: tuple[float, float, float, float] | None = None,
                 placement: Placement | None = None, align: str | None = None,
                 aligner: FaceAligner | None = None, no_face: str | None = None,
                 name: str | None = None) -> Square:
    """The model's square of ``photo`` and its placement.

    One of: ``placement`` (given, e.g. a face picked earlier); ``align`` (``largest`` or a face
    number; needs ``aligner``; ``no_face`` is what the user can do about a photo without a face,
    appended to that error); else ``fit`` inside ``box`` (photo pixels) or the whole photo.
    ``name`` names the photo in errors (default: its path)."""
    from stylemapgan.imaging.images import load_rgb
    from stylemapgan.imaging.placement import fit_rgb, place

    label = name or (str(photo) if not isinstance(photo, Image.Image) else "image")
    # An RGB image is taken as decoded (the web editor decoded it under its own limits).
    rgb = isinstance(photo, Image.Image) and photo.mode == "RGB"
    img = photo if rgb else load_rgb(photo, name=name)
    if align is not None:
        if box is not None:
            raise InputError("--align finds the face itself; give --align or a box, not both")
        if aligner is None:
            from stylemapgan.imaging.faces import FaceAligner

            aligner = FaceAligner()
        ((face, placement),) = aligner.align(np.asarray(img), size, align, name=label,
                                             hint=no_face)
        return Square(fit_rgb(img, placement), placement, img, face.landmarks)
    if placement is None:
        placement = place(img.size, size, fit, box, name=label)
    return Square(fit_rgb(img, placement), placement, img)


def photo_faces(rgb: np.ndarray, size: int,
                aligner: FaceAligner) -> list[tuple[Face, Placement]]:
    """Every face of an RGB photo [H, W, 3] (largest first) with its aligned placement for a
    square of ``size``; empty when there is none."""
    from stylemapgan.imaging.faces import aligned_placement

    h, w = rgb.shape[:2]
    return [(f, aligned_placement((w, h), size, f.landmarks)) for f in aligner.detect(rgb)]
