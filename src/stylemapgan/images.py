"""Converting between image files and tensors, and writing result images safely."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .checkpoint import atomic_write
from .errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 64_000_000  # refuse larger images (decompression bombs)


def load_rgb(source: str | os.PathLike[str] | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS,
             background: tuple[int, int, int] = (255, 255, 255), name: str | None = None) -> Image.Image:
    """Open an image of any common format and mode as 8-bit RGB.

    EXIF orientation is applied; transparency (RGBA, LA, P with a transparent color) is
    flattened onto ``background``; grayscale, 16-bit, palette and CMYK images are converted.
    Images with more than ``max_pixels`` pixels are refused before decoding. Raises
    :class:`InputError` naming the file for anything unreadable.
    """
    label = name or (str(source) if not isinstance(source, Image.Image) else "image")
    try:
        img = source if isinstance(source, Image.Image) else Image.open(source)
        w, h = img.size
        if w < 1 or h < 1:
            raise InputError(f"{label}: image has no pixels")
        if w * h > max_pixels:
            raise InputError(f"{label}: {w}x{h} pixels is more than the limit of {max_pixels:,}; "
                             "resize it first")
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
            img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(arr * (255.0 if arr.max(initial=0) <= 1 else 1.0) + 0.5,
                                          0, 255).astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, background)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return img.convert("RGB")
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        raise InputError(f"{label}: refused as a decompression bomb (too many pixels)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{label}: cannot decode the image ({exc}); the file may be truncated "
                         "or corrupt") from None


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] tensor in [-1, 1] -> [N, H, W, 3] uint8 (clamped, rounded)."""
    if images.ndim == 3:
        images = images[None]
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """[H, W, 3] or [N, H, W, 3] uint8 -> [N, 3, H, W] float in [-1, 1]."""
    if array.ndim == 3:
        array = array[None]
    t = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2,
              background: int = 255) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one grid image with ``pad`` pixels between tiles."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, c),
                   background, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = images[i]
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write an [H, W, 3] (or [H, W]) uint8 array as PNG, atomically."""
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def check_writable(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse before any work starts if an output would replace an existing file."""
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}{more} already exist(s); pass --overwrite to replace")
