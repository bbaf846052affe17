"""Pure-PyTorch primitives shared by the networks: the FIR blur and the biased leaky ReLU.

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


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """Depthwise FIR filter of ``x`` [N, C, H, W] with a 2-D ``kernel``, zero padding ``pad``
    (before, after) on both spatial axes. A true convolution (the kernel is flipped)."""
    c = x.shape[1]
    k = torch.flip(kernel, (0, 1)).to(dtype=x.dtype)
    if gain != 1.0:
        k = k * gain
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    # A depthwise (grouped) convolution: on CPU it is ~10x faster than folding channels into
    # the batch and filtering with one single-channel kernel.
    return F.conv2d(x, k[None, None].expand(c, 1, *k.shape), groups=c)


def leaky_relu_gain_(x: torch.Tensor, negative_slope: float = 0.2, gain: float = SQRT2) -> torch.Tensor:
    """In-place ``leaky_relu(x) * gain`` for freshly computed tensors.

    Scaling first is the same function (leaky ReLU is positively homogeneous) and keeps
    autograd happy: the in-place leaky ReLU's backward reads its output, so nothing may
    modify that output afterwards.
    """
    return F.leaky_relu_(x.mul_(gain), negative_slope)


def bias_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2,
                    gain: float = SQRT2) -> torch.Tensor:
    """``leaky_relu(x + bias) * gain``, the reference's "fused leaky ReLU"; bias on dim 1."""
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.to(dtype=x.dtype).view(shape)
    return F.leaky_relu(x, negative_slope) * gain
