"""Fast inference paths: precision, memory format, compilation and CUDA graphs behind one object.

``prepare(model, device, RuntimeOptions(...))`` returns a :class:`Runner`, a prepared copy of
the networks whose ``project``, ``pyramid``, ``synthesize``, ``generate_from_w`` and
``reconstruct`` take and return float32 tensors whatever runs inside. Its caller is
:class:`stylemapgan.editing.Editor` (``Editor(model, runtime=...)``, which the web editor's
``serve --fast`` uses) and the benchmarks; editing code never changes when a fast path is
switched on. The float32 path is the reference; every fast path is tested against it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from stylemapgan.errors import ConfigError
from stylemapgan.nn import precision
from stylemapgan.nn.layers import UpsamplingLayer
from stylemapgan.nn.networks import StyleMapGAN

log = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run inference.

    precision: "float32" (reference), "bfloat16" (CPU with AVX512-BF16/AMX, recent GPUs) or
        "float16" (CUDA). Reduced precision runs the networks in that dtype; normalization
        statistics are computed in float32 by PyTorch's kernels.
    channels_last: NHWC memory format (faster convolutions on most CPUs and tensor cores).
    compile: ``torch.compile`` the encoder and synthesis (first call is slow).
    cuda_graphs: capture CUDA graphs for fixed shapes (CUDA only; via torch.compile's
        "reduce-overhead" mode).
    """

    precision: Precision = "float32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.precision not in _DTYPES:
            raise ConfigError(f"precision must be one of {', '.join(_DTYPES)}, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def describe(self) -> str:
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels-last")
        if self.compile:
            parts.append("compiled")
        if self.cuda_graphs:
            parts.append("cuda-graphs")
        return ", ".join(parts)

    @classmethod
    def fastest(cls, device: torch.device) -> RuntimeOptions:
        """A good default for interactive use on ``device`` (never compiles: startup matters)."""
        if device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            return cls(precision="bfloat16" if bf16 else "float16", channels_last=True)
        if device.type == "cpu" and precision.cpu_has_native_bf16():
            return cls(precision="bfloat16", channels_last=True)
        return cls(channels_last=device.type == "cpu")


def fold_scales(module: nn.Module) -> nn.Module:
    """Multiply constant factors into the stored weights (in place), so no forward pass has to
    apply them: the equalized-learning-rate scales, the residual blocks' 1/sqrt(2) (into the
    main branch's activation gain and the linear skip) and the activation gains (leaky ReLU is
    positively homogeneous: ``lrelu(a x + a b) = a lrelu(x + b)`` for a > 0). For inference
    copies only: training needs the split."""
    with torch.no_grad():
        for m in module.modules():
            gain = getattr(m, "residual_gain", None)
            if isinstance(gain, float) and gain != 1.0:
                skip = m.skip
                if skip.bias is not None or skip.activate:
                    raise ValueError("residual folding needs a skip without bias or activation")
                m.conv2.act_gain *= gain
                skip.weight.mul_(gain)
                m.residual_gain = 1.0
        for m in module.modules():
            scale = getattr(m, "scale", None)
            weight = getattr(m, "weight", None)
            if isinstance(scale, float) and isinstance(weight, torch.Tensor) and scale != 1.0:
                weight.mul_(scale)
                m.scale = 1.0
            lr_mul = getattr(m, "lr_mul", None)
            bias = getattr(m, "bias", None)
            if isinstance(lr_mul, float) and isinstance(bias, torch.Tensor) and lr_mul != 1.0:
                bias.mul_(lr_mul)
                m.lr_mul = 1.0
            act_gain = getattr(m, "act_gain", None)
            if isinstance(act_gain, float) and act_gain != 1.0 and getattr(m, "activate", True):
                weight.mul_(act_gain)
                if bias is not None:
                    bias.mul_(act_gain)
                m.act_gain = 1.0
    return module


class Runner:
    """A prepared copy of a model for fast inference (the original is left untouched)."""

    def __init__(self, model: StyleMapGAN, device: torch.device, options: RuntimeOptions) -> None:
        if options.cuda_graphs and device.type != "cuda":
            raise ConfigError("CUDA graphs need a CUDA device")
        if options.precision == "float16" and device.type == "cpu":
            raise ConfigError("float16 is for CUDA; use bfloat16 on the CPU")
        self.device, self.options, self.config = device, options, model.config
        fast = copy.deepcopy(model).to(device).eval().requires_grad_(False)
        fold_scales(fast)
        fast = fast.to(dtype=options.dtype)
        if options.channels_last:
            fast = fast.to(memory_format=torch.channels_last)
        for m in fast.modules():
            if isinstance(m, UpsamplingLayer):
                m.cache_phase_kernels()
        self.model = fast
        self._encoder: Callable = fast.encoder
        self._synthesis: Callable = fast.generator.synthesis
        self._resizer: Callable = fast.generator.resizer
        if options.compile or options.cuda_graphs:
            mode = "reduce-overhead" if options.cuda_graphs else None
            self._encoder = torch.compile(fast.encoder, mode=mode)
            self._synthesis = torch.compile(fast.generator.synthesis, mode=mode)
            self._resizer = torch.compile(fast.generator.resizer, mode=mode)

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=self.options.dtype)
        if self.options.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float().contiguous()
        if self.options.cuda_graphs and y.data_ptr() == x.data_ptr():
            # A CUDA graph's outputs live in its static memory, which the next replay
            # overwrites: a float32 result must be copied out (other dtypes already are).
            y = y.clone()
        return y

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, R, R] in [-1, 1] -> stylemaps w (float32)."""
        return self._out(self._encoder(self._in(images)))

    def pyramid(self, w: torch.Tensor) -> list[torch.Tensor]:
        return [self._out(s) for s in self._resizer(self._in(w))]

    def synthesize(self, styles: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._out(self._synthesis([self._in(s) for s in styles]))

    def generate_from_w(self, w: torch.Tensor) -> torch.Tensor:
        return self._out(self._synthesis(self._resizer(self._in(w))))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self._out(self._synthesis(self._resizer(self._encoder(self._in(images)))))


def prepare(model: StyleMapGAN, device: torch.device | str = "cpu",
            options: RuntimeOptions | None = None) -> Runner:
    return Runner(model, torch.device(device), options or RuntimeOptions())


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` against ``ref`` (images in [-1, 1])."""
    mse = torch.mean((x.double() - ref.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Temporarily use ``n`` CPU threads."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
