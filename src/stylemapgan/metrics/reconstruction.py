"""Reconstruction family (the paper's Tables 2 and 3): how close G(E(x)) comes to x.

For each image x, ``MSE = mean over (C, H, W) of (x - G(E(x)))^2`` on values in [-1, 1], and
``LPIPS(x, G(E(x)))``; both averaged over images; and the colour drift of the reconstructions
(:func:`colour_errors`). Registered as the metric ``reconstruction`` (:func:`calc_reconstruction`).
"""

from __future__ import annotations

from typing import Any

import torch

from stylemapgan.errors import InputError
from stylemapgan.metrics._batches import Batches, Progress, check_batch, tick
from stylemapgan.metrics.context import MetricContext


@torch.no_grad()
def colour_errors(real: torch.Tensor, rec: torch.Tensor) -> dict[str, Any]:
    """How far reconstructions ``rec`` are from ``real`` ([N, C, H, W], same range), in float64:
    ``mse`` (mean per-image MSE), ``signed`` (the mean signed error of each channel over all
    images: a colour cast; negative = darker) and ``drift`` (the mean over images and channels
    of the absolute per-image, per-channel mean error: how far each image's colours shift)."""
    if real.shape != rec.shape or real.dim() != 4:
        raise InputError(f"colour_errors: shapes {tuple(real.shape)} and {tuple(rec.shape)} "
                         "must be equal [N, C, H, W]")
    diff = rec.double() - real.double()
    per_image = diff.mean(dim=(2, 3))  # [N, C]
    return {"mse": float(diff.square().mean(dim=(1, 2, 3)).mean()),
            "signed": [float(v) for v in per_image.mean(0)],
            "drift": float(per_image.abs().mean())}


@torch.no_grad()
def reconstruction(model: torch.nn.Module, batches: Batches, lpips: torch.nn.Module | None = None,
                   device: torch.device | str = "cpu", progress: Progress = None) -> dict[str, Any]:
    """Mean per-image MSE (values in [-1, 1]) and LPIPS between x and G(E(x)), and the colour
    drift of the reconstructions (see :func:`colour_errors`: ``drift``, ``signed_rgb``)."""
    mse: list[torch.Tensor] = []
    lp: list[torch.Tensor] = []
    shift: list[torch.Tensor] = []
    for x in batches:
        x = check_batch(x, "reconstruction").to(device)
        y = model.generator(model.encoder(x)).to(x.dtype).clamp(-1, 1)
        mse.append((y - x).square().mean(dim=(1, 2, 3)).double().cpu())
        shift.append((y.double() - x.double()).mean(dim=(2, 3)).cpu())
        if lpips is not None:
            lp.append(lpips(x, y).double().cpu())
        tick(progress, x.shape[0])
    if not mse:
        raise InputError("reconstruction: no images")
    m = torch.cat(mse)
    per_image = torch.cat(shift)
    out: dict[str, Any] = {"mse": float(m.mean()), "mse_std": float(m.std()) if len(m) > 1 else 0.0,
                           "count": len(m), "drift": float(per_image.abs().mean()),
                           "signed_rgb": [float(v) for v in per_image.mean(0)]}
    if lpips is not None:
        l_ = torch.cat(lp)
        out.update(lpips=float(l_.mean()), lpips_std=float(l_.std()) if len(l_) > 1 else 0.0)
    return out




def calc_reconstruction(ctx: MetricContext) -> dict[str, Any]:
    """The ``reconstruction`` metric on the context's images (LPIPS when ``ctx.lpips`` is set)."""
    with ctx.bar(ctx.num_images, "reconstruction") as progress:
        return reconstruction(ctx.model, ctx.images(), ctx.lpips, ctx.device, progress=progress)
