"""Routes of the web editor for full photos (any shape): upload, pick a face or a square, and
get edits back pasted into the whole photo. Registered by :func:`stylemapgan.web.app.create_app`.

- ``POST /api/photos``: upload a photo (multipart field ``file``, the upload limits apply); it
  is kept at full resolution, except that a photo at least twice ``WebSettings.photo_side``
  (2048) on its longer side is reduced while decoded, by the whole factor that keeps it that
  long (and the model's size on its shorter side); for a face model (``serve --align``), its
  faces are detected once. Returns its id, size, preview URL and faces (box and detector
  score, largest first).
- ``GET /api/photos/{id}/preview.png``: the photo, at most 768 px a side.
- ``POST /api/photos/{id}/crop``: ``{"face": N}`` (an aligned face) or ``{"box": [x0, y0, x1,
  y1]}`` (photo pixels; the largest centred square of it) -> an image record like an upload's.
- ``GET /api/results/{rid}/{k}/full.png``: frame ``k`` of an edit pasted back into the full
  photo its original was cut from (only where the edit can change pixels).
- ``GET /api/images/{id}/error.png``: the reconstruction error |x - G(E(x))| as a red overlay.
"""

from typing import Annotated, Any

from fastapi import FastAPI, File, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, Field

from stylemapgan.errors import InputError
from stylemapgan.web.engine import EditEngine
from stylemapgan.web.imaging import photo_keep, store_upload

# The ids of stylemapgan.web.app (a photo id is an image id: 32 hex digits of a SHA-256).
PHOTO_ID = IMAGE_ID = r"^[0-9a-f]{32}$"
RESULT_ID = r"^[A-Za-z0-9_-]{16}$"


class CropIn(BaseModel):
    face: int | None = Field(None, ge=0, le=1000, description="index of a detected face")
    box: list[Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]] | None = Field(
        None, min_length=4, max_length=4, description="left, top, right, bottom in photo pixels")


def add_photo_routes(app: FastAPI, engine: EditEngine) -> None:
    """Register the routes above on ``app`` (no ``from __future__ import annotations`` here:
    FastAPI reads the parameters' annotations)."""
    settings = engine.settings
    keep = photo_keep(engine.size, settings.photo_side)

    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png")

    @app.post("/api/photos", status_code=201)
    def upload_photo(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        return store_upload(file, settings, keep, engine.add_photo)

    @app.get("/api/photos/{pid}/preview.png")
    def photo_preview(pid: Annotated[str, PathParam(pattern=PHOTO_ID)]) -> Response:
        return png(engine.photo(pid).preview)

    @app.post("/api/photos/{pid}/crop", status_code=201)
    def photo_crop(pid: Annotated[str, PathParam(pattern=PHOTO_ID)], body: CropIn) -> dict[str, Any]:
        if (body.face is None) == (body.box is None):
            raise InputError("give either face (a detected face's number) or box "
                             "[left, top, right, bottom]")
        box = tuple(body.box) if body.box is not None else None
        return engine.crop_photo(pid, face=body.face, box=box).describe()

    @app.get("/api/results/{rid}/{k}/full.png")
    def result_full(rid: Annotated[str, PathParam(pattern=RESULT_ID)],
                    k: Annotated[int, PathParam(ge=0, le=4096)]) -> Response:
        return png(engine.full_png(rid, k))

    @app.get("/api/images/{iid}/error.png")
    def image_error(iid: Annotated[str, PathParam(pattern=IMAGE_ID)]) -> Response:
        return png(engine.error_png(iid))
