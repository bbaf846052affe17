"""What every metric family shares: the image-batch check and the progress tick."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from stylemapgan.errors import InputError

Batches = Iterable[torch.Tensor]
Progress = Callable[[int], Any] | None  # called with the number of images just processed


def tick(progress: Progress, n: int) -> None:
    if progress is not None:
        progress(n)


def check_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{what}: expected image batches [B, 3, H, W], got {shape}")
    return x
