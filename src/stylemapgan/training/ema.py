"""The exponential moving averages of G and E that training keeps (and exports).

* :func:`ema_update` — one EMA step of a module's parameters (buffers are copied).
* :func:`ema_decay_at` — the decay of a step, warmed up over the first images.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_decay_at", "ema_update"]


@torch.no_grad()
def ema_update(ema: nn.Module, src: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * src`` for parameters; buffers are copied."""
    ema_params = [p for _, p in ema.named_parameters()]
    src_params = [p.detach() for _, p in src.named_parameters()]
    torch._foreach_lerp_(ema_params, src_params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), src.buffers(), strict=True):
        b_ema.copy_(b)


def ema_decay_at(step: int, batch_size: int, decay: float, rampup: float) -> float:
    """The EMA decay of training step ``step`` (0-based), warmed up as in StyleGAN2-ADA.

    ``decay`` per step of ``batch_size`` images means a half-life of
    ``batch_size * ln(0.5) / ln(decay)`` images (0.999 at batch 16: 11,085 images, 693 steps).
    With ``rampup > 0`` the half-life is also at most ``rampup`` times the images seen after
    this step, so the EMA starts as a copy of the networks and lags at most that fraction of
    training behind: at batch 16 and rampup 0.05 the decay is 0.87 at step 100, 0.986 at step
    1,000, 0.9972 at step 5,000 and the full 0.999 from step 13,856 on.
    """
    if rampup <= 0 or decay <= 0:
        return decay
    half_life = rampup * (step + 1) * batch_size
    return min(decay, 0.5 ** (batch_size / half_life))
