"""An independent, deliberately plain re-implementation of the reference networks, for tests.

It mirrors the reference's module layout (so its ``state_dict`` keys are the reference's keys,
checked against the published key/shape list in ``fixtures/official_state_dict_shapes.json``)
and its arithmetic: a generic zero-insertion/pad/FIR/decimate ``upfirdn2d``, per-sample grouped
convolutions in the modulated layers, the group-conv transposed convolutions of the stylemap
resizer. Nothing here imports the package under test.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    k = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, k, groups=c)
    return x[:, :, ::down, ::down]


def fir(scale=1.0):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[None, :] * k[:, None]
    return k / k.sum() * scale


class PixelNorm(nn.Module):
    def forward(self, x):
        return x / torch.sqrt((x**2).mean(dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        b = self.bias.reshape(1, -1, *([1] * (x.ndim - 2)))
        return F.leaky_relu(x + b, 0.2) * math.sqrt(2)


class Blur(nn.Module):
    def __init__(self, pad, scale=1.0):
        super().__init__()
        self.register_buffer("kernel", fir(scale))
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualLinear(nn.Module):
    def __init__(self, i, o, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(o))
        self.lr_mul, self.scale, self.activation = lr_mul, lr_mul / math.sqrt(i), activation

    def forward(self, x):
        y = x @ (self.weight * self.scale).t()
        b = self.bias * self.lr_mul
        if self.activation:
            return F.leaky_relu(y + b, 0.2) * math.sqrt(2)
        return y + b


class EqualConv2d(nn.Module):
    def __init__(self, i, o, k, padding=0, stride=1, bias=True, bias_init=0.0, transpose=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i, k, k))
        self.bias = nn.Parameter(torch.full((o,), bias_init)) if bias else None
        self.scale = 1 / math.sqrt(i * k * k)
        self.padding, self.stride, self.transpose, self.o, self.k = padding, stride, transpose, o, k

    def forward(self, x):
        if self.transpose:  # per-sample grouped transposed conv, as the reference does
            n, c, h, w = x.shape
            wt = self.weight.unsqueeze(0).repeat(n, 1, 1, 1, 1).transpose(1, 2)
            wt = wt.reshape(n * c, self.o, self.k, self.k)
            y = F.conv_transpose2d(x.reshape(1, n * c, h, w), wt * self.scale, stride=2, groups=n)
            return y.reshape(n, self.o, y.shape[2], y.shape[3])
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride,
                        padding=self.padding)


def conv_layer(i, o, k, upsample=False, downsample=False, activate=True):
    layers = []
    if upsample:
        layers.append(EqualConv2d(i, o, k, bias=False, transpose=True))
        layers.append(Blur((2, 2) if k == 1 else (1, 1), scale=4.0))
    elif downsample:
        layers.append(Blur((1, 1) if k == 1 else (2, 2)))
        layers.append(EqualConv2d(i, o, k, stride=2, bias=False))
    else:
        layers.append(EqualConv2d(i, o, k, padding=k // 2, bias=False))
    if activate:
        layers.append(FusedLeakyReLU(o))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.conv1 = conv_layer(i, i, 3)
        self.conv2 = conv_layer(i, o, 3, downsample=True)
        self.skip = conv_layer(i, o, 1, downsample=True, activate=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class ModulatedConv2d(nn.Module):
    def __init__(self, i, o, k, style_dim, norm, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, o, i, k, k))
        self.gamma = EqualConv2d(style_dim, i, 3, padding=1, bias_init=1.0)
        self.beta = EqualConv2d(style_dim, i, 3, padding=1)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(i, affine=False)
        if upsample:
            self.blur = Blur((1, 1), scale=4.0)
        self.mode, self.upsample, self.i, self.o, self.k = norm, upsample, i, o, k
        self.scale = 1 / math.sqrt(i * k * k)

    def forward(self, x, s):
        n, c, h, w = x.shape
        if self.mode == "layer":
            mu = x.mean(dim=(1, 2, 3), keepdim=True)
            var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
            x = (x - mu) / torch.sqrt(var + 1e-5)
        elif self.mode == "instance":
            mu = x.mean(dim=(2, 3), keepdim=True)
            var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
            x = (x - mu) / torch.sqrt(var + 1e-5)
        else:
            x = self.norm(x)
        x = x * self.gamma(s) + self.beta(s)
        wt = (self.scale * self.weight).repeat(n, 1, 1, 1, 1)  # one weight copy per sample
        if self.upsample:
            wt = wt.transpose(1, 2).reshape(n * c, self.o, self.k, self.k)
            y = F.conv_transpose2d(x.reshape(1, n * c, h, w), wt, stride=2, groups=n)
            return self.blur(y.reshape(n, self.o, y.shape[2], y.shape[3]))
        wt = wt.reshape(n * self.o, c, self.k, self.k)
        y = F.conv2d(x.reshape(1, n * c, h, w), wt, padding=self.k // 2, groups=n)
        return y.reshape(n, self.o, h, w)


class StyledConv(nn.Module):
    def __init__(self, i, o, k, style_dim, norm, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(i, o, k, style_dim, norm, upsample)
        self.activate = FusedLeakyReLU(o)

    def forward(self, x, s):
        return self.activate(self.conv(x, s))


class StyledResBlock(nn.Module):
    def __init__(self, i, o, sd_in, sd_out, norm):
        super().__init__()
        self.conv1 = StyledConv(i, o, 3, sd_in, norm, upsample=True)
        self.conv2 = StyledConv(o, o, 3, sd_out, norm)
        self.skip = conv_layer(i, o, 1, upsample=True, activate=False)

    def forward(self, x, s1, s2):
        return (self.conv2(self.conv1(x, s1), s2) + self.skip(x)) / math.sqrt(2)


def channel_table(cm, cap=None):
    t = {r: 512 for r in (1, 2, 4, 8, 16, 32)}
    t.update({64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm})
    if cap is not None:
        t = {k: min(v, cap) for k, v in t.items()}
    return t


class ConstantInput(nn.Module):
    def __init__(self, c, s):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, c, s, s))


class Decoder(nn.Module):
    def __init__(self, size, style_dim, s, cm, norm, small, cap=None):
        super().__init__()
        ch = channel_table(cm, cap)
        self.input = ConstantInput(ch[s], s)
        sd = (lambda r: style_dim) if small else (lambda r: ch[r])
        self.conv1 = StyledConv(ch[s], ch[s], 3, sd(s), norm)
        self.convs_latent = nn.ModuleList([conv_layer(style_dim, sd(s), 3), conv_layer(sd(s), sd(s), 3)])
        self.convs = nn.ModuleList()
        r = s
        while r < size:
            self.convs_latent.append(conv_layer(sd(r), sd(2 * r), 3, upsample=True))
            self.convs_latent.append(conv_layer(sd(2 * r), sd(2 * r), 3))
            self.convs.append(StyledResBlock(ch[r], ch[2 * r], sd(r), sd(2 * r), norm))
            r *= 2
        self.to_rgb = StyledConv(ch[size], 3, 1, sd(size), norm)

    def forward(self, w):
        codes = []
        for layer in self.convs_latent:
            w = layer(w)
            codes.append(w)
        x = self.input.input.repeat(w.shape[0], 1, 1, 1)
        x = self.conv1(x, codes[0])
        for i, block in enumerate(self.convs):
            x = block(x, codes[2 * i + 1], codes[2 * i + 2])
        return self.to_rgb(x, codes[-1])


class RefGenerator(nn.Module):
    def __init__(self, size, mapping_layer_num, style_dim, s, lr_mul, cm, norm, small, cap=None):
        super().__init__()
        layers = [PixelNorm()]
        for i in range(mapping_layer_num):
            out = style_dim * s * s if i == mapping_layer_num - 1 else style_dim
            layers.append(EqualLinear(style_dim, out, lr_mul=lr_mul, activation=True))
        self.mapping_z = nn.Sequential(*layers)
        self.decoder = Decoder(size, style_dim, s, cm, norm, small, cap)
        self.s = s

    def forward(self, z):
        w = self.mapping_z(z)
        return self.decoder(w.reshape(z.shape[0], -1, self.s, self.s))


class RefEncoder(nn.Module):
    def __init__(self, size, style_dim, s, cm, cap=None):
        super().__init__()
        ch = channel_table(cm, cap)
        self.from_rgb = conv_layer(3, ch[size], 1)
        self.convs = nn.ModuleList()
        r = size
        while r > s:
            self.convs.append(ResBlock(ch[r], ch[r // 2]))
            r //= 2
        self.final_conv = conv_layer(ch[s], style_dim, 3)

    def forward(self, x):
        x = self.from_rgb(x)
        for block in self.convs:
            x = block(x)
        return self.final_conv(x)


class RefDiscriminator(nn.Module):
    def __init__(self, size, cm, cap=None):
        super().__init__()
        ch = channel_table(cm, cap)
        convs = [conv_layer(3, ch[size], 1)]
        r = size
        while r > 4:
            convs.append(ResBlock(ch[r], ch[r // 2]))
            r //= 2
        self.convs = nn.Sequential(*convs)
        self.final_conv = conv_layer(ch[4] + 1, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 16, ch[4], activation=True),
                                          EqualLinear(ch[4], 1))

    def forward(self, x):
        y = self.convs(x)
        n, c, h, w = y.shape
        g = min(n, 4)
        sd = y.reshape(g, -1, 1, c, h, w)
        sd = torch.sqrt(sd.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        y = torch.cat([y, sd.repeat(g, 1, h, w)], 1)
        return self.final_linear(self.final_conv(y).reshape(n, -1))


def build_reference(train_args: dict, cap=None):
    """(generator, encoder, discriminator) of the reference layout for these train_args."""
    a = train_args
    norm = {"LayerNorm": "layer", "InstanceNorm2d": "instance", "BatchNorm2d": "batch"}[a["normalize_mode"]]
    g = RefGenerator(a["size"], a["mapping_layer_num"], a["latent_channel_size"],
                     a["latent_spatial_size"], a["lr_mul"], a["channel_multiplier"], norm,
                     a["small_generator"], cap)
    e = RefEncoder(a["size"], a["latent_channel_size"], a["latent_spatial_size"],
                   a["channel_multiplier"], cap)
    d = RefDiscriminator(a["size"], a["channel_multiplier"], cap)
    return g, e, d
