"""Named regions of a face (``mouth``, ``eyes``, ``skin``, ...) from its 68 dlib landmarks.

Alignment (:mod:`stylemapgan.imaging.faces`) already places the 68 points of the iBUG 300-W
scheme on every face; this module turns them into soft masks, so a region can be chosen by
name instead of painted. Everything is plane geometry on the landmarks: a region is a set of
polygons, drawn with the same code in any frame the landmarks are given in (the photo's pixels,
or the aligned square's after :meth:`~stylemapgan.imaging.placement.Placement.from_photo`, as
:func:`aligned_face_regions` does).

Regions (:data:`FACE_REGIONS`)::

    left_eye, right_eye   the eye contours (36-41, the eye on the image's left; 42-47)
    eyes                  both eyes
    brows                 the brow lines (17-21, 22-26) thickened downward by 0.14 and
                          upward by 0.04 of the eye distance (the points lie on the brows'
                          upper edges)
    nose                  the convex hull of the bridge and the base (27-35), a little wider
    mouth                 inside the outer lip contour (48-59): lips, teeth and the opening
    lips                  the mouth without the inside of the inner contour (60-67)
    features              eyes, brows, nose and mouth together
    features_hull         their convex hull (brows to mouth, one piece)
    face                  the jaw line (0-16) closed over the forehead: the brow line raised
                          by 0.6 of the brow-to-nose-base height (the face's upper third)
    skin                  face minus eyes, brows and mouth
    background            outside an estimate of the head: the face grown by 30% with
                          room for hair above it, and a band for the neck below the jaw.
                          Approximate: long hair, hats, shoulders and the body count as
                          background, and a large hairdo reaches into it

Soft edges: a mask is 1 inside its region grown by ``grow`` pixels (negative: shrunk) and
falls linearly to 0 over the next ``soft`` pixels outside (default: a tenth of the eye
distance, so the same region looks the same at any scale). A landmark on a region's outline
is therefore always inside its mask. Where the soft edge is 8 pixels or wider, distances are
computed every quarter of its width and interpolated (a 16-megapixel photo takes seconds, not
half a minute); that moves mask values by at most about 0.1, at corners, 1e-5 on average.

The 68-point predictor only sees the face: no region here knows where the hair ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from stylemapgan.errors import InputError

log = logging.getLogger(__name__)

#: The named regions of a face photo, with what each means (see the module notes).
FACE_REGIONS: dict[str, str] = {
    "left_eye": "the eye on the image's left (landmarks 36-41)",
    "right_eye": "the eye on the image's right (landmarks 42-47)",
    "eyes": "both eyes",
    "brows": "both eyebrows",
    "nose": "the nose, bridge to nostrils",
    "mouth": "inside the outer lip line: lips, teeth and the opening",
    "lips": "the lips only (the mouth without its opening)",
    "features": "eyes, brows, nose and mouth together",
    "features_hull": "the convex hull of eyes, brows, nose and mouth",
    "face": "the jaw line closed over the forehead",
    "skin": "the face minus eyes, brows and mouth",
    "background": "outside the head (approximate: hair, hats and the body are guessed)",
}

#: Label ids of the label map :func:`label_map` draws: CelebAMask-HQ's, so the map works as
#: ``labels=FILE parts=mouth`` wherever a label map is taken (:mod:`stylemapgan.imaging.masks`).
#: 255: the head around the face and the neck (neither background nor a named part).
LABEL_IDS: dict[str, int] = {"background": 0, "skin": 1, "nose": 2, "left_eye": 4,
                             "right_eye": 5, "brows": 6, "mouth": 10, "upper_lip": 11,
                             "lower_lip": 12, "head": 255}
#: The colours of :func:`label_map`'s palette, by label id (unlisted ids: black).
LABEL_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (40, 40, 40), 1: (230, 180, 140), 2: (255, 120, 40), 4: (40, 120, 255), 5: (40, 200, 255),
    6: (120, 60, 20), 7: (120, 60, 20), 10: (150, 0, 60), 11: (230, 40, 90), 12: (255, 90, 140),
    255: (150, 150, 150),
}

_BROW_BELOW, _BROW_ABOVE = 0.14, 0.04   # brow thickness, in eye distances
_FOREHEAD = 0.6                          # forehead height, in brow-to-nose-base heights
_SOFT = 0.1                              # default soft edge, in eye distances

Polygon = np.ndarray  # [K, 2] (x, y)


# --------------------------------------------------------------------------- geometry
class FaceGeometry:
    """The polygons of a face's regions, from 68 landmarks [68, 2] (x, y) in any frame."""

    def __init__(self, landmarks: np.ndarray) -> None:
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.shape != (68, 2) or not np.isfinite(lm).all():
            raise InputError(f"face regions need 68 finite landmarks [68, 2], got shape "
                             f"{tuple(lm.shape)}")
        self.lm = lm
        eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
        self.eye_distance = float(np.hypot(*(eye_r - eye_l)))
        if self.eye_distance < 1e-6:
            raise InputError("the face's landmarks are degenerate (the eyes coincide)")
        right = (eye_r - eye_l) / self.eye_distance
        down = np.array([-right[1], right[0]])
        if float(np.dot(lm[48:60].mean(0) - (eye_l + eye_r) / 2, down)) < 0:
            down = -down  # a mirrored frame: "down" is still toward the mouth
        self.right, self.down = right, down

    # -- the parts
    def eye(self, side: str) -> list[Polygon]:
        return [self.lm[36:42] if side == "left" else self.lm[42:48]]

    def brows(self) -> list[Polygon]:
        out = []
        for b in (self.lm[17:22], self.lm[22:27]):
            upper = b - self.down * (_BROW_ABOVE * self.eye_distance)
            lower = b + self.down * (_BROW_BELOW * self.eye_distance)
            out.append(np.concatenate([upper, lower[::-1]]))
        return out

    def nose(self) -> list[Polygon]:
        lm, d = self.lm, self.eye_distance
        extra = [lm[27] - self.right * 0.1 * d, lm[27] + self.right * 0.1 * d,
                 lm[31] - self.right * 0.06 * d, lm[35] + self.right * 0.06 * d]
        return [_convex_hull(np.concatenate([lm[27:36], np.array(extra)]))]

    def mouth(self) -> list[Polygon]:
        return [self.lm[48:60]]

    def inner_mouth(self) -> list[Polygon]:
        return [self.lm[60:68]]

    def upper_lip(self) -> list[Polygon]:
        lm = self.lm
        return [np.concatenate([lm[48:55], lm[64:59:-1]])]  # 48..54 then inner 64..60

    def features_hull(self) -> list[Polygon]:
        parts = self.eye("left") + self.eye("right") + self.brows() + self.nose() + self.mouth()
        return [_convex_hull(np.concatenate(parts))]

    def face(self) -> list[Polygon]:
        lm = self.lm
        brow_mid = lm[17:27].mean(0)
        third = max(float(np.dot(lm[33] - brow_mid, self.down)), 0.2 * self.eye_distance)
        lift = self.down * (_FOREHEAD * third)
        top = lm[26:16:-1] - lift  # over the brows, from the image's right to its left
        # From the jaw's ends up to the forehead: halfway between the jaw end and the brow end.
        side_r = (lm[16] + lm[26]) / 2 - lift * 0.6
        side_l = (lm[0] + lm[17]) / 2 - lift * 0.6
        return [np.concatenate([lm[0:17], side_r[None], top, side_l[None]])]

    def head(self) -> list[Polygon]:
        """The face grown by 30% about its centre, raised for hair, and the neck."""
        (face,) = self.face()
        c = face.mean(0)
        grown = c + (face - c) * 1.3
        up = np.clip(np.einsum("ij,j->i", c - face, self.down), 0, None)  # above the centre
        grown = grown - self.down * up[:, None] * 0.5
        lm = self.lm
        reach = 4.0 * self.eye_distance
        neck = np.array([lm[4], lm[12], lm[12] + self.down * reach, lm[4] + self.down * reach])
        return [_convex_hull(grown), neck]


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """The convex hull of [N, 2] points, counter-clockwise (Andrew's monotone chain)."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


# --------------------------------------------------------------------------- distances
def _signed_distance(polys: Sequence[Polygon], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance from points (x, y) (arrays of one shape) to the union of ``polys``:
    negative inside (even-odd rule), positive outside. The union's is the minimum of the
    polygons' own: exact outside; inside, the depth in the deepest polygon."""
    out = np.full(x.shape, np.inf)
    for poly in polys:
        a = np.asarray(poly, dtype=np.float64)
        b = np.roll(a, -1, axis=0)
        best = np.full(x.shape, np.inf)
        odd = np.zeros(x.shape, dtype=bool)
        for (ax, ay), (bx, by) in zip(a, b, strict=True):
            ex, ey = bx - ax, by - ay
            den = ex * ex + ey * ey
            px, py = x - ax, y - ay
            t = np.clip((px * ex + py * ey) / den, 0.0, 1.0) if den > 0 else 0.0
            best = np.minimum(best, np.hypot(px - t * ex, py - t * ey))
            if ay != by:  # a ray toward +x crosses this edge
                odd ^= ((ay > y) != (by > y)) & (x < ax + (y - ay) * ex / ey)
        out = np.minimum(out, np.where(odd, -best, best))
    return out


#: How each region is made of the geometry's parts: (its signed distance from the parts' signed
#: distances, the parts whose box bounds it, or None when it is unbounded, i.e. a complement).
def _recipes(g: FaceGeometry) -> dict[str, tuple[Callable[[Callable[[str], np.ndarray]], np.ndarray],
                                                 list[Polygon] | None]]:
    return {
        "left_eye": (lambda d: d("left_eye"), g.eye("left")),
        "right_eye": (lambda d: d("right_eye"), g.eye("right")),
        "eyes": (lambda d: np.minimum(d("left_eye"), d("right_eye")),
                 g.eye("left") + g.eye("right")),
        "brows": (lambda d: d("brows"), g.brows()),
        "nose": (lambda d: d("nose"), g.nose()),
        "mouth": (lambda d: d("mouth"), g.mouth()),
        "lips": (lambda d: np.maximum(d("mouth"), -d("inner_mouth")), g.mouth()),
        "features": (lambda d: np.minimum.reduce([d("left_eye"), d("right_eye"), d("brows"),
                                                  d("nose"), d("mouth")]),
                     g.eye("left") + g.eye("right") + g.brows() + g.nose() + g.mouth()),
        "features_hull": (lambda d: d("features_hull"), g.features_hull()),
        "face": (lambda d: d("face"), g.face()),
        "skin": (lambda d: np.maximum(d("face"), -np.minimum.reduce(
            [d("left_eye"), d("right_eye"), d("brows"), d("mouth")])), g.face()),
        "background": (lambda d: -d("head"), None),
    }


def _parts(g: FaceGeometry) -> dict[str, list[Polygon]]:
    return {"left_eye": g.eye("left"), "right_eye": g.eye("right"), "brows": g.brows(),
            "nose": g.nose(), "mouth": g.mouth(), "inner_mouth": g.inner_mouth(),
            "upper_lip": g.upper_lip(), "features_hull": g.features_hull(), "face": g.face(),
            "head": g.head()}


def _canvas(size: int | tuple[int, int]) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, (int, np.integer)) else size
    w, h = int(w), int(h)
    if w < 1 or h < 1:
        raise InputError(f"face regions: a canvas of {w}x{h} pixels is empty")
    return w, h


def check_region_names(names: str | Iterable[str], available: Iterable[str],
                       image: str = "the image") -> list[str]:
    """``"eyes,brows"`` or a list -> the names, each checked against ``available``: an
    unknown one is a one-line :class:`InputError` naming ``image`` and listing what it has."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    items = [n for n in items if n]
    have = list(available)
    if not items:
        raise InputError(f"no region named; {image} has: {', '.join(have)}")
    bad = [n for n in items if n not in have]
    if bad:
        raise InputError(f"{image} has no region {bad[0]!r}; it has: {', '.join(have)}")
    return list(dict.fromkeys(items))


def face_region_masks(landmarks: np.ndarray, size: int | tuple[int, int],
                      names: str | Iterable[str] | None = None, *, grow: float = 0.0,
                      soft: float | None = None) -> dict[str, np.ndarray]:
    """Soft masks of a face's named regions on a canvas of ``size`` (side, or (width, height))
    whose pixel (i, j) covers [j, j+1) x [i, i+1) in the landmarks' coordinates.

    ``names``: some of :data:`FACE_REGIONS` (a list or ``"eyes,brows"``; default all).
    ``grow``: pixels to grow each region by (negative: shrink). ``soft``: the width of the
    soft edge in pixels (default: a tenth of the eye distance). Returns float32 [H, W] masks
    in [0, 1], 1 inside the grown region.
    """
    w, h = _canvas(size)
    grow = float(grow)
    if not np.isfinite(grow) or abs(grow) > 4 * max(w, h):
        raise InputError(f"region grow {grow:g} px is not a finite size for a {w}x{h} image")
    geometry = FaceGeometry(landmarks)
    soft = _SOFT * geometry.eye_distance if soft is None else float(soft)
    if not np.isfinite(soft) or soft <= 0:
        raise InputError(f"region soft edge must be a positive number of pixels, got {soft:g}")
    chosen = list(FACE_REGIONS) if names is None else check_region_names(
        names, FACE_REGIONS, "a face")
    recipes, parts = _recipes(geometry), _parts(geometry)
    margin = max(grow, 0.0) + soft + 1.0
    # Distances vary by at most a pixel per pixel: on a large photo they are computed every
    # ``step`` pixels (a quarter of the soft edge) and interpolated in between.
    step = max(1, int(soft // 4))
    out = {}
    for name in chosen:
        combine, bound = recipes[name]
        if bound is None:  # a complement: 1 far from the parts, computed near them only
            bound, fill, margin_n = parts["head"], 1.0, abs(grow) + soft + 1.0
        else:
            fill, margin_n = 0.0, margin
        pts = np.concatenate(bound)
        x0 = int(np.clip(np.floor(pts[:, 0].min() - margin_n), 0, w))
        x1 = int(np.clip(np.ceil(pts[:, 0].max() + margin_n), 0, w))
        y0 = int(np.clip(np.floor(pts[:, 1].min() - margin_n), 0, h))
        y1 = int(np.clip(np.ceil(pts[:, 1].max() + margin_n), 0, h))
        mask = np.full((h, w), fill, dtype=np.float32)
        if x1 > x0 and y1 > y0:
            d = _window_distance(combine, parts, x0, x1, y0, y1, step)
            mask[y0:y1, x0:x1] = np.clip(1.0 - (d - grow) / soft, 0.0, 1.0)
        out[name] = mask
    return out


def _window_distance(combine, parts: Mapping[str, list[Polygon]], x0: int, x1: int, y0: int,
                     y1: int, step: int) -> np.ndarray:
    """A region's signed distance at the pixel centres of [y0:y1, x0:x1] (float64), exact
    at every ``step``-th pixel and bilinear in between."""
    nx, ny = -(-(x1 - 1 - x0) // step) + 1, -(-(y1 - 1 - y0) // step) + 1
    xs = np.linspace(x0, x1 - 1, nx) + 0.5 if step > 1 else np.arange(x0, x1) + 0.5
    ys_all = np.linspace(y0, y1 - 1, ny) + 0.5 if step > 1 else np.arange(y0, y1) + 0.5
    rows = max(1, 262_144 // len(xs))
    coarse = np.empty((len(ys_all), len(xs)))
    for r0 in range(0, len(ys_all), rows):
        gx, gy = np.meshgrid(xs, ys_all[r0: r0 + rows])
        cache: dict[str, np.ndarray] = {}

        def dist(part: str, gx=gx, gy=gy, cache=cache) -> np.ndarray:
            if part not in cache:
                cache[part] = _signed_distance(parts[part], gx, gy)
            return cache[part]

        coarse[r0: r0 + rows] = combine(dist)
    if step == 1:
        return coarse
    import torch
    import torch.nn.functional as F

    fine = F.interpolate(torch.from_numpy(coarse)[None, None], size=(y1 - y0, x1 - x0),
                         mode="bilinear", align_corners=True)
    return fine[0, 0].numpy()


def aligned_face_regions(landmarks: np.ndarray, placement, names: str | Iterable[str] | None = None,
                         *, grow: float = 0.0, soft: float | None = None) -> dict[str, np.ndarray]:
    """:func:`face_region_masks` in the model's square of ``placement`` (a
    :class:`~stylemapgan.imaging.placement.Placement`: a face alignment, or any crop, pad or
    box; ``landmarks`` in photo pixels, as :class:`~stylemapgan.imaging.faces.Face` holds
    them): [size, size] masks, ``grow`` and ``soft`` in the square's pixels."""
    return face_region_masks(placement.from_photo(landmarks), placement.size, names, grow=grow,
                             soft=soft)


def union(masks: Mapping[str, np.ndarray], names: str | Iterable[str],
          image: str = "the image") -> np.ndarray:
    """The union (pixelwise max) of the named masks, e.g. ``"eyes,brows"``; a name ``masks``
    lacks is a one-line error naming ``image`` and listing the regions it has."""
    chosen = check_region_names(names, masks, image)
    return np.maximum.reduce([np.asarray(masks[n], dtype=np.float32) for n in chosen])


def label_map(landmarks: np.ndarray, size: int | tuple[int, int], *, grow: float = 0.0,
              soft: float | None = None) -> np.ndarray:
    """A hard label map [H, W] uint8 of the face (ids of :data:`LABEL_IDS`, CelebAMask-HQ's):
    each pixel gets the label of a part whose mask covers at least half of it (eyes and lips
    over brows, over the mouth's opening, over the nose, over skin); the rest of the head and
    the neck 255, everything else background (0)."""
    w, h = _canvas(size)
    geometry = FaceGeometry(landmarks)
    soft = _SOFT * geometry.eye_distance if soft is None else float(soft)
    m = face_region_masks(landmarks, (w, h), ["left_eye", "right_eye", "brows", "mouth", "lips",
                                              "nose", "face", "background"], grow=grow, soft=soft)
    # The upper and lower lip, split by the line through the mouth corners.
    lm = geometry.lm
    lips = (m["lips"] >= 0.5) & (m["left_eye"] < 0.5) & (m["right_eye"] < 0.5)
    ys, xs = np.nonzero(lips)
    v = lm[54] - lm[48]
    side = v[0] * (ys + 0.5 - lm[48, 1]) - v[1] * (xs + 0.5 - lm[48, 0])
    below = side * np.sign(v[0] * geometry.down[1] - v[1] * geometry.down[0]) > 0
    labels = np.full((h, w), LABEL_IDS["head"], dtype=np.uint8)
    labels[m["background"] >= 0.5] = LABEL_IDS["background"]
    order = [("face", LABEL_IDS["skin"]), ("nose", LABEL_IDS["nose"]),
             ("mouth", LABEL_IDS["mouth"]), ("brows", LABEL_IDS["brows"]),
             ("left_eye", LABEL_IDS["left_eye"]), ("right_eye", LABEL_IDS["right_eye"])]
    for name, lid in order:  # later ones are drawn over earlier ones
        labels[m[name] >= 0.5] = lid
    labels[ys[~below], xs[~below]] = LABEL_IDS["upper_lip"]
    labels[ys[below], xs[below]] = LABEL_IDS["lower_lip"]
    return labels


def label_palette() -> list[int]:
    """The 768-entry palette (RGB per id) for saving :func:`label_map` as a palette PNG."""
    pal = [0] * 768
    for lid, rgb in LABEL_COLOURS.items():
        pal[3 * lid: 3 * lid + 3] = list(rgb)
    return pal


__all__ = ["FACE_REGIONS", "LABEL_COLOURS", "LABEL_IDS", "FaceGeometry", "aligned_face_regions",
           "check_region_names", "face_region_masks", "label_map", "label_palette", "union"]
