"""The FastAPI application of the web editor.

Routes (all JSON unless noted; errors are ``{"detail": "one-line message"}`` with a 4xx status):

- ``GET /``: the editor page; ``/static/*``: its script and style (shipped in the package).
- ``GET /api/info``: model and limits.
- ``POST /api/images``: upload one image (multipart field ``file``); it is reduced to the model's
  resolution, stored in memory and projected once. Returns its record (id, urls).
- ``GET /api/images/{id}.png``, ``GET /api/images/{id}/reconstruction.png``: the stored image
  and its reconstruction G(E(x)) (PNG).
- ``GET /api/images/{id}/regions``: the named regions the image has (a gallery avatar's parts,
  or a face's regions when it was picked from a photo with alignment on: ``mouth``, ``eyes``,
  ...); ``GET /api/images/{id}/regions/{name}.png``: one of them as a gray mask at the model's
  size (255 = inside, soft edges); a name the image lacks is a 404 listing those it has.
- ``GET /api/gallery``: the server-side gallery listing (opaque ids); ``GET
  /api/gallery/{gid}/thumb.png``: a thumbnail; ``POST /api/gallery/{gid}``: use a gallery image
  (like an upload).
- ``POST /api/edit``: run an edit (see :class:`EditIn`); newest-wins per ``session``. Each
  region is moved (``dx``, ``dy``) and may be scaled (``scale``, 0.25 to 4), rotated
  (``angle``, degrees) and mirrored (``flip``: ``none``, ``h``, ``v``) about the centre of its
  mask's bounding box (:class:`RegionIn`).
- ``GET /api/results/{rid}/{k}.png``: frame ``k`` of a result; ``GET
  /api/results/{rid}/record.json``: the edit record (download).
- ``GET /api/stats``: cache and queue counters.
- Full photos (upload any shape, pick a face or a square, results pasted back into the whole
  photo, the reconstruction-error overlay): :mod:`stylemapgan.web.photos`.

No request value is ever used as a file path: images, results and gallery entries are looked up
by id in server-side tables, and results are served from memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.requests import Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps
from pydantic import BaseModel, Field

from stylemapgan.editing.cache import ByteLRU
from stylemapgan.editing.operations import Space
from stylemapgan.editing.record import dumps as dumps_record
from stylemapgan.editing.regions import Region
from stylemapgan.errors import InputError, StyleMapGANError
from stylemapgan.imaging.images import load_rgb
from stylemapgan.web.engine import EditEngine, EditSpec, NotFound
from stylemapgan.web.gallery import Gallery
from stylemapgan.web.imaging import (
    UploadError,
    decode_mask,
    decode_slot,
    display_name,
    square_keep,
    store_upload,
)
from stylemapgan.web.photos import add_photo_routes
from stylemapgan.web.queue import LatestWinsQueue
from stylemapgan.web.settings import MiB, WebSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
IMAGE_ID = r"^[0-9a-f]{32}$"
RESULT_ID = r"^[A-Za-z0-9_-]{16}$"
GALLERY_ID = r"^[0-9a-f]{16}$"
REGION_NAME = r"^[a-z][a-z_]{0,39}$"
THUMB_SIZE = 160

CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'none'")


# --------------------------------------------------------------------------- request bodies
class RegionIn(BaseModel):
    reference: int = Field(ge=0, description="index into `references`")
    mask: str = Field(description="PNG data URL at any size; alpha (or gray) 255 = selected")
    dx: int = Field(0, ge=-8192, le=8192, description="move right by this many image pixels")
    dy: int = Field(0, ge=-8192, le=8192, description="move down by this many image pixels")
    scale: float = Field(1.0, ge=0.25, le=4.0, allow_inf_nan=False,
                         description="scale about the centre of the mask's bounding box")
    angle: float = Field(0.0, ge=-3600.0, le=3600.0, allow_inf_nan=False,
                         description="rotation in degrees, counter-clockwise as seen")
    flip: Literal["none", "h", "v"] = Field("none", description="mirror left-right (h) or "
                                            "upside down (v), before the rotation")

    def region(self, size: int, i: int) -> Region:
        """The library's region (the transform only when there is one, so a plain move is
        exactly the region it always was); a scaled, rotated or mirrored region that lands
        entirely off the image is a one-line error."""
        mask = decode_mask(self.mask, size, f"region {i} mask")
        if self.scale == 1.0 and self.angle % 360.0 == 0.0 and self.flip == "none":
            return Region(mask, dy=self.dy, dx=self.dx, reference=self.reference,
                          data_url=self.mask)
        region = Region(mask, dy=self.dy, dx=self.dx, reference=self.reference,
                        data_url=self.mask, scale=self.scale, angle=self.angle,
                        flip="" if self.flip == "none" else self.flip)
        if not region.is_empty:
            region.check_on_image(size, f"region {i}")
        return region


class EditIn(BaseModel):
    session: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                         description="a random id per browser tab: newest edit wins per session")
    seq: int = Field(ge=0, le=2**53, description="increasing per session")
    original: str = Field(pattern=IMAGE_ID)
    references: list[Annotated[str, Field(pattern=IMAGE_ID)]] = Field(default_factory=list,
                                                                      max_length=64)
    regions: list[RegionIn] = Field(default_factory=list, max_length=64)
    space: Space = "wplus"
    steps: int = Field(1, ge=1, le=1024)


# --------------------------------------------------------------------------- ASGI guard
def _host_port(value: str) -> tuple[str, str | None]:
    """``name[:port]`` (IPv6 in brackets) -> (lowercased name, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else None
    name, sep, port = value.rpartition(":")
    return (name, port) if sep and port.isdigit() else (value, None)


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether a request's ``Host`` (``name[:port]``) is one of ``allowed``; an entry without a
    port allows its name on any port."""
    name, port = _host_port(host)
    for entry in allowed:
        e_name, e_port = _host_port(entry)
        if e_name == name and (e_port is None or e_port == port):
            return True
    return False


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Requests that carry an image file: their body limit is --max-upload-mb (plus framing).
UPLOAD_PATHS = frozenset({"/api/images", "/api/photos"})


class _Guard:
    """Refuses requests for other host names (DNS rebinding) and state-changing requests from
    other sites (cross-site form posts), limits request bodies (by Content-Length and by what
    actually arrives) and adds security and caching headers to every response.

    ``allowed_hosts``: the ``Host`` values served (``name`` or ``name:port``); None serves any
    (an app in a test client). A POST (or PUT, PATCH, DELETE) whose ``Origin`` is not this
    server (scheme, host and port of its ``Host``), or that a browser marks cross-site, is
    refused whatever the hosts."""

    def __init__(self, app: Any, settings: WebSettings,
                 allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.settings = settings
        self.allowed_hosts = None if allowed_hosts is None else tuple(allowed_hosts)

    def _refusal(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed_hosts is not None and not host_allowed(host, self.allowed_hosts):
            return 421, (f"this server does not answer for the host name {host[:100]!r}; open "
                         "it by its own address (stylemapgan serve --allowed-host adds names)")
        if scope.get("method", "GET").upper() not in STATE_CHANGING:
            return None
        origin = headers.get(b"origin")
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        if origin is None:
            if site == "cross-site":
                return 403, "cross-site requests are refused; use the editor's own page"
            return None  # not a browser (curl, scripts): no page of another site made it
        origin_text = origin.decode("latin-1").strip().lower()
        scheme, sep, rest = origin_text.partition("://")
        if not sep or scheme not in ("http", "https") or not host:
            return 403, "requests from other pages are refused; use the editor's own page"
        o_name, o_port = _host_port(rest.rstrip("/"))
        h_name, h_port = _host_port(host)
        default = "443" if scheme == "https" else "80"
        if (o_name, o_port or default) != (h_name, h_port or default):
            return 403, (f"requests from other sites ({origin_text[:100]}) are refused; use the "
                         "editor's own page")
        return None

    def _limit(self, path: str) -> int:
        if path in UPLOAD_PATHS:
            return self.settings.upload_body_bytes
        return self.settings.max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self._limit(path)
        headers = dict(scope.get("headers") or [])
        refused = self._refusal(scope, headers)
        if refused is not None:
            await self._send_json(send, *refused)
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                too_big = True
            if too_big:
                await self._reject(send, limit, path)
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit, path))
            return message

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"no-referrer")]
                if path.startswith("/api/"):
                    extra.append((b"cache-control", b"no-store"))
                else:
                    extra.append((b"content-security-policy", CSP.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, limited_receive, send_with_headers)

    @staticmethod
    async def _reject(send: Any, limit: int, path: str) -> None:
        await _Guard._send_json(send, 413, _too_large(limit, path))

    @staticmethod
    async def _send_json(send: Any, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _too_large(limit: int, path: str) -> str:
    what = "upload" if path in UPLOAD_PATHS else "request"
    return f"{what} is larger than the limit of {limit / MiB:.1f} MiB; use a smaller image"


# --------------------------------------------------------------------------- the app
def create_app(engine: EditEngine, gallery: Gallery | None = None, *,
               allowed_hosts: Iterable[str] | None = None) -> FastAPI:
    """The editor application around ``engine`` (which owns the model and the stores).

    ``allowed_hosts``: the ``Host`` header values it answers (``name`` or ``name:port``; see
    :func:`serve_hosts`); None answers any (tests). Cross-site state-changing requests are
    refused either way."""
    settings = engine.settings
    gallery = gallery if gallery is not None else Gallery(None)
    queue = LatestWinsQueue(max_sessions=settings.max_sessions)
    thumbs: ByteLRU[bytes] = ByteLRU(32 * MiB, len)
    # Uploads and gallery images become the model's square (or a thumbnail): a larger one is
    # reduced while decoded, never held at full size in RGB.
    keep = square_keep(max(engine.size, THUMB_SIZE))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()

    app = FastAPI(title="stylemapgan editor", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.engine = engine
    app.state.queue = queue
    app.state.gallery = gallery
    app.add_middleware(_Guard, settings=settings, allowed_hosts=allowed_hosts)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input, and cannot serialize NaN or Infinity (a 500):
        # keep where and what, never the value.
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "invalid")),
                   "type": str(e.get("type", ""))} for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StyleMapGANError)
    async def _user_error(_: Request, exc: StyleMapGANError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFound) else getattr(exc, "status", 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png")

    # ---------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {**engine.info(), "gallery": len(gallery) if gallery.root is not None else None}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return {**engine.stats(), "queue": queue.stats()}

    # ---------------------------------------------------------------- images
    @app.post("/api/images", status_code=201)
    def upload(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        return store_upload(file, settings, keep, engine.add_image)

    @app.get("/api/images/{iid}.png")
    def image_png(iid: Annotated[str, PathParam(pattern=IMAGE_ID)]) -> Response:
        return png(engine.image(iid).png)

    @app.get("/api/images/{iid}/reconstruction.png")
    def reconstruction_png(iid: Annotated[str, PathParam(pattern=IMAGE_ID)]) -> Response:
        return png(engine.reconstruction_png(iid))

    @app.get("/api/images/{iid}/regions")
    def image_regions(iid: Annotated[str, PathParam(pattern=IMAGE_ID)]) -> dict[str, Any]:
        names = engine.region_names(iid)
        return {"id": iid, "regions": names,
                "masks": {n: f"/api/images/{iid}/regions/{n}.png" for n in names}}

    @app.get("/api/images/{iid}/regions/{name}.png")
    def image_region_png(iid: Annotated[str, PathParam(pattern=IMAGE_ID)],
                         name: Annotated[str, PathParam(pattern=REGION_NAME)]) -> Response:
        return png(engine.region_png(iid, name))

    # ---------------------------------------------------------------- gallery
    def gallery_item(gid: str):
        item = gallery.get(gid)
        if item is None:
            raise NotFound(f"no gallery image with id {gid!r}")
        return item

    @app.get("/api/gallery")
    def gallery_list() -> dict[str, Any]:
        return {"enabled": gallery.root is not None, "truncated": gallery.truncated,
                "items": [{"id": it.id, "name": it.name, "thumb": f"/api/gallery/{it.id}/thumb.png"}
                          for it in gallery.items()]}

    def load_gallery_image(gid: str) -> tuple[str, Image.Image]:
        item = gallery_item(gid)
        try:
            if item.path.stat().st_size > settings.max_upload_bytes:
                raise UploadError(f"gallery image {item.name}: larger than the limit of "
                                  f"{settings.max_upload_bytes:,} bytes", 413)
            return item.name, load_rgb(item.path, max_pixels=settings.max_pixels,
                                       name=f"gallery image {item.name}", keep=keep)
        except UploadError:
            raise
        except InputError as exc:
            raise UploadError(str(exc), 422) from None
        except OSError:
            raise UploadError(f"gallery image {item.name}: cannot be read", 422) from None

    @app.get("/api/gallery/{gid}/thumb.png")
    def gallery_thumb(gid: Annotated[str, PathParam(pattern=GALLERY_ID)]) -> Response:
        data = thumbs.get(gid)
        if data is None:
            with decode_slot():
                _, img = load_gallery_image(gid)
                thumb = ImageOps.fit(img, (THUMB_SIZE, THUMB_SIZE), method=Image.Resampling.LANCZOS)
                del img
            buf = io.BytesIO()
            thumb.save(buf, format="PNG", compress_level=1)
            data = buf.getvalue()
            thumbs.put(gid, data)
        return png(data)

    @app.post("/api/gallery/{gid}", status_code=201)
    def gallery_use(gid: Annotated[str, PathParam(pattern=GALLERY_ID)]) -> dict[str, Any]:
        path = gallery_item(gid).path  # an avatar's part masks give its named regions
        with decode_slot():
            name, img = load_gallery_image(gid)
            stored = engine.add_image(img, display_name(name), "gallery", path=path)
            del img
        return stored.describe()

    # ---------------------------------------------------------------- edits
    @app.post("/api/edit")
    def edit(body: EditIn) -> dict[str, Any]:
        spec = EditSpec(
            original=body.original, references=tuple(body.references),
            regions=tuple(r.region(engine.size, i) for i, r in enumerate(body.regions)),
            space=body.space, steps=body.steps,
        )
        engine.validate(spec)
        for iid in (spec.original, *spec.references):
            engine.image(iid)  # unknown ids: 404 now, not after waiting for a turn
        job = queue.submit(body.session, body.seq, lambda: engine.edit(spec))
        if not job.wait(settings.edit_timeout_s):
            raise HTTPException(503, "the edit did not finish in time; the server is busy")
        if job.status == "superseded":
            return {"status": "superseded", "seq": body.seq, "superseded_by": job.superseded_by,
                    "detail": "a newer edit from this session replaced this one"}
        if job.status == "failed":
            assert job.error is not None
            raise job.error
        res = job.result
        latest = queue.latest(body.session)
        return {"status": "done", "seq": body.seq, "result": res.id, **res.urls(),
                "method": res.method, "newer_pending": latest is not None and latest > body.seq,
                "timing": {"queued_ms": round(job.queued_ms, 1), "compute_ms": round(res.compute_ms, 1)}}

    @app.get("/api/results/{rid}/record.json")
    def result_record(rid: Annotated[str, PathParam(pattern=RESULT_ID)]) -> Response:
        record = engine.result(rid).record
        # Never NaN or Infinity, which are not JSON (an InputError, answered 400, instead).
        return Response(dumps_record(record), media_type="application/json",
                        headers={"content-disposition": 'attachment; filename="stylemapgan-edit.json"'})

    @app.get("/api/results/{rid}/{k}.png")
    def result_frame(rid: Annotated[str, PathParam(pattern=RESULT_ID)],
                     k: Annotated[int, PathParam(ge=0, le=4096)]) -> Response:
        res = engine.result(rid)
        if k >= len(res.frames):
            raise NotFound(f"result {rid} has {len(res.frames)} frame(s); there is no frame {k}")
        return png(res.frames[k])

    add_photo_routes(app, engine)
    return app


def is_face_model(provenance: dict[str, Any]) -> bool:
    """True for models trained on aligned faces (the reference's CelebA-HQ and FFHQ), whose
    photos should be aligned: by the dataset name their provenance records."""
    text = " ".join(str(provenance.get(k, "")) for k in ("train_dataset", "dataset")).lower()
    return any(word in text for word in ("celeba", "ffhq", "face"))


def serve_hosts(host: str, port: int, extra: Iterable[str] = ()) -> list[str]:
    """The ``Host`` values a server bound to ``host``:``port`` answers: the loopback names on
    that port, ``host`` itself unless it is a wildcard (0.0.0.0, ::), and ``extra`` (names or
    ``name:port``, e.g. the machine's name for a ``--host 0.0.0.0`` deployment)."""
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]
    bare = host.strip().strip("[]")
    if bare and bare not in ("0.0.0.0", "::"):
        hosts.append(f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}")
    return hosts + [e.strip() for e in extra if e.strip()]


def create_app_from_file(model_path: str | os.PathLike[str], *, gallery: str | os.PathLike[str] | None = None,
                         device: str = "auto", settings: WebSettings | None = None,
                         fast: bool = False, align: bool | None = None,
                         allowed_hosts: Iterable[str] | None = None) -> FastAPI:
    """Load a model file (and list a gallery folder) and build the app. ``align``: detect and
    align faces in uploaded photos (default: for face models, see :func:`is_face_model`).
    ``allowed_hosts``: see :func:`create_app`."""
    from stylemapgan.files import sha256_file
    from stylemapgan.formats.checkpoint import load_model
    from stylemapgan.nn.runtime import RuntimeOptions
    from stylemapgan.utils import resolve_device

    settings = settings or WebSettings()
    listing = Gallery(gallery, max_items=settings.max_gallery_items)
    dev = resolve_device(device)
    model = load_model(model_path, device=dev)
    engine = EditEngine(model, settings, model_name=Path(model_path).name,
                        model_sha256=sha256_file(model_path),
                        model_path=str(Path(model_path).resolve()),
                        runtime=RuntimeOptions.fastest(dev) if fast else None,
                        align=is_face_model(getattr(model, "provenance", {}) or {})
                        if align is None else align)
    return create_app(engine, listing, allowed_hosts=allowed_hosts)


__all__ = ["EditIn", "RegionIn", "create_app", "create_app_from_file", "host_allowed", "is_face_model",
           "serve_hosts"]
