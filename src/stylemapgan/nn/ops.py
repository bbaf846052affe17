"""Pure-PyTorch primitives shared by the networks: the FIR blur (also strided), the stride-2
transposed convolution as four phase convolutions, the 1x1 upsampling tail as a zero-edged
bilinear upsampling, and the biased leaky ReLU.

Every op runs on any device and dtype PyTorch supports; nothing is compiled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def blur_kernel(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The normalized 2-D FIR kernel: outer product of [1, 3, 3, 1], summing to 1 (shape 4x4)."""
    k = torch.tensor(BLUR_TAPS, dtype=torch.float64)
    k = torch.outer(k, k)
    return (k / k.sum()).to(dtype=dtype, device=device)


def up_blur_padding(kernel_size: int) -> tuple[int, int]:
    """Padding of the blur that follows a stride-2 transposed conv with this kernel size.

    The transposed conv turns H into 2H + k - 2; padding the 4-tap blur by these amounts
    brings the result back to exactly 2H.
    """
    p = (len(BLUR_TAPS) - 2) - (kernel_size - 1)
    return ((p + 1) // 2 + 1, p // 2 + 1)


def down_blur_padding(kernel_size: int) -> tuple[int, int]:
    """Padding of the blur that precedes a stride-2 conv with this kernel size (H -> H/2)."""
    p = (len(BLUR_TAPS) - 2) + (kernel_size - 1)
    return ((p + 1) // 2, p // 2)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is laid out in (channels-last or the default)."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], gain: float = 1.0,
         stride: int = 1) -> torch.Tensor:
    """Depthwise FIR filter of ``x`` [N, C, H, W] with a 2-D ``kernel``, zero padding ``pad``
    (before, after) on both spatial axes. A true convolution (the kernel is flipped).
    ``stride`` keeps every stride-th output only (and computes only those)."""
    c = x.shape[1]
    k = torch.flip(kernel, (0, 1)).to(dtype=x.dtype)
    if gain != 1.0:
        k = k * gain
    # A depthwise (grouped) convolution: on CPU it is ~10x faster than folding channels into
    # the batch and filtering with one single-channel kernel. Symmetric padding goes to the
    # convolution itself, which saves a padded copy of x (2-3x faster on CPU).
    # A real (not expanded) weight in x's memory format: oneDNN otherwise falls back to
    # reordering x (3-4x slower for channels-last inputs).
    k = k[None, None].expand(c, 1, *k.shape).contiguous(memory_format=memory_format(x))
    if pad[0] == pad[1]:
        return F.conv2d(x, k, stride=stride, padding=pad[0], groups=c)
    return F.conv2d(F.pad(x, (pad[0], pad[1], pad[0], pad[1])), k, stride=stride, groups=c)


def phase_kernels(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four regular-convolution kernels whose outputs, interleaved, make a stride-2
    transposed convolution with ``weight`` (stored [out, in, k, k], k odd): output row 2m uses
    the even taps, row 2m + 1 the odd ones, each reversed because conv2d correlates. Order:
    (even, even), (even, odd), (odd, even), (odd, odd) in (row, column)."""
    if weight.shape[-1] % 2 == 0 or weight.shape[-1] < 3:
        raise ValueError(f"phase kernels need an odd kernel size >= 3, got {weight.shape[-1]}")
    w = torch.flip(weight, (2, 3))
    fmt = memory_format(weight)
    return tuple(w[:, :, r::2, c::2].contiguous(memory_format=fmt) for r in (0, 1) for c in (0, 1))


def conv_transpose2d_s2(x: torch.Tensor, weight: torch.Tensor,
                        kernels: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)`` for a stored [out, in, k, k]
    weight (k odd >= 3): [N, in, H, W] -> [N, out, 2H + k - 2, 2W + k - 2].

    Computed as four regular convolutions of ``x`` (one per output phase, see
    :func:`phase_kernels`, which ``kernels`` may hold precomputed) written into alternate rows
    and columns: the same multiply-adds as the transposed convolution, but oneDNN runs regular
    convolutions 1.06-1.6x faster on CPU and no transposed weight copy is made per call."""
    k = weight.shape[-1]
    kernels = kernels if kernels is not None else phase_kernels(weight)
    n, _, h, w = x.shape
    out = torch.empty((n, weight.shape[0], 2 * h + k - 2, 2 * w + k - 2), dtype=x.dtype,
                      device=x.device, memory_format=memory_format(x))
    pads = ((k + 1) // 2 - 1, k // 2 - 1)  # even phase, odd phase
    for i, kernel in enumerate(kernels):
        r, c = divmod(i, 2)
        out[:, :, r::2, c::2] = F.conv2d(x, kernel, padding=(pads[r], pads[c]))
    return out


def upsample_fir_1x1(y: torch.Tensor) -> torch.Tensor:
    """The tail of a stride-2 1x1 transposed convolution: zero insertion (H -> 2H - 1), then the
    gain-4 [1, 3, 3, 1] blur padded (2, 2), [N, C, H, W] -> [N, C, 2H, 2W].

    Per axis that is ``out[2i] = y[i-1]/4 + 3 y[i]/4`` and ``out[2i+1] = 3 y[i]/4 + y[i+1]/4``
    with zeros beyond the edges: bilinear 2x upsampling with half-pixel centres, except that
    bilinear repeats the edge where the FIR sees zeros, so the outermost rows and columns are
    weighed by 3/4. One interpolation pass instead of a zero-filled 4x larger tensor and a
    16-tap filter."""
    up = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
    for dim in (2, 3):
        up.narrow(dim, 0, 1).mul_(0.75)
        up.narrow(dim, up.shape[dim] - 1, 1).mul_(0.75)
    return up


def leaky_relu_gain_(x: torch.Tensor, negative_slope: float = 0.2, gain: float = SQRT2) -> torch.Tensor:
    """In-place ``leaky_relu(x) * gain`` for freshly computed tensors.

    Scaling first is the same function (leaky ReLU is positively homogeneous) and keeps
    autograd happy: the in-place leaky ReLU's backward reads its output, so nothing may
    modify that output afterwards.
    """
    return F.leaky_relu_(x.mul_(gain) if gain != 1.0 else x, negative_slope)


def bias_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2,
                    gain: float = SQRT2) -> torch.Tensor:
    """``leaky_relu(x + bias) * gain``, the reference's "fused leaky ReLU"; bias on dim 1."""
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.to(dtype=x.dtype).view(shape)
    return F.leaky_relu(x, negative_slope) * gain
