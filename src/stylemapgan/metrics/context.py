""":class:`MetricContext`: what a registered metric may use (the model, the images, the feature
networks, the settings) and the work metrics share (dataset statistics, one editing run).

A context is made once per evaluation (``stylemapgan evaluate``) or checkpoint (``train --set
metrics=...``) and passed to :func:`~stylemapgan.metrics.registry.calc_metric` for each metric.
This module imports no PyTorch, so the command line can name the metrics without loading it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from stylemapgan.metrics.editing import EditBatch

#: ``progress(total, description)``: a context manager giving a callable that is called with the
#: number of images just processed (``stylemapgan evaluate`` passes tqdm bars).
ProgressFactory = Callable[[int, str], contextlib.AbstractContextManager[Any]]


@dataclass
class MetricContext:
    """Inputs of the metrics of one run.

    ``model`` has ``.generator`` and ``.encoder`` (a :class:`~stylemapgan.nn.networks.StyleMapGAN`
    or the EMA networks of a training run); ``images()`` yields the evaluation images as
    ``[B, 3, H, W]`` batches in [-1, 1] (the same images on every call), ``num_images`` of them;
    ``fid_images`` / ``num_fid_images`` the FID reference set (default: ``images``).
    ``lpips`` / ``inception`` are the feature networks (None: not loaded); ``edit_batches()``
    yields :class:`~stylemapgan.metrics.editing.EditBatch` triples (``num_edits`` of them).
    ``planned``: every metric this run computes, in order (the editing run collects the features
    detectability needs only when it is planned). ``stats_cache``: the folder of cached dataset
    statistics (None: no cache).
    """

    model: Any
    images: Callable[[], Iterable[torch.Tensor]]
    num_images: int
    device: torch.device | str = "cpu"
    lpips: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    fid_images: Callable[[], Iterable[torch.Tensor]] | None = None
    num_fid_images: int | None = None
    edit_batches: Callable[[], Iterable[EditBatch]] | None = None
    num_edits: int = 0
    planned: tuple[str, ...] = ()
    seed: int = 0
    batch_size: int = 16
    truncation: float = 1.0
    fid_samples: int | None = None
    lerp_samples: int | None = None
    edit_space: str = "wplus"
    mask_mode: str = "area"
    runtime_repeats: int = 10
    stats_cache: Path | None = None
    progress: ProgressFactory | None = None
    #: Results shared between metrics, by key: ``"fid_reference"`` (the reference set's
    #: ``(GaussianStats, {"cache": ...})``, see :func:`stylemapgan.metrics.fid.reference_stats`)
    #: and ``"edit_run"`` (:func:`stylemapgan.metrics.editing.edit_run`).
    shared: dict[str, Any] = field(default_factory=dict)

    def bar(self, total: int, description: str) -> contextlib.AbstractContextManager[Any]:
        """A progress callback for ``total`` images (None without a progress factory)."""
        if self.progress is None:
            return contextlib.nullcontext(None)
        return self.progress(total, description)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for, the same value afterwards."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    def reference_images(self) -> Iterator[torch.Tensor]:
        return iter((self.fid_images or self.images)())
