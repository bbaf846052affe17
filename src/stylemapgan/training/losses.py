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

The phases, in the order of one iteration. Each takes ``nets`` (:class:`Networks`: G, E and D,
called directly), the input tensors and the weights of its terms, and returns a
:class:`PhaseLoss`: the unweighted terms (as reported) and the weighted loss to minimize.
``autocast`` is a zero-argument context manager factory for the forward passes (mixed
precision); the terms are computed outside it, in float32 (the LPIPS network, a forward pass
itself, runs inside it).

1. :func:`generator_phase` — ``adv`` on D(G(F(z))); also returns the sample and its stylemap.
2. :func:`stylemap_phase` — ``w_rec``: MSE(E(G(w)), w) with image and w detached.
3. :func:`discriminator_phase` — ``d`` on reals vs samples, ``d_rec`` on reconstructions.
4. :func:`r1_phase` — ``r1`` on reals, weighted ``gamma / 2 * interval`` (lazy R1), in float32.
5. :func:`reconstruction_phase` — ``x_rec``, ``perceptual`` (LPIPS) and ``e_adv`` on G(E(x)).

Which networks learn from each loss (freezing D for phases 1 and 5, drawing the samples fed to
phase 3 without gradients), the optimizer steps and, under torchrun, averaging the gradients
over the processes are the loop's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F

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


# --------------------------------------------------------------------------- the networks
class Networks(NamedTuple):
    """The three trained networks the phases call (the loop's own modules, not wrappers)."""

    generator: Generator
    encoder: Encoder
    discriminator: Discriminator


# --------------------------------------------------------------------------- the phases
class PhaseLoss(NamedTuple):
    """What a phase computed: its unweighted ``terms`` (name -> scalar, in the order they were
    computed) and ``loss``, the weighted sum to minimize."""

    terms: dict[str, torch.Tensor]
    loss: torch.Tensor


def generator_phase(nets: Networks, z: torch.Tensor, *, lambda_adv: float = 1.0,
                    autocast: Autocast = contextlib.nullcontext,
                    ) -> tuple[PhaseLoss, torch.Tensor, torch.Tensor]:
    """Phase 1: samples G(F(z)) and the non-saturating loss on their D logits (term ``adv``).

    Returns the phase loss, the samples and their stylemaps w (still in the graph). The loss
    reaches G only; D must be frozen by the caller.
    """
    g = nets.generator
    with autocast():
        w = g.mapping(z)
        fake = g(w)
        pred = nets.discriminator(fake)
    terms = {"adv": generator_adversarial(pred)}
    return PhaseLoss(terms, terms["adv"] * lambda_adv), fake, w


def stylemap_phase(nets: Networks, fake: torch.Tensor, w: torch.Tensor, *,
                   lambda_w_rec: float = 1.0,
                   autocast: Autocast = contextlib.nullcontext) -> PhaseLoss:
    """Phase 2: E recovers the stylemaps of samples, MSE(E(fake), w) (term ``w_rec``); both
    inputs are detached, so the loss reaches E only."""
    with autocast():
        w_hat = nets.encoder(fake.detach())
    terms = {"w_rec": mse(w_hat, w.detach())}
    return PhaseLoss(terms, terms["w_rec"] * lambda_w_rec)


def discriminator_phase(nets: Networks, real: torch.Tensor, fake: torch.Tensor,
                        rec: torch.Tensor | None = None, *, lambda_d: float = 1.0,
                        lambda_d_rec: float = 1.0,
                        autocast: Autocast = contextlib.nullcontext) -> PhaseLoss:
    """Phase 3: D's logistic loss on reals vs samples (term ``d``) and, when reconstructions
    ``rec`` are given, the domain-guided term that treats them as fakes (``d_rec``). ``fake``
    and ``rec`` are drawn without gradients, so the loss reaches D only."""
    d = nets.discriminator
    with autocast():
        real_pred, fake_pred = d(real), d(fake)
        rec_pred = d(rec) if rec is not None else None
    terms = {"d": discriminator_logistic(real_pred, fake_pred)}
    loss = terms["d"] * lambda_d
    if rec_pred is not None:
        terms["d_rec"] = discriminator_fake(rec_pred)
        loss = loss + terms["d_rec"] * lambda_d_rec
    return PhaseLoss(terms, loss)


def r1_phase(nets: Networks, real: torch.Tensor, *, gamma: float,
             interval: int) -> PhaseLoss:
    """Phase 4, lazy R1: the penalty on reals (term ``r1``), weighted ``gamma / 2 * interval``
    as it runs every ``interval`` iterations. Run in float32 (no autocast): the penalty needs
    the input gradient unscaled. ``0 * sum(D(real))`` is added so that every D parameter is in
    the graph (a zero gradient where the penalty does not depend on it), so every process
    averages the same gradients."""
    real = real.detach().requires_grad_(True)
    pred = nets.discriminator(real)
    penalty = r1_penalty(pred, real)
    loss = gamma / 2 * penalty * interval + 0 * pred.float().sum()
    return PhaseLoss({"r1": penalty}, loss)


def reconstruction_phase(nets: Networks, real: torch.Tensor,
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
    D(rec) is computed then. None computes both here."""
    terms: dict[str, torch.Tensor] = {}
    with autocast():
        if rec is None:
            rec = nets.generator(nets.encoder(real))
        rec_pred = nets.discriminator(rec)
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
    "Networks",
    "PhaseLoss",
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
