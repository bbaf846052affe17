"""Ops and layers against naive float64 references."""

import math

import pytest
import torch
import torch.nn.functional as F

from refimpl import upfirdn2d
from stylemapgan.nn.layers import EqualConv2d, StyledConv
from stylemapgan.nn.ops import (
    blur,
    blur_kernel,
    conv_transpose2d_s2,
    memory_format,
    phase_kernels,
    upsample_fir_1x1,
)


def naive_correlate(x, k, pad):
    """Zero-pad then slide ``k`` (already flipped if a convolution is wanted), with loops."""
    n, c, h, w = x.shape
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    kh, kw = k.shape
    out = torch.zeros(n, c, x.shape[2] - kh + 1, x.shape[3] - kw + 1, dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            out += k[a, b] * x[:, :, a: a + out.shape[2], b: b + out.shape[3]]
    return out


def naive_conv(x, w, pad):
    """Cross-correlation of one sample x [C, H, W] with w [O, C, k, k], by kernel taps."""
    c, h, wd = x.shape
    k = w.shape[-1]
    x = F.pad(x, (pad, pad, pad, pad))
    out = torch.zeros(w.shape[0], h + 2 * pad - k + 1, wd + 2 * pad - k + 1, dtype=x.dtype)
    for a in range(k):
        for b in range(k):
            out += torch.einsum("chw,oc->ohw", x[:, a: a + out.shape[1], b: b + out.shape[2]], w[:, :, a, b])
    return out


def naive_conv_transpose_s2(x, w):
    """Stride-2 transposed conv of x [C, H, W] with the stored (O, C, k, k) weight."""
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    out = torch.zeros(o, 2 * h + k - 2, 2 * wd + k - 2, dtype=x.dtype)
    for a in range(k):
        for b in range(k):
            out[:, a: a + 2 * h: 2, b: b + 2 * wd: 2] += torch.einsum("chw,oc->ohw", x, w[:, :, a, b])
    return out


def test_blur_kernel():
    k = blur_kernel(torch.float64)
    assert k.shape == (4, 4)
    assert math.isclose(k.sum().item(), 1.0)
    assert torch.allclose(k[0], torch.tensor([1, 3, 3, 1], dtype=torch.float64) / 64)


@pytest.mark.parametrize("pad", [(1, 1), (2, 2), (2, 1)])
def test_blur_matches_upfirdn2d_and_loops(pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    k = blur_kernel(torch.float64)
    ours = blur(x, k, pad, gain=4.0)
    assert torch.allclose(ours, upfirdn2d(x, k * 4, pad=pad), atol=1e-12)
    assert torch.allclose(ours, naive_correlate(x, torch.flip(k, (0, 1)) * 4, pad), atol=1e-12)


@pytest.mark.parametrize("up, k", [(False, 3), (True, 3), (False, 1)])
@pytest.mark.parametrize("norm", ["layer", "instance"])
def test_styled_conv_equals_naive_per_sample(up, k, norm):
    torch.manual_seed(1)
    layer = StyledConv(5, 4, k, 6, up=up, normalization=norm).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 5, 6, 6, dtype=torch.float64)
    s = torch.randn(3, 6, 6, 6, dtype=torch.float64)
    ours = layer(x, s)
    wscale = 1 / math.sqrt(5 * k * k)
    sscale = 1 / math.sqrt(6 * 9)
    outs = []
    for i in range(3):
        xi = x[i]
        dims = (0, 1, 2) if norm == "layer" else (1, 2)
        mu = xi.mean(dim=dims, keepdim=True)
        var = ((xi - mu) ** 2).mean(dim=dims, keepdim=True)
        xn = (xi - mu) / torch.sqrt(var + 1e-5)
        gamma = naive_conv(s[i], layer.gamma.weight * sscale, 1) + layer.gamma.bias[:, None, None]
        beta = naive_conv(s[i], layer.beta.weight * sscale, 1) + layer.beta.bias[:, None, None]
        h = gamma * xn + beta
        # A per-sample weight, as the reference builds it (here all copies are equal).
        w_i = layer.weight * wscale
        if up:
            y = naive_conv_transpose_s2(h, w_i)
            y = naive_correlate(y[None], blur_kernel(torch.float64) * 4, (1, 1))[0]
        else:
            y = naive_conv(h, w_i, k // 2)
        y = F.leaky_relu(y + layer.bias[:, None, None], 0.2) * math.sqrt(2)
        outs.append(y)
    ref = torch.stack(outs)
    assert ours.shape == ref.shape == (3, 4, 12 if up else 6, 12 if up else 6)
    assert torch.allclose(ours, ref, atol=1e-10, rtol=0)


def test_equal_conv_resampling_shapes_and_values():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    up = EqualConv2d(3, 5, 1, up=True, bias=False, activate=False).double()
    y = up(x)
    assert y.shape == (2, 5, 16, 16)
    ref = torch.stack([naive_correlate(naive_conv_transpose_s2(x[i], up.weight / math.sqrt(3))[None],
                                       blur_kernel(torch.float64) * 4, (2, 2))[0] for i in range(2)])
    assert torch.allclose(y, ref, atol=1e-12)
    down = EqualConv2d(3, 5, 3, down=True).double()
    y = down(x)
    assert y.shape == (2, 5, 4, 4)
    xb = naive_correlate(x, blur_kernel(torch.float64), (2, 2))
    ref = torch.stack([naive_conv(xb[i], down.weight / math.sqrt(27), 0)[:, ::2, ::2] for i in range(2)])
    ref = F.leaky_relu(ref + down.bias[:, None, None], 0.2) * math.sqrt(2)
    assert torch.allclose(y, ref, atol=1e-12)


def test_styled_conv_rejects_mismatched_stylemap():
    layer = StyledConv(4, 4, 3, 2)
    with pytest.raises(ValueError, match="does not match"):
        layer(torch.randn(1, 4, 8, 8), torch.randn(1, 2, 4, 4))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_transpose2d_s2_by_phases_matches_naive(k, channels_last):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    w = torch.randn(4, 3, k, k, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = torch.stack([naive_conv_transpose_s2(x[i], w) for i in range(2)])
    for kernels in (None, phase_kernels(w)):
        out = conv_transpose2d_s2(x, w, kernels)
        assert out.shape == ref.shape == (2, 4, 10 + k - 2, 8 + k - 2)
        assert torch.allclose(out, ref, atol=1e-12, rtol=0)
        assert memory_format(out) == memory_format(x)
    with pytest.raises(ValueError, match="odd kernel size"):
        phase_kernels(torch.randn(4, 3, 1, 1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_fir_1x1_is_zero_insertion_then_blur(channels_last):
    torch.manual_seed(4)
    y = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    zeros = torch.zeros(2, 3, 9, 13, dtype=torch.float64)
    zeros[:, :, ::2, ::2] = y
    ref = naive_correlate(zeros, blur_kernel(torch.float64) * 4, (2, 2))
    out = upsample_fir_1x1(y)
    assert out.shape == ref.shape == (2, 3, 10, 14)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    assert memory_format(out) == memory_format(y)


def test_strided_blur_is_blur_then_subsampling():
    torch.manual_seed(5)
    x = torch.randn(1, 3, 9, 8, dtype=torch.float64)
    k = blur_kernel(torch.float64)
    for pad in [(1, 1), (2, 1)]:
        assert torch.allclose(blur(x, k, pad, stride=2), blur(x, k, pad)[:, :, ::2, ::2], atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_equal_conv_down_and_up_against_naive(k):
    torch.manual_seed(6)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    scale = 1 / math.sqrt(3 * k * k)
    down = EqualConv2d(3, 5, k, down=True).double()
    with torch.no_grad():
        down.bias.normal_()
    xb = naive_correlate(x, blur_kernel(torch.float64), down.blur_pad)
    ref = torch.stack([naive_conv(xb[i], down.weight * scale, 0)[:, ::2, ::2] for i in range(2)])
    ref = F.leaky_relu(ref + down.bias[:, None, None], 0.2) * math.sqrt(2)
    assert torch.allclose(down(x), ref, atol=1e-12)
    up = EqualConv2d(3, 5, k, up=True).double()
    with torch.no_grad():
        up.bias.normal_()
    ref = torch.stack([naive_correlate(naive_conv_transpose_s2(x[i], up.weight * scale)[None],
                                       blur_kernel(torch.float64) * 4, up.blur_pad)[0] for i in range(2)])
    ref = F.leaky_relu(ref + up.bias[:, None, None], 0.2) * math.sqrt(2)
    out = up(x)
    assert out.shape == (2, 5, 16, 16)
    assert torch.allclose(out, ref, atol=1e-12)


def test_phase_convs_and_conv_transpose_agree():
    torch.manual_seed(7)
    layer = StyledConv(3, 4, 3, 2, up=True).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    s = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    phases = layer(x, s)
    layer.phase_convs = False  # what the ONNX exporter sets
    assert torch.allclose(layer(x, s), phases, atol=1e-12)
