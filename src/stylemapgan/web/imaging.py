"""Untrusted bytes -> images and masks, with every limit checked before decoding.

Nothing here touches the file system: uploads and masks arrive as bytes and results leave as
PNG bytes.
"""

from __future__ import annotations

import contextlib
import io
import threading
import unicodedata
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from stylemapgan.editing import record
from stylemapgan.errors import InputError
from stylemapgan.imaging import images
from stylemapgan.imaging.images import load_rgb, metadata_warnings
from stylemapgan.imaging.masks import mask_from_png

# Formats Pillow may use to decode an upload (MPO: multi-picture JPEG from phone cameras).
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF")
# Masks are reduced to the model size (at most 1024) anyway; records are held to the same.
MAX_MASK_SIDE = record.MAX_MASK_SIDE


class UploadError(InputError):
    """An unusable upload; ``status`` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def display_name(name: str | None, limit: int = 80) -> str:
    """A client-supplied file name made safe to show (never used as a path)."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if len(name) > limit:
        name = name[: limit - 1] + "…"
    return name or "image"


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, read from the bytes alone (no Pillow, so no
    decompression-bomb check can fire first); None when the bytes do not start like a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def square_keep(size: int) -> tuple[int, int]:
    """What an image cut to the model's square needs at most (see
    :func:`stylemapgan.imaging.images.load_rgb`'s ``keep``): a shorter side of twice the
    model's size; larger images are reduced while decoded, then resampled to the model's size
    as before."""
    return (2 * size, 0)


def photo_keep(size: int, photo_side: int) -> tuple[int, int]:
    """What a full photo needs at most: the model's size as its shorter side (a square of its
    whole height) and ``photo_side`` (at least twice the model's size) as its longer side,
    for finding and aligning faces and cutting squares."""
    return (size, max(photo_side, 2 * size))


def decode_image(data: bytes, name: str, *, max_bytes: int, max_pixels: int,
                 keep: tuple[int, int] | None = None) -> Image.Image:
    """Bytes of an uploaded file -> RGB image, or :class:`UploadError` with a fitting status.
    ``keep``: reduce a larger image while decoding it (see
    :func:`stylemapgan.imaging.images.load_rgb`)."""
    if not data:
        raise UploadError(f"{name}: the file is empty", 400)
    if len(data) > max_bytes:
        raise UploadError(f"{name}: the file is larger than the limit of {max_bytes:,} bytes; "
                          "upload a smaller image", 413)
    Image.init()  # register every plugin, so the formats below are all known
    formats = [f for f in IMAGE_FORMATS if f in Image.OPEN]
    try:
        with metadata_warnings(name):
            img = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        raise UploadError(f"{name}: not an image; upload a PNG, JPEG, WebP, BMP, GIF or TIFF file",
                          415) from None
    except Image.DecompressionBombError:
        raise UploadError(f"{name}: far more pixels than the limit of {max_pixels:,} (refused "
                          "as a decompression bomb); resize it first", 413) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UploadError(f"{name}: cannot read the image ({exc})", 422) from None
    w, h = img.size
    if w * h > max_pixels:
        raise UploadError(f"{name}: {w}x{h} pixels is more than the limit of {max_pixels:,}; "
                          "resize it first", 413)
    try:
        return load_rgb(img, max_pixels=max_pixels, name=name, keep=keep)
    except InputError as exc:
        raise UploadError(str(exc), 422) from None


#: zlib level of the PNGs the editor serves (fast: they are made live); records name it.
#: They are made by :func:`stylemapgan.imaging.images.encode_png` at this level.
WEB_PNG_LEVEL = 1


def _check_mask_size(w: int, h: int, what: str) -> None:
    if w > MAX_MASK_SIDE or h > MAX_MASK_SIDE or w < 1 or h < 1:
        raise UploadError(f"{what}: {w}x{h} is not a usable mask size (at most "
                          f"{MAX_MASK_SIDE} pixels a side); send the mask at the image's size", 413)


def decode_mask(data_url: str, size: int, what: str = "mask") -> np.ndarray:
    """A PNG data URL -> float32 [size, size] mask in [0, 1].

    The PNG is checked here (format, side length) before it is decoded; then it is read like
    a mask image file and resampled to the model's square by the one soft resampler of
    :func:`stylemapgan.imaging.masks.mask_from_png` (opacity where the PNG has transparency,
    which is what a canvas paints; else its gray level).
    """
    try:
        raw = images.decode_png_data_url(data_url, what)
    except InputError as exc:
        raise UploadError(str(exc), 400) from None
    # The side lengths come from the PNG header before Pillow sees the bytes: a huge mask is
    # refused for its size (413), not by Pillow's decompression-bomb check as unreadable.
    dims = png_header_size(raw)
    if dims is not None:
        _check_mask_size(*dims, what)
    try:
        img = Image.open(io.BytesIO(raw), formats=("PNG",))
        _check_mask_size(*img.size, what)
        img.load()
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise UploadError(f"{what}: not a readable PNG image", 400) from None
    try:
        return mask_from_png(raw, size, what)
    except InputError as exc:
        raise UploadError(str(exc), 400) from None


#: Uploads decoded (and reduced to what is kept) at once: each costs memory in proportion to
#: its pixels (a 40-megapixel photo, several hundred MB), so concurrent uploads wait here.
DECODE_SLOTS = 2
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)


@contextlib.contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the :data:`DECODE_SLOTS` while decoding an image and reducing it to what is
    kept; afterwards hand freed memory back to the system (glibc keeps it otherwise)."""
    with _decode_slots:
        try:
            yield
        finally:
            _trim_heap()


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def read_upload(file, settings, keep: tuple[int, int] | None = None) -> tuple[str, Image.Image]:
    """A multipart upload (FastAPI ``UploadFile``) -> (safe display name, RGB image), with the
    size and pixel limits of ``settings`` checked before decoding; reduced while decoding to
    what ``keep`` needs."""
    name = display_name(file.filename)
    data = file.file.read(settings.max_upload_bytes + 1)
    return name, decode_image(data, name, max_bytes=settings.max_upload_bytes,
                              max_pixels=settings.max_pixels, keep=keep)


def store_upload(file, settings, keep: tuple[int, int] | None, add) -> dict[str, Any]:
    """Decode an upload inside a decode slot (bounded concurrent decodes: bounded memory), hand
    it to ``add(image, name, "upload")`` (the engine's ``add_image`` or ``add_photo``) and
    return the stored item's ``describe()``; the decoded pixels are freed within the slot."""
    with decode_slot():
        name, img = read_upload(file, settings, keep)
        stored = add(img, name, "upload")
        del img
    return stored.describe()

