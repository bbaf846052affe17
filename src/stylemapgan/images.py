"""Converting between image files and tensors, and writing result images safely."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_write


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
