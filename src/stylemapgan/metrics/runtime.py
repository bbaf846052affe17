"""Runtime family: seconds per image for projection + generation (batch 1, median of repeats),
and :func:`time_calls`, the timing helper the benchmarks share.

Registered as the metric ``runtime`` (:func:`calc_runtime`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from stylemapgan.metrics._batches import check_batch
from stylemapgan.metrics.context import MetricContext
from stylemapgan.metrics.editing import edit_images


def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA)"
    return f"cpu ({torch.get_num_threads()} threads)"


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU or for None."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 0,
               device: torch.device | str | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls, each
    timed until ``device``'s work is done (:func:`sync`; None for work that is not PyTorch's,
    e.g. ONNX Runtime)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def runtime(model: torch.nn.Module, image: torch.Tensor, *, repeats: int = 10, warmup: int = 2,
            device: torch.device | str = "cpu", reference: torch.Tensor | None = None,
            mask: torch.Tensor | None = None, space: str = "wplus") -> dict[str, Any]:
    """Median seconds for one image: projection + generation; with ``reference`` and ``mask``
    also a local edit (two projections, blend, generation)."""
    x = check_batch(image, "runtime")[:1].to(device)
    out: dict[str, Any] = {"device": device_name(device), "repeats": repeats}

    def timed(fn: Callable[[], Any]) -> float:
        return statistics.median(time_calls(fn, repeats=repeats, warmup=warmup, device=device))

    out["seconds"] = timed(lambda: model.generator(model.encoder(x)))
    if reference is not None and mask is not None:
        r = reference[:1].to(device)
        m = mask[:1].to(device)
        out["edit_seconds"] = timed(lambda: edit_images(model, x, r, m, space))
    return out


def calc_runtime(ctx: MetricContext) -> dict[str, Any]:
    """The ``runtime`` metric: on the first evaluation image, or with edit triples on the first
    triple, with its local edit timed too."""
    if ctx.edit_batches is not None:
        first = next(iter(ctx.edit_batches()))
        return runtime(ctx.model, first.src, repeats=ctx.runtime_repeats, device=ctx.device,
                       reference=first.ref, mask=first.mask, space=ctx.edit_space)
    x = next(iter(ctx.images()))
    return runtime(ctx.model, x, repeats=ctx.runtime_repeats, device=ctx.device)
