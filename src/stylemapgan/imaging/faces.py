"""Face detection and FFHQ-style alignment: which part of a photo a face model should see.

The published face models (CelebA-HQ, FFHQ) were trained on crops aligned by the eyes and the
mouth; a phone photo projected as it is reconstructs poorly. :class:`FaceAligner` finds the faces
of a photo (dlib's HOG frontal detector), places 68 landmarks on each (dlib's shape predictor)
and turns them into the oriented square of the FFHQ recipe, returned as an affine
:class:`~stylemapgan.imaging.placement.Placement` (``fit="aligned"``): the crop is made with
:func:`~stylemapgan.imaging.placement.fit_rgb` and an edit goes back into the full photo with
:func:`~stylemapgan.imaging.placement.paste_back`, through the same map.

The geometry (NVlabs ffhq-dataset): eye centres are the means of landmarks 36-41 and 42-47, the
mouth corners are 48 and 54. With ``e`` = eye-to-eye and ``m`` = eye-midpoint-to-mouth-midpoint,
the square's half-axis ``x`` points along ``e - rot90(m)``, has length ``max(2|e|, 1.8|m|)``,
``y`` is ``x`` turned a quarter (downwards), and the centre is the eye midpoint plus ``0.1 m``.
Where the square leaves the photo the photo is mirrored and faded toward a blurred, median
coloured background (:func:`stylemapgan.imaging.placement.fit_rgb` does this for
``fit="aligned"``).

Optional: needs the ``faces`` extra (``pip install "stylemapgan[faces]"``: ``dlib-bin``, prebuilt
dlib wheels, and ``face-recognition-models``, which ships dlib's predictor files). The 68-point
predictor was trained on the iBUG 300-W data set, whose terms exclude commercial use.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stylemapgan.errors import InputError
from stylemapgan.imaging.placement import Placement, affine_placement

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "stylemapgan[faces]"'
#: Environment variable naming a 68-point dlib shape predictor file to use instead of the one in
#: face-recognition-models.
PREDICTOR_ENV = "STYLEMAPGAN_FACE_PREDICTOR"
#: Detections scoring below this are dropped (dlib's HOG detector also fires, weakly, on badges
#: and patterns; real faces score about 0.5 to 2).
DEFAULT_MIN_SCORE = 0.3

__all__ = ["DEFAULT_MIN_SCORE", "INSTALL_HINT", "Face", "FaceAligner", "FacesUnavailable",
           "NoFaceError", "aligned_points", "ffhq_quad", "key_points", "select_faces"]


class FacesUnavailable(InputError):
    """The optional face packages are not installed."""


class NoFaceError(InputError):
    """No face was found in a photo."""


def _dlib():
    try:
        import dlib
    except ImportError:
        raise FacesUnavailable(f"face alignment needs the faces extra: {INSTALL_HINT} (installs "
                               "dlib-bin and face-recognition-models)") from None
    return dlib


def predictor_path() -> Path:
    """The 68-point landmark predictor: ``$STYLEMAPGAN_FACE_PREDICTOR`` or the file inside the
    face-recognition-models package (found without importing it: it needs pkg_resources)."""
    env = os.environ.get(PREDICTOR_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise FacesUnavailable(f"{PREDICTOR_ENV}={env}: no such file; point it at "
                                   "shape_predictor_68_face_landmarks.dat or unset it")
        return p
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FacesUnavailable(f"face alignment needs the landmark predictor of the faces extra: "
                               f"{INSTALL_HINT} (or set {PREDICTOR_ENV} to a "
                               "shape_predictor_68_face_landmarks.dat file)")
    root = Path(next(iter(spec.submodule_search_locations)))
    p = root / "models" / "shape_predictor_68_face_landmarks.dat"
    if not p.is_file():
        raise FacesUnavailable(f"{p} is missing; reinstall the faces extra: {INSTALL_HINT}")
    return p


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` (left, top, right, bottom) in photo pixels, the detector's
    ``score`` and 68 ``landmarks`` [68, 2] (x, y) in continuous photo coordinates (pixel
    centres at +0.5)."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    def to_dict(self) -> dict:
        return {"box": list(self.box), "score": round(self.score, 4),
                "landmarks": np.round(self.landmarks, 3).tolist()}


def key_points(landmarks: np.ndarray) -> np.ndarray:
    """[4, 2]: left-eye centre (mean of 36-41), right-eye centre (42-47), mouth corners 48, 54."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[48], lm[54]])


def ffhq_quad(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FFHQ recipe's oriented square: (centre, half-axis x, half-axis y), photo coordinates."""
    eye_l, eye_r, mouth_l, mouth_r = key_points(landmarks)
    eye_avg = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = (mouth_l + mouth_r) / 2 - eye_avg
    # rot90 in image coordinates (y down): (u, v) -> (-v, u) turns "down" into "left".
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = float(np.hypot(*x))
    if norm < 1e-6:
        raise InputError("the face's landmarks are degenerate (eyes and mouth coincide)")
    x = x / norm * max(2.0 * float(np.hypot(*eye_to_eye)), 1.8 * float(np.hypot(*eye_to_mouth)))
    y = np.array([-x[1], x[0]])  # a quarter turn: points down the face
    centre = eye_avg + 0.1 * eye_to_mouth
    return centre, x, y


def aligned_placement(photo_size: tuple[int, int], size: int, landmarks: np.ndarray) -> Placement:
    """The placement that maps the model's square onto the face's FFHQ square."""
    c, x, y = ffhq_quad(landmarks)
    top_left = c - x - y
    matrix = np.array([[2 * x[0] / size, 2 * y[0] / size, top_left[0]],
                       [2 * x[1] / size, 2 * y[1] / size, top_left[1]]])
    pl = affine_placement(photo_size, size, matrix)
    return Placement(pl.source_size, pl.region, pl.square, pl.size, "aligned", pl.affine)


def aligned_points(placement: Placement, landmarks: np.ndarray) -> np.ndarray:
    """Where a face's eye centres and mouth corners land in its aligned crop, as fractions of
    the crop's side [4, 2]."""
    return placement.from_photo(key_points(landmarks)) / placement.size


def select_faces(faces: Sequence[Face], which: str) -> list[Face]:
    """``largest`` (default), ``all`` or an index ``N`` (0 = largest, faces sorted by size)."""
    faces = sorted(faces, key=lambda f: (-f.area, -f.score))
    if which == "all":
        return faces
    if which == "largest":
        return faces[:1]
    try:
        n = int(which)
    except ValueError:
        raise InputError(f"--face {which!r}: use largest, all or a face number (0 = largest)") from None
    if not 0 <= n < len(faces):
        raise InputError(f"--face {n}: the photo has {len(faces)} face(s) (numbers 0.."
                         f"{len(faces) - 1}, largest first)")
    return [faces[n]]


class FaceAligner:
    """Detects faces and places landmarks; loads dlib's models once per instance.

    ``upsample``: how many times the detector doubles the photo first (1 finds faces down to
    about 40 px wide). ``min_score``: weaker detections are dropped.
    """

    def __init__(self, *, upsample: int = 1, min_score: float = DEFAULT_MIN_SCORE,
                 max_side: int = 2048) -> None:
        dlib = _dlib()
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor_path()))
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self.max_side = int(max_side)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces of an RGB uint8 photo [H, W, 3], largest first. Large photos are searched at
        ``max_side`` pixels and their landmarks placed at full resolution."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            from PIL import Image

            small = np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)),
                                                           max(1, round(h * scale))),
                                                          Image.Resampling.BOX))
        rects, scores, _ = self.detector.run(small, self.upsample, 0)
        faces = []
        for r, s in zip(rects, scores, strict=True):
            if s < self.min_score:
                continue
            box = (round(r.left() / scale), round(r.top() / scale), round(r.right() / scale),
                   round(r.bottom() / scale))
            rect = self._dlib.rectangle(*box)
            shape = self.predictor(rgb, rect)
            lm = np.array([[shape.part(i).x + 0.5, shape.part(i).y + 0.5]
                           for i in range(shape.num_parts)], dtype=np.float64)
            faces.append(Face(box, float(s), lm))
        return sorted(faces, key=lambda f: (-f.area, -f.score))

    def align(self, rgb: np.ndarray, size: int, which: str = "largest",
              name: str = "photo", hint: str | None = None) -> list[tuple[Face, Placement]]:
        """The selected faces of a photo with their aligned placements; :class:`NoFaceError`
        naming the photo when there is none (``hint``, what the caller can do instead, ends
        its message)."""
        faces = self.detect(rgb)
        if not faces:
            raise NoFaceError(f"{name}: no face found" + (f"; {hint}" if hint else ""))
        h, w = rgb.shape[:2]
        return [(f, aligned_placement((w, h), size, f.landmarks))
                for f in select_faces(faces, which)]
