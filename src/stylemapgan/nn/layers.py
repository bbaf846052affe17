"""Equalized-learning-rate layers and the spatially modulated convolution.

Weights are stored as N(0, 1) draws (divided by ``lr_mul``) and scaled at run time by
``lr_mul / sqrt(fan_in)``, so Adam sees every layer at the same scale (Karras et al.).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stylemapgan.nn.ops import (
    SQRT2,
    blur,
    blur_kernel,
    conv_transpose2d_s2,
    down_blur_padding,
    leaky_relu_gain_,
    phase_kernels,
    up_blur_padding,
    upsample_fir_1x1,
)


def _scaled(weight: torch.Tensor, scale: float) -> torch.Tensor:
    # Inference copies fold the scale into the weight (runtime.fold_scales): skip the multiply.
    return weight if scale == 1.0 else weight * scale


class UpsamplingLayer(nn.Module):
    """Holds the stride-2 transposed convolution shared by the upsampling layers, and an
    optional cache of its phase kernels for frozen inference copies."""

    weight: nn.Parameter
    scale: float
    up: bool
    phase_cache: tuple[torch.Tensor, ...] | None = None
    # False: one ConvTranspose instead (set by the ONNX exporter: ONNX Runtime runs the
    # transposed convolution faster than four convolutions scattered into alternate pixels).
    phase_convs: bool = True

    def cache_phase_kernels(self) -> None:
        """Precompute the phase kernels from the current weight (inference copies only: the
        cache is not updated if the weight changes later; :meth:`clear_phase_kernels` drops it)."""
        if not self.up or self.weight.shape[-1] < 3:
            return  # only strided transposed convolutions have phases
        with torch.no_grad():
            self.phase_cache = phase_kernels(_scaled(self.weight, self.scale))

    def clear_phase_kernels(self) -> None:
        self.phase_cache = None

    def _conv_up(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        cache = self.phase_cache
        if cache is not None and (cache[0].dtype != x.dtype or cache[0].device != x.device):
            raise RuntimeError("cached phase kernels no longer match the layer's dtype or "
                               "device; call clear_phase_kernels() after moving it")
        if not self.phase_convs:
            return F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        return conv_transpose2d_s2(x, w, cache)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate.

    Parameters
    ----------
    in_features, out_features: sizes of the input and output vectors.
    lr_mul: learning-rate multiplier (0.01 in the mapping network slows it down 100x).
    activate: apply the biased leaky ReLU (the bias then lives inside the activation).
    """

    def __init__(self, in_features: int, out_features: int, *, lr_mul: float = 1.0,
                 activate: bool = False, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.lr_mul = lr_mul
        self.scale = lr_mul / math.sqrt(in_features)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, _scaled(self.weight, self.scale), _scaled(self.bias, self.lr_mul))
        return leaky_relu_gain_(out) if self.activate else out

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, "
                f"activate={self.activate}")


class EqualConv2d(UpsamplingLayer):
    """k x k convolution with equalized learning rate, optionally resampling by 2.

    Parameters
    ----------
    in_channels, out_channels, kernel_size: as in ``nn.Conv2d`` (odd kernel sizes).
    up: stride-2 transposed conv then a [1,3,3,1] blur (gain 4): H -> 2H.
    down: [1,3,3,1] blur then a stride-2 conv: H -> H/2.
    bias: keep a bias (added after the conv, or inside the activation).
    activate: apply the biased leaky ReLU.
    bias_init: initial bias value (1 for the modulation scale ``gamma``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 up: bool = False, down: bool = False, bias: bool = True,
                 activate: bool = True, bias_init: float = 0.0) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a convolution cannot both upsample and downsample")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.full((out_channels,), float(bias_init))) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.kernel_size = kernel_size
        self.up, self.down, self.activate = up, down, activate
        # Gain after the leaky ReLU; inference copies fold it into the weight and bias
        # (runtime.fold_scales), which saves a pass over the output.
        self.act_gain = SQRT2
        if up or down:
            self.register_buffer("blur_kernel", blur_kernel(), persistent=False)
            self.blur_pad = up_blur_padding(kernel_size) if up else down_blur_padding(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _scaled(self.weight, self.scale)
        if self.up:
            if self.kernel_size == 1:
                # A 1x1 transposed conv with stride 2 is a 1x1 conv followed by zero insertion:
                # convolving at the input resolution does a quarter of the work, and oneDNN's
                # regular 1x1 kernels are ~5x faster than its transposed ones. Zero insertion
                # and the blur together are a bilinear upsampling with zero edges.
                x = upsample_fir_1x1(F.conv2d(x, w))
            else:
                x = blur(self._conv_up(x, w), self.blur_kernel, self.blur_pad, gain=4.0)
            # The bias comes after the blur, so it is added separately.
            if self.bias is not None:
                x = x.add_(self.bias.view(1, -1, 1, 1).to(x.dtype))
        elif self.down and self.kernel_size == 1:
            # A stride-2 1x1 conv reads every other blurred pixel only: blur just those
            # (a quarter of the filtering work and memory traffic).
            x = F.conv2d(blur(x, self.blur_kernel, self.blur_pad, stride=2), w, self.bias)
        elif self.down:
            x = F.conv2d(blur(x, self.blur_kernel, self.blur_pad), w, self.bias, stride=2)
        else:
            x = F.conv2d(x, w, self.bias, padding=self.kernel_size // 2)
        return leaky_relu_gain_(x, gain=self.act_gain) if self.activate else x

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, {k}, up={self.up}, down={self.down}, activate={self.activate}"


class StyledConv(UpsamplingLayer):
    """Convolution after spatially variant modulation (Eq. 1 of the paper).

    ``h' = gamma(s) * norm(h) + beta(s)``, where ``s`` is the stylemap at the input's
    resolution and ``gamma``/``beta`` are 3x3 convolutions of it; then a convolution with a
    weight shared by all samples and the biased leaky ReLU. Because the modulation acts on the
    activations, a plain batched convolution is exact (no per-sample weights).

    Parameters
    ----------
    in_channels, out_channels, kernel_size: of the convolution.
    style_channels: channels of the stylemap that modulates this layer.
    up: stride-2 transposed conv + blur (the resolution doubles).
    normalization: "layer" (per sample over C, H, W), "instance" or "batch"; no affine.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 style_channels: int, *, up: bool = False, normalization: str = "layer") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.gamma = EqualConv2d(style_channels, in_channels, 3, activate=False, bias_init=1.0)
        self.beta = EqualConv2d(style_channels, in_channels, 3, activate=False)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.kernel_size = kernel_size
        self.up = up
        self.normalization = normalization
        self.two_pass_norm = False  # see normalize(); set by the ONNX exporter
        self.act_gain = SQRT2  # as in EqualConv2d
        if normalization == "batch":
            self.norm = nn.BatchNorm2d(in_channels, affine=False)
        if up:
            self.register_buffer("blur_kernel", blur_kernel(), persistent=False)
            self.blur_pad = up_blur_padding(kernel_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalization == "layer":
            if self.two_pass_norm:
                # What F.layer_norm computes, spelled out for exporters: ONNX Runtime's fused
                # LayerNorm uses E[x^2] - E[x]^2 and its reductions sum naively over millions
                # of values (1e-3 errors at 256 px). Two passes, each a mean of means over one
                # axis at a time, stay within 1e-5 of float64.
                def mean(t: torch.Tensor) -> torch.Tensor:
                    return t.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)

                centred = x - mean(x)
                return centred * torch.rsqrt(mean(centred.square()) + 1e-5)
            # Layer norm over C, H, W without affine is group norm with one group. PyTorch's
            # layer_norm copies a channels-last input to NCHW first (7-25x slower on the
            # 2-core CPU at 256 px); group norm works on either layout and is as fast or
            # faster on NCHW.
            return F.group_norm(x, 1, eps=1e-5)
        if self.normalization == "instance":
            return F.instance_norm(x, eps=1e-5)
        return self.norm(x)

    def modulate(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if style.shape[-2:] != x.shape[-2:] or style.shape[0] != x.shape[0]:
            raise ValueError(
                f"stylemap of shape {tuple(style.shape)} does not match activations "
                f"{tuple(x.shape)} (batch and spatial size must agree)"
            )
        return torch.addcmul(self.beta(style), self.gamma(style), self.normalize(x))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.modulate(x, style)
        w = _scaled(self.weight, self.scale)
        if self.up:
            x = blur(self._conv_up(x, w), self.blur_kernel, self.blur_pad, gain=4.0)
            x = x.add_(self.bias.view(1, -1, 1, 1).to(x.dtype))
        else:
            x = F.conv2d(x, w, self.bias, padding=self.kernel_size // 2)
        return leaky_relu_gain_(x, gain=self.act_gain)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, {k}, up={self.up}, normalization={self.normalization!r}"
