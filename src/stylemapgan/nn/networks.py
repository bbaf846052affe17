"""The three StyleMapGAN networks: Generator (mapping, stylemap resizer, synthesis), Encoder and
Discriminator.

Shapes (N = batch, C = ``stylemap_channels``, S = ``stylemap_size``, R = ``size``):

* ``z``: [N, C] -> ``Generator.mapping`` -> ``w``: [N, C, S, S] (the W space)
* ``w`` -> ``Generator.pyramid`` -> list of ``num_styles`` stylemaps, one per synthesis
  layer at that layer's resolution (the W+ space)
* W+ -> ``Generator.synthesize`` -> image [N, 3, R, R] in about [-1, 1]
* image -> ``Encoder`` -> ``w``
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stylemapgan.config import ModelConfig
from stylemapgan.nn.layers import EqualConv2d, EqualLinear, StyledConv


def _check_image(x: torch.Tensor, size: int, what: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"{what} expects images of shape [N, 3, {size}, {size}], got {tuple(x.shape)}")


def residual_sum(out: torch.Tensor, skip: torch.Tensor, gain: float) -> torch.Tensor:
    """``(out + skip) * gain``, scaling the fresh sum in place (one tensor fewer)."""
    total = out + skip
    return total.mul_(gain) if gain != 1.0 else total


class MappingNetwork(nn.Module):
    """z -> w: pixel norm, then ``mapping_layers`` equalized linear layers with lr_mul; the last
    one widens to C*S*S and is reshaped channel-major into the stylemap."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, s = config.stylemap_channels, config.stylemap_size
        dims = [c] * config.mapping_layers + [c * s * s]
        self.layers = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_mul=config.mapping_lr_mul, activate=True)
            for i in range(config.mapping_layers)
        )
        self.shape = (c, s, s)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.shape[0]:
            raise ValueError(f"mapping expects z of shape [N, {self.shape[0]}], got {tuple(z.shape)}")
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = layer(x)
        return x.reshape(z.shape[0], *self.shape)


class StylemapResizer(nn.Module):
    """w -> W+: a chain of 3x3 convs producing one stylemap per synthesis layer.

    Two convs at the stylemap resolution, then for each doubling an upsampling conv and a conv;
    every conv's output is one entry of the pyramid and feeds the next conv.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        res = config.style_resolutions()
        chans = [config.style_channels(r) for r in res]
        layers = [EqualConv2d(config.stylemap_channels, chans[0], 3)]
        for i in range(1, len(res)):
            layers.append(EqualConv2d(chans[i - 1], chans[i], 3, up=res[i] > res[i - 1]))
        self.layers = nn.ModuleList(layers)
        self.stylemap_shape = config.stylemap_shape

    def forward(self, w: torch.Tensor) -> list[torch.Tensor]:
        if w.ndim != 4 or tuple(w.shape[1:]) != self.stylemap_shape:
            raise ValueError(
                f"expected stylemaps of shape [N, {', '.join(map(str, self.stylemap_shape))}], "
                f"got {tuple(w.shape)}"
            )
        styles = []
        for layer in self.layers:
            w = layer(w)
            styles.append(w)
        return styles


class SynthesisBlock(nn.Module):
    """One doubling: styled upsampling conv, styled conv, and a 1x1 upsampling skip."""

    def __init__(self, in_channels: int, out_channels: int, style_in: int, style_out: int,
                 normalization: str) -> None:
        super().__init__()
        self.conv1 = StyledConv(in_channels, out_channels, 3, style_in, up=True,
                                normalization=normalization)
        self.conv2 = StyledConv(out_channels, out_channels, 3, style_out,
                                normalization=normalization)
        self.skip = EqualConv2d(in_channels, out_channels, 1, up=True, bias=False, activate=False)
        self.residual_gain = 1.0 / math.sqrt(2.0)  # folded away in inference copies

    def forward(self, x: torch.Tensor, style1: torch.Tensor, style2: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x, style1), style2)
        return residual_sum(out, self.skip(x), self.residual_gain)


class SynthesisNetwork(nn.Module):
    """W+ -> image: learned constant, a styled conv, one block per doubling, styled 1x1 to RGB."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        s, norm = config.stylemap_size, config.normalization
        ch, sc = config.channels, config.style_channels
        self.const = nn.Parameter(torch.randn(1, ch(s), s, s))
        self.conv0 = StyledConv(ch(s), ch(s), 3, sc(s), normalization=norm)
        self.blocks = nn.ModuleList()
        for i in range(config.num_doublings):
            r = s * 2**i
            self.blocks.append(SynthesisBlock(ch(r), ch(2 * r), sc(r), sc(2 * r), norm))
        # The reference applies the biased leaky ReLU to the RGB output too; kept for parity.
        self.to_rgb = StyledConv(ch(config.size), 3, 1, sc(config.size), normalization=norm)
        self.num_styles = config.num_styles

    def forward(self, styles: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(styles) != self.num_styles:
            raise ValueError(f"synthesis expects {self.num_styles} stylemaps (W+), got {len(styles)}")
        n = styles[0].shape[0]
        x = self.const.expand(n, -1, -1, -1)
        x = self.conv0(x, styles[0])
        for i, block in enumerate(self.blocks):
            x = block(x, styles[2 * i + 1], styles[2 * i + 2])
        return self.to_rgb(x, styles[-1])


class Generator(nn.Module):
    """Mapping network, stylemap resizer and synthesis network, usable piece by piece.

    ``mean_stylemap`` (a buffer saved with the weights) is the average ``w`` used for
    truncation; it is NaN until :meth:`update_mean_stylemap` fills it.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config)
        self.resizer = StylemapResizer(config)
        self.synthesis = SynthesisNetwork(config)
        self.register_buffer("mean_stylemap", torch.full(config.stylemap_shape, float("nan")))

    # The three stages, exposed for editing.
    def pyramid(self, w: torch.Tensor) -> list[torch.Tensor]:
        """W -> W+ (one stylemap per synthesis layer)."""
        return self.resizer(w)

    def synthesize(self, styles: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """W+ -> image."""
        return self.synthesis(styles)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """W -> image."""
        return self.synthesis(self.resizer(w))

    def sample_z(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        z = torch.randn(n, self.config.stylemap_channels, generator=generator)
        return z.to(device if device is not None else self.mean_stylemap.device)

    @torch.no_grad()
    def update_mean_stylemap(self, num_samples: int = 10_000, seed: int = 0,
                             batch_size: int = 2_000) -> torch.Tensor:
        """Set ``mean_stylemap`` to the mean of ``mapping(z)`` over ``num_samples`` draws of z."""
        gen = torch.Generator().manual_seed(seed)
        total = torch.zeros(self.config.stylemap_shape, dtype=torch.float64,
                            device=self.mean_stylemap.device)
        done = 0
        while done < num_samples:
            n = min(batch_size, num_samples - done)
            total += self.mapping(self.sample_z(n, gen)).double().sum(0)
            done += n
        self.mean_stylemap.copy_(total / num_samples)
        return self.mean_stylemap

    def has_mean_stylemap(self) -> bool:
        return bool(torch.isfinite(self.mean_stylemap).all())

    def truncate(self, w: torch.Tensor, truncation: float) -> torch.Tensor:
        """Pull ``w`` toward the mean stylemap: ``mean + truncation * (w - mean)`` (1: unchanged)."""
        if truncation == 1.0:
            return w
        if not self.has_mean_stylemap():
            raise RuntimeError("the mean stylemap is not set; call update_mean_stylemap() first")
        mean = self.mean_stylemap.to(w.dtype)
        return torch.lerp(mean, w, truncation) if truncation >= 0 else mean + truncation * (w - mean)

    def generate(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z -> image, with optional truncation."""
        return self(self.truncate(self.mapping(z), truncation))


class EncoderBlock(nn.Module):
    """Residual downsampling block of the encoder and discriminator."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, down=True, bias=False, activate=False)
        self.residual_gain = 1.0 / math.sqrt(2.0)  # folded away in inference copies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_sum(self.conv2(self.conv1(x)), self.skip(x), self.residual_gain)


def _trunk(config: ModelConfig, stop: int) -> tuple[EqualConv2d, nn.ModuleList, int]:
    """From-RGB conv and residual blocks from ``config.size`` down to resolution ``stop``."""
    ch = config.channels
    from_rgb = EqualConv2d(3, ch(config.size), 1)
    blocks = nn.ModuleList()
    r = config.size
    while r > stop:
        blocks.append(EncoderBlock(ch(r), ch(r // 2)))
        r //= 2
    return from_rgb, blocks, ch(stop)


class Encoder(nn.Module):
    """Image -> stylemap ``w`` in one forward pass (the discriminator's trunk, no head)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.from_rgb, self.blocks, last = _trunk(config, config.stylemap_size)
        self.out = EqualConv2d(last, config.stylemap_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.config.size, "the encoder")
        x = self.from_rgb(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch standard deviation (group 4)."""

    def __init__(self, config: ModelConfig, stddev_group: int = 4) -> None:
        super().__init__()
        self.config = config
        self.from_rgb, self.blocks, last = _trunk(config, 4)
        self.stddev_group = stddev_group
        c4 = config.channels(4)
        self.final_conv = EqualConv2d(last + 1, c4, 3)
        self.final_linear = EqualLinear(c4 * 16, c4, activate=True)
        self.out = EqualLinear(c4, 1)

    def minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # The reference uses min(N, 4) and fails when it does not divide N; we take the largest
        # group size <= 4 that divides N, which is identical whenever the reference works.
        g = next(g for g in range(min(n, self.stddev_group), 0, -1) if n % g == 0)
        y = x.reshape(g, n // g, c, h, w)
        y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8)  # [N/g, C, H, W]
        y = y.mean(dim=(1, 2, 3)).reshape(n // g, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.config.size, "the discriminator")
        x = self.from_rgb(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_conv(self.minibatch_stddev(x))
        return self.out(self.final_linear(x.flatten(1)))


class StyleMapGAN(nn.Module):
    """What a model file holds: the (EMA) generator and encoder of one configuration."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.encoder = Encoder(config)

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> stylemaps ``w`` (one encoder pass)."""
        return self.encoder(images)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> G(E(images))."""
        return self.generator(self.encoder(images))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
