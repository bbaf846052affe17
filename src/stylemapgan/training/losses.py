"""The StyleMapGAN objective: the loss terms and the loss of each training phase, as pure
functions (no optimizer steps, no logging, no state), apart from the loop that minimizes them
(:mod:`stylemapgan.training.loop`), as NVlabs' StyleGAN3 keeps ``loss.py`` apart from its loop.

The terms, plain functions of network outputs. Each returns a scalar tensor (a mean over the
batch) computed in float32 whatever precision the networks ran in; ``pred`` arguments are
discriminator logits [N, 1].

* :func:`generator_adversarial` — non-saturating logistic loss, ``softplus(-D(fake))``; used
  for random samples (G) and, as the domain-guided term, for reconstructions (E and G).
* :func:`discriminator_logistic` — ``softplus(-D(real)) + softplus(D(fake))``.
* :func:`discriminator_fake` — ``softplus(D(fake))`` alone: the domain-guided term that
  treats reconstructions G(E(x)) as fakes.
* :func:`r1_penalty` — squared norm of dD(real)/dreal per sample, averaged (Mescheder et al.).
* :func:`mse` — mean squared error (image reconstruction, stylemap reconstruction).

The networks' forward passes: :class:`TrainingStages` holds G, E and D in one module whose
``forward(stage, *tensors)`` runs one named stage. The loop wraps this one module in
DistributedDataParallel, so each backward follows exactly one DDP forward; it lives here
because its stages are the graphs the phase losses below differentiate.

The phases, in the order of one iteration. Each takes ``stages`` (a :class:`TrainingStages`,
or the DDP module wrapping one), the input tensors and the weights of its terms, and returns
a :class:`PhaseLoss`: the unweighted terms (as reported) and the weighted loss to minimize.
``autocast`` is a zero-argument context manager factory for the forward passes (mixed
precision); the terms are computed outside it, in float32 (the LPIPS network, a forward pass
itself, runs inside it).

1. :func:`generator_phase` — ``adv`` on D(G(F(z))); also returns the sample and its stylemap.
2. :func:`stylemap_phase` — ``w_rec``: MSE(E(G(w)), w) with image and w detached.
3. :func:`discriminator_phase` — ``d`` on reals vs samples, ``d_rec`` on reconstructions.
4. :func:`r1_phase` — ``r1`` on reals, weighted ``gamma / 2 * interval`` (lazy R1), in float32.
5. :func:`reconstruction_phase` — ``x_rec``, ``perceptual`` (LPIPS) and ``e_adv`` on G(E(x)).

Which networks learn from each loss (freezing D for phases 1 and 5, drawing the samples fed to
phase 3 without gradients) and the optimizer steps are the loop's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from stylemapgan.nn.networks import Discriminator, Encoder, Generator

#: A zero-argument factory of the context the forward passes run in (e.g. ``torch.autocast``).
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


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


# --------------------------------------------------------------------------- the stages module
class TrainingStages(nn.Module):
    """G, E and D in one module whose ``forward(stage, ...)`` runs one stage of an iteration,
    so that DistributedDataParallel sees exactly one forward per backward."""

    def __init__(self, generator: Generator, encoder: Encoder, discriminator: Discriminator) -> None:
        super().__init__()
        self.generator, self.encoder, self.discriminator = generator, encoder, discriminator

    def forward(self, stage: str, *args: torch.Tensor):
        g, e, d = self.generator, self.encoder, self.discriminator
        if stage == "sample":  # z -> (image, w, D(image))
            (z,) = args
            w = g.mapping(z)
            fake = g(w)
            return fake, w, d(fake)
        if stage == "encode_sample":  # detached image -> E(image)
            (fake,) = args
            return e(fake)
        if stage == "discriminate":  # reals, samples, reconstructions -> three D logit sets
            real, fake, rec = args
            return d(real), d(fake), (d(rec) if rec is not None else None)
        if stage == "r1":  # reals (requiring grad) -> (penalty, D(real))
            (real,) = args
            pred = d(real)
            return r1_penalty(pred, real), pred
        if stage == "reconstruct":  # reals -> (G(E(x)), D(G(E(x))))
            (real,) = args
            rec = g(e(real))
            return rec, d(rec)
        if stage == "reconstruct_image":  # reals -> G(E(x)) (its D logits come later)
            (real,) = args
            return g(e(real))
        if stage == "judge":  # images -> D(images)
            (images,) = args
            return d(images)
        raise ValueError(f"unknown stage {stage!r}")


# --------------------------------------------------------------------------- the phases
class PhaseLoss(NamedTuple):
    """What a phase computed: its unweighted ``terms`` (name -> scalar, in the order they were
    computed) and ``loss``, the weighted sum to minimize."""

    terms: dict[str, torch.Tensor]
    loss: torch.Tensor


def generator_phase(stages: nn.Module, z: torch.Tensor, *, lambda_adv: float = 1.0,
                    autocast: Autocast = contextlib.nullcontext,
                    ) -> tuple[PhaseLoss, torch.Tensor, torch.Tensor]:
    """Phase 1: samples G(F(z)) and the non-saturating loss on their D logits (term ``adv``).

    Returns the phase loss, the samples and their stylemaps w (still in the graph). The loss
    reaches G only; D must be frozen by the caller.
    """
    with autocast():
        fake, w, pred = stages("sample", z)
    terms = {"adv": generator_adversarial(pred)}
    return PhaseLoss(terms, terms["adv"] * lambda_adv), fake, w


def stylemap_phase(stages: nn.Module, fake: torch.Tensor, w: torch.Tensor, *,
                   lambda_w_rec: float = 1.0,
                   autocast: Autocast = contextlib.nullcontext) -> PhaseLoss:
    """Phase 2: E recovers the stylemaps of samples, MSE(E(fake), w) (term ``w_rec``); both
    inputs are detached, so the loss reaches E only."""
    with autocast():
        w_hat = stages("encode_sample", fake.detach())
    terms = {"w_rec": mse(w_hat, w.detach())}
    return PhaseLoss(terms, terms["w_rec"] * lambda_w_rec)


def discriminator_phase(stages: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                        rec: torch.Tensor | None = None, *, lambda_d: float = 1.0,
                        lambda_d_rec: float = 1.0,
                        autocast: Autocast = contextlib.nullcontext) -> PhaseLoss:
    """Phase 3: D's logistic loss on reals vs samples (term ``d``) and, when reconstructions
    ``rec`` are given, the domain-guided term that treats them as fakes (``d_rec``). ``fake``
    and ``rec`` are drawn without gradients, so the loss reaches D only."""
    with autocast():
        real_pred, fake_pred, rec_pred = stages("discriminate", real, fake, rec)
    terms = {"d": discriminator_logistic(real_pred, fake_pred)}
    loss = terms["d"] * lambda_d
    if rec_pred is not None:
        terms["d_rec"] = discriminator_fake(rec_pred)
        loss = loss + terms["d_rec"] * lambda_d_rec
    return PhaseLoss(terms, loss)


def r1_phase(stages: nn.Module, real: torch.Tensor, *, gamma: float,
             interval: int) -> PhaseLoss:
    """Phase 4, lazy R1: the penalty on reals (term ``r1``), weighted ``gamma / 2 * interval``
    as it runs every ``interval`` iterations. Run in float32 (no autocast): the penalty needs
    the input gradient unscaled. ``0 * sum(D(real))`` is added so that every D parameter is in
    the graph (a zero gradient where the penalty does not depend on it)."""
    real = real.detach().requires_grad_(True)
    penalty, pred = stages("r1", real)
    loss = gamma / 2 * penalty * interval + 0 * pred.float().sum()
    return PhaseLoss({"r1": penalty}, loss)


def reconstruction_phase(stages: nn.Module, real: torch.Tensor,
                         percept: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                         *, lambda_x_rec: float = 1.0, lambda_perceptual: float = 1.0,
                         lambda_e_adv: float = 1.0,
                         autocast: Autocast = contextlib.nullcontext,
                         rec: torch.Tensor | None = None) -> PhaseLoss:
    """Phase 5: E and G reconstruct reals, x -> G(E(x)): pixel MSE (term ``x_rec``), LPIPS
    distance with ``percept`` when given (``perceptual``, run under ``autocast``) and the
    non-saturating loss on D(G(E(x))) (``e_adv``). D must be frozen by the caller.

    ``rec``: G(E(real)) already computed with its graph by the current E and G (the loop
    computes it once for phases 3 and 5, as D's steps in between leave E and G alone); only
    D(rec) is computed then. None computes both here (one forward of ``stages``, as
    DistributedDataParallel needs)."""
    terms: dict[str, torch.Tensor] = {}
    with autocast():
        if rec is None:
            rec, rec_pred = stages("reconstruct", real)
        else:
            rec_pred = stages("judge", rec)
        if percept is not None:
            terms["perceptual"] = percept(real, rec).float().mean()
    terms["x_rec"] = mse(rec, real)
    terms["e_adv"] = generator_adversarial(rec_pred)
    loss = terms["x_rec"] * lambda_x_rec + terms["e_adv"] * lambda_e_adv
    if percept is not None:
        loss = loss + terms["perceptual"] * lambda_perceptual
    return PhaseLoss(terms, loss)


__all__ = [
    "Autocast",
    "PhaseLoss",
    "TrainingStages",
    "discriminator_fake",
    "discriminator_logistic",
    "discriminator_phase",
    "generator_adversarial",
    "generator_phase",
    "mse",
    "r1_penalty",
    "r1_phase",
    "reconstruction_phase",
    "stylemap_phase",
]
