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
