import pytest
import torch
import torch.nn.functional as F

from stylemapgan.training import losses


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _softplus64(x):
    return torch.log1p(torch.exp(x.double()))


def test_adversarial_losses_match_float64_formulas():
    torch.manual_seed(0)
    real, fake = torch.randn(6, 1) * 3, torch.randn(6, 1) * 3
    assert torch.allclose(losses.generator_adversarial(fake).double(),
                          _softplus64(-fake).mean(), atol=1e-6)
    assert torch.allclose(losses.discriminator_logistic(real, fake).double(),
                          _softplus64(-real).mean() + _softplus64(fake).mean(), atol=1e-6)
    assert torch.allclose(losses.discriminator_fake(fake).double(), _softplus64(fake).mean(),
                          atol=1e-6)
    # Half-precision inputs are evaluated in float32.
    assert losses.generator_adversarial(fake.bfloat16()).dtype == torch.float32


def test_mse():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.allclose(losses.mse(a, b).double(), ((a.double() - b.double()) ** 2).mean())


def test_r1_penalty_value_and_double_backward():
    """D(x) = sum(v * x^2) per sample: dD/dx = 2 v x, penalty = mean_i ||2 v x_i||^2, and
    d penalty / dv = mean_i sum 8 v x_i^2."""
    torch.manual_seed(1)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    v = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    real = x.clone().requires_grad_(True)
    pred = (v * real**2).flatten(1).sum(1, keepdim=True)
    penalty = losses.r1_penalty(pred, real)
    expected = ((2 * v * x) ** 2).flatten(1).sum(1).mean()
    assert torch.allclose(penalty.double(), expected.detach(), rtol=1e-5)
    penalty.backward()
    assert torch.allclose(v.grad, (8 * v * x**2).mean(0).detach(), rtol=1e-5)


def test_r1_penalty_through_a_conv_discriminator_matches_finite_differences():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1).double()

    def d(x):
        return F.leaky_relu(conv(x), 0.2).mean(dim=(1, 2, 3))[:, None]

    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    real = x.clone().requires_grad_(True)
    penalty = losses.r1_penalty(d(real), real)
    # Gradient of sum(D) by central differences.
    eps, grad = 1e-6, torch.zeros_like(x)
    flat = x.flatten()
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        grad.view(-1)[i] = (d((flat + e).view_as(x)).sum() - d((flat - e).view_as(x)).sum()) / (2 * eps)
    expected = grad.square().flatten(1).sum(1).mean()
    assert torch.allclose(penalty.double(), expected, rtol=1e-4)


# --------------------------------------------------------------------------- the phases
def _tiny_stages():
    from stylemapgan.config import PRESETS
    from stylemapgan.nn.networks import Discriminator, Encoder, Generator

    cfg = PRESETS["tiny-32"]
    torch.manual_seed(0)
    return losses.Networks(Generator(cfg), Encoder(cfg), Discriminator(cfg)), cfg


def test_discriminator_phase_is_the_logistic_loss_on_the_stage_outputs():
    stages, cfg = _tiny_stages()
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        g = stages.generator
        fake = g(g.mapping(torch.randn(2, cfg.stylemap_channels)))
        rec = g(stages.encoder(real))
    phase = losses.discriminator_phase(stages, real, fake, rec, lambda_d=0.5, lambda_d_rec=2.0)
    d = stages.discriminator
    with torch.no_grad():
        expected_d = losses.discriminator_logistic(d(real), d(fake))
        expected_rec = losses.discriminator_fake(d(rec))
    assert list(phase.terms) == ["d", "d_rec"]
    assert torch.equal(phase.terms["d"].detach(), expected_d)
    assert torch.equal(phase.terms["d_rec"].detach(), expected_rec)
    assert torch.allclose(phase.loss.detach(), 0.5 * expected_d + 2.0 * expected_rec)
    # Without reconstructions there is no domain-guided term; the loss reaches D.
    phase = losses.discriminator_phase(stages, real, fake, lambda_d=0.5)
    assert list(phase.terms) == ["d"]
    phase.loss.backward()
    assert all(p.grad is not None for p in d.parameters())
    assert all(p.grad is None for p in stages.generator.parameters())


def _fake_stages(calls):
    """Stand-ins for G, E and D: fixed outputs, each call recorded ("mapping", "G", "E", "D")."""
    class G:
        def mapping(self, z):
            calls.append("mapping")
            return torch.zeros(2, 5)

        def __call__(self, w):  # samples from F(z) = 0; reconstructions x / 2 from E(x) = 1
            calls.append("G")
            return torch.ones(2, 3, 4, 4) * (1 - 0.5 * float(w.mean()))

    def encoder(x):
        calls.append("E")
        return torch.ones(2, 5)

    def discriminator(x):
        calls.append("D")
        if x.requires_grad:  # R1 on reals
            return (x * 3).flatten(1).sum(1, keepdim=True)
        return torch.full((2, 1), 2.0 if float(x.mean()) == 1.0 else -1.0)

    return losses.Networks(G(), encoder, discriminator)


def test_phases_weight_their_terms():
    calls = []
    stages = _fake_stages(calls)
    phase, fake, w = losses.generator_phase(stages, torch.zeros(2, 5), lambda_adv=3.0)
    assert torch.equal(phase.terms["adv"], F.softplus(torch.tensor(-2.0)))
    assert torch.equal(phase.loss, phase.terms["adv"] * 3.0) and fake.shape == (2, 3, 4, 4)
    phase = losses.stylemap_phase(stages, fake, w, lambda_w_rec=2.0)
    assert phase.terms["w_rec"] == 1.0 and phase.loss == 2.0
    real = torch.ones(2, 3, 4, 4)
    # R1: ||d sum(3 x) / dx||^2 = 9 per pixel, 48 pixels; weighted gamma / 2 * interval.
    phase = losses.r1_phase(stages, real, gamma=10.0, interval=4)
    assert phase.terms["r1"] == 9.0 * 48 and phase.loss == 10.0 / 2 * 9.0 * 48 * 4
    assert not real.requires_grad  # the caller's tensor is left alone

    def percept(a, b):
        return (a - b).abs().flatten(1).mean(1)

    phase = losses.reconstruction_phase(stages, real, percept, lambda_x_rec=1.0,
                                        lambda_perceptual=10.0, lambda_e_adv=0.1)
    assert list(phase.terms) == ["perceptual", "x_rec", "e_adv"]
    assert phase.terms["x_rec"] == 0.25 and phase.terms["perceptual"] == 0.5
    assert torch.equal(phase.terms["e_adv"], F.softplus(torch.tensor(1.0)))
    expected = 0.25 + phase.terms["e_adv"] * 0.1 + 0.5 * 10.0
    assert torch.allclose(phase.loss, expected)
    assert "perceptual" not in losses.reconstruction_phase(stages, real).terms
    assert calls == ["mapping", "G", "D", "E", "D", *["E", "G", "D"] * 2]
    # The forward pass runs inside the autocast context.
    entered = []

    class Ctx:
        def __enter__(self):
            entered.append(len(calls))

        def __exit__(self, *exc):
            return False

    losses.stylemap_phase(stages, fake, w, autocast=Ctx)
    assert entered == [len(calls) - 1]
