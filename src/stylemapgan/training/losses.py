"""The loss terms of StyleMapGAN training, as plain functions of network outputs.

Every function returns a scalar tensor (a mean over the batch) and is computed in float32
whatever precision the networks ran in. ``pred`` arguments are discriminator logits [N, 1].

* :func:`generator_adversarial` — non-saturating logistic loss, ``softplus(-D(fake))``; used
  for random samples (G) and, as the domain-guided term, for reconstructions (E and G).
* :func:`discriminator_logistic` — ``softplus(-D(real)) + softplus(D(fake))``.
* :func:`discriminator_fake` — ``softplus(D(fake))`` alone: the domain-guided term that
  treats reconstructions G(E(x)) as fakes.
* :func:`r1_penalty` — squared norm of dD(real)/dreal per sample, averaged (Mescheder et al.).
* :func:`mse` — mean squared error (image reconstruction, stylemap reconstruction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generator_adversarial(fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_pred.float()).mean()


def discriminator_logistic(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_pred.float()).mean() + F.softplus(fake_pred.float()).mean()


def discriminator_fake(fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(fake_pred.float()).mean()


def r1_penalty(real_pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``mean_i ||d sum(D(real)) / d real_i||^2``; ``real`` must require grad. The result keeps
    a graph (create_graph) so it can be minimized w.r.t. the discriminator's weights."""
    (grad,) = torch.autograd.grad(real_pred.float().sum(), real, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a.float(), b.float())


__all__ = [
    "discriminator_fake",
    "discriminator_logistic",
    "generator_adversarial",
    "mse",
    "r1_penalty",
]
