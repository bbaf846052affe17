"""What the web editor keeps beside the editing engine: uploaded images, reconstructions and
results, each in a store bounded in bytes, and the edit records a browser downloads.

Every edit runs through :class:`stylemapgan.editing.Editor`, the same engine as the command line
and the Python API; it owns the projection cache (bounded in bytes) and the optional fast path.
Images are reduced to the model's resolution when they arrive (center crop, the placement of
:mod:`stylemapgan.imaging.placement`) and identified by the SHA-256 of those pixels, so the same
picture uploaded twice (or as PNG and as lossless WebP) is one entry and is projected once; an
edit then costs one generator pass per interpolation step.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from stylemapgan.editing.cache import ByteLRU
from stylemapgan.editing.editor import Editor, Projection
from stylemapgan.editing.operations import Space, check_space
from stylemapgan.editing.record import frame_names, new_record, sha256_bytes
from stylemapgan.editing.regions import Region, moved_union, paste_mask
from stylemapgan.errors import InputError
from stylemapgan.imaging import images
from stylemapgan.imaging.images import from_uint8, to_uint8
from stylemapgan.imaging.photos import photo_faces, photo_square
from stylemapgan.imaging.placement import Placement, paste_back
from stylemapgan.nn.networks import StyleMapGAN
from stylemapgan.nn.runtime import RuntimeOptions
from stylemapgan.web.imaging import WEB_PNG_LEVEL
from stylemapgan.web.settings import WebSettings

log = logging.getLogger(__name__)


class NotFound(InputError):
    """An id the server does not know (or no longer keeps)."""


#: What names an uploaded photo in the region library's messages (never a path: the library
#: would look for an avatar dataset beside a path it is given).
PHOTO_LABEL = "uploaded photo"


@dataclass(frozen=True)
class RegionSource:
    """Where a stored image's named regions come from: an avatar image file of a
    ``make-avatars`` dataset (a gallery image; its part masks), or the 68 ``landmarks`` (photo
    pixels) that aligning its photo found. ``placement``: the image's square in that file or
    photo."""

    placement: Placement
    avatar: str | None = None
    landmarks: np.ndarray | None = None

    def names(self) -> list[str]:
        from stylemapgan.data.regions import available_regions
        from stylemapgan.imaging.face_regions import FACE_REGIONS

        if self.avatar is not None:
            return available_regions(self.avatar)
        return list(FACE_REGIONS) if self.landmarks is not None else []


@dataclass(frozen=True)
class StoredImage:
    id: str
    name: str
    source: str
    pixels: np.ndarray  # [S, S, 3] uint8 at the model's resolution
    png: bytes
    photo: str | None = None  # id of the full photo it was cut from (see add_photo)
    placement: Placement | None = None  # where in that photo
    regions: RegionSource | None = None  # its named regions (avatars, aligned photos)

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes + len(self.png)

    def describe(self) -> dict[str, Any]:
        size = self.pixels.shape[0]
        d = {"id": self.id, "name": self.name, "source": self.source, "width": size,
             "height": size, "url": f"/api/images/{self.id}.png",
             "reconstruction": f"/api/images/{self.id}/reconstruction.png",
             "error": f"/api/images/{self.id}/error.png"}
        if self.photo is not None:
            d["photo"] = self.photo
        return d


#: Longest side of the preview of a full photo the page shows for picking a face or a square.
PREVIEW_SIDE = 768


@dataclass(frozen=True)
class StoredPhoto:
    """A full uploaded photo (any shape), kept to cut squares from and to paste edits into."""

    id: str
    name: str
    source: str
    pixels: np.ndarray  # [H, W, 3] uint8, EXIF orientation applied
    faces: tuple[dict[str, Any], ...]  # detected faces: box, score and their aligned placement
    preview: bytes  # PNG, at most PREVIEW_SIDE a side

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes + len(self.preview) + 68 * 2 * 8 * len(self.faces)

    def describe(self) -> dict[str, Any]:
        h, w = self.pixels.shape[:2]
        return {"id": self.id, "name": self.name, "source": self.source, "width": w, "height": h,
                "preview": f"/api/photos/{self.id}/preview.png",
                "faces": [{"index": i, "box": f["box"], "score": f["score"]}
                          for i, f in enumerate(self.faces)]}


@dataclass(frozen=True)
class EditSpec:
    original: str
    references: tuple[str, ...] = ()
    regions: tuple[Region, ...] = ()  # painted masks [S, S], data_url = as the browser sent it
    space: Space = "wplus"
    steps: int = 1


@dataclass
class EditResult:
    id: str
    frames: list[bytes]
    record: dict[str, Any]
    compute_ms: float
    method: str
    created: float = field(default_factory=time.time)
    source_photo: str | None = None  # full photo of the original (for paste-back)
    placement: Placement | None = None
    paste_mask: np.ndarray | None = None
    feather: float = 4.0

    @property
    def nbytes(self) -> int:
        return sum(len(f) for f in self.frames) + sum(
            len(x.get("image", "")) for x in self.record.get("inputs", [])) + 4096

    def urls(self) -> dict[str, Any]:
        urls: dict[str, Any] = {
            "frames": [f"/api/results/{self.id}/{k}.png" for k in range(len(self.frames))],
            "record": f"/api/results/{self.id}/record.json"}
        if self.source_photo is not None:
            urls["full"] = [f"/api/results/{self.id}/{k}/full.png" for k in range(len(self.frames))]
        return urls


def image_id(pixels: np.ndarray) -> str:
    h = hashlib.sha256(f"{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()[:32]


class EditEngine:
    """The web editor's stores around one :class:`~stylemapgan.editing.Editor`. Thread-safe
    (the Editor serializes network passes)."""

    def __init__(self, model: StyleMapGAN, settings: WebSettings | None = None, *,
                 model_name: str = "model", model_sha256: str | None = None,
                 model_path: str | None = None, runtime: RuntimeOptions | None = None,
                 batch_size: int = 16, align: bool = False) -> None:
        self.settings = settings or WebSettings()
        model = model.eval().requires_grad_(False)
        self.editor = Editor(model, batch_size=batch_size,
                             cache_bytes=self.settings.projection_cache_bytes, runtime=runtime)
        self.model = self.editor.model
        self.config = model.config
        self.size = model.config.size
        self.device = self.editor.device
        self.model_name = model_name
        if model_path is not None and model_sha256 is None:
            from stylemapgan.files import sha256_file

            model_sha256 = sha256_file(model_path)
        self.model_sha256 = model_sha256
        self.model_path = model_path
        self.images: ByteLRU[StoredImage] = ByteLRU(self.settings.image_store_bytes, lambda v: v.nbytes)
        self.reconstructions: ByteLRU[bytes] = ByteLRU(self.settings.image_store_bytes // 4, len)
        self.results: ByteLRU[EditResult] = ByteLRU(self.settings.result_store_bytes,
                                                    lambda v: v.nbytes)
        self.photos: ByteLRU[StoredPhoto] = ByteLRU(self.settings.image_store_bytes,
                                                    lambda v: v.nbytes)
        self.pasted: ByteLRU[bytes] = ByteLRU(self.settings.result_store_bytes // 2, len)
        self.region_masks: ByteLRU[bytes] = ByteLRU(self.settings.image_store_bytes // 8, len)
        self.generator_passes = 0
        self.align = bool(align)
        self._aligner = None
        if self.align:  # fail at start-up, not at the first upload, without the faces extra
            self._face_aligner()

    # ------------------------------------------------------------------ views of the editor
    @property
    def runtime(self) -> RuntimeOptions:
        return self.editor.runtime

    @property
    def runner(self):
        return self.editor.runner

    @property
    def projections(self) -> ByteLRU[Projection]:
        """The editor's projection cache (keys: image ids)."""
        return self.editor.cache

    @property
    def projection_count(self) -> int:
        """Images the encoder has projected so far."""
        return self.editor.encoder_images

    # ------------------------------------------------------------------ images
    def add_image(self, img: Image.Image, name: str, source: str = "upload", *,
                  path: str | os.PathLike[str] | None = None) -> StoredImage:
        """Store ``img`` at the model's resolution (center crop) and project it (once per
        content). ``path``: the server-side file it was read from (a gallery image); an avatar
        of a ``make-avatars`` dataset brings its named regions."""
        sq = photo_square(img, self.size, fit="crop", name=name)
        pixels = sq.pixels
        iid = image_id(pixels)
        stored = self.images.get(iid)
        regions = None
        if path is not None and (stored is None or stored.regions is None):
            from stylemapgan.data.avatars import avatar_of_image

            if avatar_of_image(path) is not None:
                regions = RegionSource(sq.placement, avatar=str(path))
        if stored is None or regions is not None:
            stored = StoredImage(iid, name, source, pixels,
                                 images.encode_png(pixels, WEB_PNG_LEVEL), regions=regions)
            self.images.put(iid, stored)
        self.reconstruction_png(iid, stored)
        return stored

    def image(self, iid: str) -> StoredImage:
        return _lookup(self.images, iid, "image")

    def projection(self, iid: str, stored: StoredImage | None = None) -> Projection:
        """The image's projection, from the editor's cache or made now."""
        stored = stored or self.image(iid)
        t0 = time.perf_counter()
        before = self.editor.encoder_images
        proj = self.editor.projection(from_uint8(stored.pixels), key=iid)
        if self.editor.encoder_images != before:
            log.info("projected image %s in %.0f ms", iid[:12], 1000 * (time.perf_counter() - t0))
        return proj

    def reconstruction_png(self, iid: str, stored: StoredImage | None = None) -> bytes:
        """G(E(x)) of a stored image as PNG (made once, kept while memory allows)."""
        png = self.reconstructions.get(iid)
        if png is None:
            proj = self.projection(iid, stored)
            png = images.encode_png(to_uint8(self.editor.reconstruct(proj))[0], WEB_PNG_LEVEL)
            self.generator_passes += 1
            self.reconstructions.put(iid, png)
        return png

    def error_png(self, iid: str) -> bytes:
        """|x - G(E(x))| of a stored image as a red overlay PNG (RGBA): opacity = error, full
        at an error of half the value range; where the model reconstructs well it is clear."""
        stored = self.image(iid)
        recon = np.asarray(Image.open(io.BytesIO(self.reconstruction_png(iid, stored))))
        err = np.abs(stored.pixels.astype(np.float32) - recon[..., :3].astype(np.float32)).mean(-1)
        rgba = np.zeros((*err.shape, 4), np.uint8)
        rgba[..., 0] = 255
        rgba[..., 3] = np.clip(err / 127.5 * 255 * 2, 0, 255).astype(np.uint8)
        return images.encode_png(rgba, WEB_PNG_LEVEL)

    # ------------------------------------------------------------------ full photos
    def _face_aligner(self):
        if self._aligner is None:
            from stylemapgan.imaging.faces import FaceAligner

            self._aligner = FaceAligner()
        return self._aligner

    def add_photo(self, img: Image.Image, name: str, source: str = "upload") -> StoredPhoto:
        """Keep a full photo; with ``align`` (a face model, ``serve --align``) detect its faces
        and their aligned placements. The user then picks a face or draws a square
        (:meth:`crop_photo`)."""
        pixels = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
        pid = image_id(pixels)
        stored = self.photos.get(pid)
        if stored is not None:
            return stored
        faces: list[dict[str, Any]] = []
        if self.align:
            faces = [{"box": list(f.box), "score": round(f.score, 3), "placement": pl,
                      "landmarks": np.asarray(f.landmarks, dtype=np.float64)}
                     for f, pl in photo_faces(pixels, self.size, self._face_aligner())]
        preview = img.convert("RGB")
        if max(preview.size) > PREVIEW_SIDE:
            preview = preview.copy()
            preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
        stored = StoredPhoto(pid, name, source, pixels, tuple(faces),
                             images.encode_png(np.asarray(preview), WEB_PNG_LEVEL))
        self.photos.put(pid, stored)
        return stored

    def photo(self, pid: str) -> StoredPhoto:
        return _lookup(self.photos, pid, "photo")

    def crop_photo(self, pid: str, *, face: int | None = None,
                   box: tuple[float, float, float, float] | None = None) -> StoredImage:
        """The model's square cut from a stored photo: an aligned face (by index) or a square
        ``box`` in photo pixels (left, top, right, bottom). Stored like an upload, projected
        once, and remembered with its placement for pasting edits back."""
        photo = self.photo(pid)
        if (face is None) == (box is None):
            raise InputError("give either a face number or a box to cut from the photo")
        if face is not None and not 0 <= face < len(photo.faces):
            raise InputError(f"the photo has {len(photo.faces)} detected face(s); there is "
                             f"no face {face}" + ("" if photo.faces else "; draw a square"))
        sq = photo_square(Image.fromarray(photo.pixels), self.size, fit="crop", box=box,
                          placement=None if face is None else photo.faces[face]["placement"],
                          name=photo.name)
        iid = image_id(sq.pixels)
        landmarks = _face_in_square(photo.faces, face, sq.placement, self.size)
        regions = None if landmarks is None else RegionSource(sq.placement, landmarks=landmarks)
        stored = StoredImage(iid, photo.name, photo.source, sq.pixels,
                             images.encode_png(sq.pixels, WEB_PNG_LEVEL), pid, sq.placement,
                             regions)
        self.images.put(iid, stored)
        self.reconstruction_png(iid, stored)
        return stored

    def full_png(self, rid: str, k: int) -> bytes:
        """Frame ``k`` of a result pasted back into the full photo its original was cut from:
        only where the edit can change pixels (its regions, grown by the model's receptive
        field, feathered); every other pixel of the photo is unchanged."""
        key = (rid, k)
        found = self.pasted.get(key)
        if found is not None:
            return found
        res = self.result(rid)
        if res.source_photo is None:
            raise InputError("this edit's original was not cut from a full photo (it was "
                             "uploaded at model size or as a square); there is nothing to paste "
                             "it back into")
        if not 0 <= k < len(res.frames):
            raise NotFound(f"result {rid} has {len(res.frames)} frame(s); there is no frame {k}")
        photo = self.photo(res.source_photo)
        frame = np.asarray(Image.open(io.BytesIO(res.frames[k])).convert("RGB"))
        pasted = paste_back(photo.pixels, frame, res.placement, feather=res.feather,
                            mask=res.paste_mask)
        png = images.encode_png(pasted, WEB_PNG_LEVEL)
        self.pasted.put(key, png)
        return png

    # ------------------------------------------------------------------ named regions
    def region_names(self, iid: str) -> list[str]:
        """The named regions a stored image has: a gallery avatar's parts, the face regions of
        a face picked from a photo (alignment on), else none."""
        stored = self.image(iid)
        return [] if stored.regions is None else stored.regions.names()

    def region_png(self, iid: str, name: str) -> bytes:
        """The mask of one named region of a stored image in the model's square, as a gray PNG
        (0-255, soft edges), made from the landmarks or part masks kept with the image (nothing
        is detected again). A name the image lacks: :class:`NotFound` listing those it has."""
        stored = self.image(iid)
        have = self.region_names(iid)
        if name not in have:
            label = f"image {stored.name!r}"
            if not have:
                raise NotFound(f"{label} has no named regions (gallery avatars and faces picked "
                               "from a photo with alignment on have them); paint the region")
            raise NotFound(f"{label} has no region {name!r}; it has: {', '.join(have)}")
        key = (iid, name)
        found = self.region_masks.get(key)
        if found is not None:
            return found
        from stylemapgan.data.regions import image_regions

        src = stored.regions
        assert src is not None
        mask = image_regions(src.avatar or PHOTO_LABEL, self.size, src.placement, [name],
                             landmarks=src.landmarks)[name]
        png = images.encode_png(np.clip(np.rint(mask * 255), 0, 255).astype(np.uint8),
                                WEB_PNG_LEVEL)
        self.region_masks.put(key, png)
        return png

    # ------------------------------------------------------------------ edits
    def validate(self, spec: EditSpec) -> None:
        s = self.settings
        check_space(spec.space)
        if not 1 <= spec.steps <= s.max_steps:
            raise InputError(f"steps must be between 1 and {s.max_steps}, got {spec.steps}")
        if len(spec.references) > s.max_references:
            raise InputError(f"at most {s.max_references} references per edit, got {len(spec.references)}")
        if len(spec.regions) > 4 * s.max_references:
            raise InputError(f"at most {4 * s.max_references} regions per edit, got {len(spec.regions)}")
        for i, r in enumerate(spec.regions):
            if not 0 <= r.reference < len(spec.references):
                raise InputError(f"region {i} uses reference {r.reference}, but the edit has "
                                 f"{len(spec.references)} reference(s)")
            if tuple(r.mask.shape[-2:]) != (self.size, self.size):
                raise InputError(f"region {i}: mask is {tuple(r.mask.shape[-2:])}, expected "
                                 f"{self.size}x{self.size}")
            if abs(r.dx) > self.size or abs(r.dy) > self.size:
                raise InputError(f"region {i}: offset ({r.dx}, {r.dy}) is outside the image")

    def edit(self, spec: EditSpec) -> EditResult:
        """Run one edit: the original with each region of its reference pasted (moved by its
        offset), in W or W+, as ``spec.steps`` images from the reconstruction (0) to the full
        edit (1). Costs one generator pass for the batch of steps."""
        self.validate(spec)
        t0 = time.perf_counter()
        src = self.projection(spec.original)
        refs = [self.projection(r) for r in spec.references]
        painted = self.editor.paint(src, refs, spec.regions, space=spec.space, steps=spec.steps)
        method, used = painted.method, [spec.regions[i] for i in painted.used]
        self.generator_passes += 1
        frames = [images.encode_png(im, WEB_PNG_LEVEL) for im in painted.frames]
        compute_ms = 1000 * (time.perf_counter() - t0)
        rid = secrets.token_urlsafe(12)
        record = self._record(spec, used, method, frames, rid)
        result = EditResult(rid, frames, record, compute_ms, method)
        original = self.image(spec.original)
        if original.photo is not None and original.placement is not None:
            result.source_photo, result.placement = original.photo, original.placement
            result.feather = max(2.0, _scale_of(original.placement))
            # The page's full photo shows every pixel the edit can change.
            result.paste_mask = paste_mask(self.config, moved_union(used, self.size),
                                           area="footprint", space=spec.space)
        self.results.put(rid, result)
        return result

    def result(self, rid: str) -> EditResult:
        res = self.results.get(rid)
        if res is None:
            raise NotFound("unknown result id: it has been dropped from memory; run the edit again")
        return res

    def _record(self, spec: EditSpec, regions: list[Region], method: str,
                frames: list[bytes], rid: str) -> dict[str, Any]:
        """The downloadable record: it carries the inputs at model size and the masks as sent,
        so ``stylemapgan edit replay`` reproduces the frames byte for byte."""
        from stylemapgan.editing.operations import steps

        def item(role: str, iid: str) -> dict[str, Any]:
            stored = self.image(iid)
            return {"role": role, "kind": "image", "id": iid, "name": stored.name,
                    "source": stored.source, "sha256": sha256_bytes(stored.png),
                    "image": _data_url(stored.png)}

        inputs = [item("source", spec.original),
                  *(item(f"reference {i}", r) for i, r in enumerate(spec.references))]
        o = self.runtime
        model = {"name": self.model_name, "path": self.model_path, "sha256": self.model_sha256,
                 "config": self.config.to_dict(),
                 "runtime": {"precision": o.precision, "channels_last": o.channels_last,
                             "compile": o.compile, "cuda_graphs": o.cuda_graphs,
                             "describe": o.describe()}}
        t = steps(spec.steps)
        parameters = {"space": spec.space, "steps": spec.steps, "method": method,
                      "alpha": [round(float(v), 6) for v in t], "mask_mode": "area",
                      "batch_size": self.editor.batch_size}
        outputs = [{"path": name, "sha256": sha256_bytes(data)}
                   for name, data in zip(frame_names(len(frames)), frames, strict=True)]
        return new_record(
            source="web", operation="transplant" if method.startswith("transplant") else
            ("local" if method.startswith("local") else "reconstruct"),
            model=model, device=str(self.device), inputs=inputs, parameters=parameters,
            outputs=outputs, png_compress_level=WEB_PNG_LEVEL,
            image_ids="first 32 hex digits of the SHA-256 of the RGB pixels at model resolution",
            regions=[r.describe() for r in regions],
            result=rid)

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        c = self.config
        return {"model": self.model_name, "size": c.size, "stylemap": list(c.stylemap_shape),
                "num_styles": c.num_styles, "device": str(self.device),
                "precision": self.runtime.describe(),
                "max_references": self.settings.max_references, "max_steps": self.settings.max_steps,
                "max_upload_bytes": self.settings.max_upload_bytes,
                "max_pixels": self.settings.max_pixels, "align": self.align}

    def stats(self) -> dict[str, Any]:
        return {"images": self.images.stats(), "projections": self.projections.stats(),
                "reconstructions": self.reconstructions.stats(),
                "results": self.results.stats(), "projection_count": self.projection_count,
                "generator_passes": self.generator_passes}


def _lookup(store: ByteLRU, key: str, what: str):
    found = store.get(key)
    if found is None:
        raise NotFound(f"unknown {what} id {key[:40]!r}: it was never uploaded or has been "
                       "dropped from memory; upload it again")
    return found


def _face_in_square(faces: tuple[dict[str, Any], ...], face: int | None, placement: Placement,
                    size: int) -> np.ndarray | None:
    """The landmarks of the picked face, or for a square drawn by hand, of the first detected
    face whose landmarks all lie inside it; None without one."""
    if face is not None:
        return faces[face]["landmarks"]
    for f in faces:
        pts = placement.from_photo(f["landmarks"])
        if pts.min() >= 0 and pts.max() <= size:
            return f["landmarks"]
    return None


def _scale_of(pl: Placement) -> float:
    """Photo pixels per model pixel (the feather of a paste-back is about one model pixel)."""
    m = pl.matrix()
    return float(max(np.hypot(m[0, 0], m[1, 0]), np.hypot(m[0, 1], m[1, 1])))


def _data_url(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


__all__ = ["EditEngine", "EditResult", "EditSpec", "NotFound", "RegionSource", "StoredImage",
           "StoredPhoto",
           "image_id"]
