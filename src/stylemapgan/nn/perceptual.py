"""Perceptual feature networks in plain PyTorch: LPIPS (VGG16 / AlexNet) and the FID Inception.

Both take images ``[N, 3, H, W]`` in ``[-1, 1]``, have no trainable parameters by default
(``requires_grad`` off, but inputs get gradients), and move with ``.to(device, dtype)``.
``from_state`` builds a network from a state dict; the real weights come from the cache filled
by ``stylemapgan weights fetch``: :func:`stylemapgan.formats.weights.load_lpips` and
:func:`~stylemapgan.formats.weights.load_inception` (this module reads no files: the networks
layer never imports the file formats). ``random_init`` builds the same architectures with
random weights, and the ``tiny`` variants are small random networks for tests.

LPIPS v0.1 (Zhang et al. 2018): inputs are scaled per channel (``(x - shift) / scale`` with the
ImageNet-derived constants of the reference), run through the backbone; at five ReLU taps the
features are unit-normalized along channels, squared differences are weighted per channel by
the linear heads, averaged over space and summed over taps.

FID Inception: the TF "inception-2015-12-05" graph (the network of the original FID code and
of pytorch-fid), pool3 features (2048-d). Inputs are resized bilinearly (no antialiasing) to
299x299, as pytorch-fid does, and fed in ``[-1, 1]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stylemapgan.errors import InputError, ModelFileError

log = logging.getLogger(__name__)

# The LPIPS input scaling (applied to [-1, 1] images).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


# --------------------------------------------------------------------------- LPIPS
@dataclass(frozen=True)
class Backbone:
    """A ``features`` stack as torchvision builds it, so torchvision state dicts load as is.

    ``layers``: ("conv", in, out, kernel, stride, padding) | ("relu",) | ("maxpool", k, stride).
    ``taps``: indices of the layers whose outputs LPIPS compares.
    ``min_size``: the smallest input side the stack accepts.
    """

    layers: tuple[tuple, ...]
    taps: tuple[int, ...]
    min_size: int

    def channels(self) -> list[int]:
        out, ch = [], 3
        for i, layer in enumerate(self.layers):
            if layer[0] == "conv":
                ch = layer[2]
            if i in self.taps:
                out.append(ch)
        return out


def _vgg16_layers() -> tuple[tuple, ...]:
    layers: list[tuple] = []
    ch = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(("maxpool", 2, 2))
        else:
            layers += [("conv", ch, v, 3, 1, 1), ("relu",)]
            ch = v
    return tuple(layers)


BACKBONES: dict[str, Backbone] = {
    "vgg": Backbone(_vgg16_layers(), taps=(3, 8, 15, 22, 29), min_size=16),
    "alex": Backbone((
        ("conv", 3, 64, 11, 4, 2), ("relu",), ("maxpool", 3, 2),
        ("conv", 64, 192, 5, 1, 2), ("relu",), ("maxpool", 3, 2),
        ("conv", 192, 384, 3, 1, 1), ("relu",),
        ("conv", 384, 256, 3, 1, 1), ("relu",),
        ("conv", 256, 256, 3, 1, 1), ("relu",),
    ), taps=(1, 4, 7, 9, 11), min_size=31),
    # A small random stack for fast tests; not a perceptual metric.
    "tiny": Backbone((
        ("conv", 3, 8, 3, 1, 1), ("relu",), ("maxpool", 2, 2),
        ("conv", 8, 16, 3, 1, 1), ("relu",),
    ), taps=(1, 4), min_size=2),
}


def _build_features(spec: Backbone) -> nn.Sequential:
    mods: list[nn.Module] = []
    for layer in spec.layers[: max(spec.taps) + 1]:
        if layer[0] == "conv":
            _, cin, cout, k, s, p = layer
            mods.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
        elif layer[0] == "relu":
            mods.append(nn.ReLU())
        else:
            mods.append(nn.MaxPool2d(layer[1], stride=layer[2]))
    return nn.Sequential(*mods)


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # vector_norm's backward is defined (zero) where a feature vector is all zero; the
    # sqrt(sum(x^2)) of the reference gives NaN gradients there.
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + eps)


def _assign(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` strictly into a network built on the meta device (tensors assigned)."""
    try:
        model.load_state_dict(dict(state), strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{what} weights do not fit the network: "
                             f"{str(exc).splitlines()[0]}") from None


def _check_images(x: torch.Tensor, y: torch.Tensor, min_size: int, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError(f"{what}: inputs must be tensors")
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"{what}: expected images [N, 3, H, W], got {tuple(x.shape)}")
    if x.shape != y.shape:
        raise InputError(f"{what}: image batches differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if min(x.shape[-2:]) < min_size:
        raise InputError(f"{what}: images of {x.shape[-1]}x{x.shape[-2]} are too small for this "
                         f"network (at least {min_size} px per side)")


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between image batches in ``[-1, 1]``: ``lp(x, y)`` -> ``[N]``.

    Parameters
    ----------
    net: "vgg" (VGG16, the training loss of StyleMapGAN), "alex" (AlexNet, the usual metric) or
        "tiny" (random small network for tests). Weights are uninitialized: use
        :func:`stylemapgan.formats.weights.load_lpips` (the real weights), :meth:`from_state`
        or :meth:`random_init`.
    """

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        if net not in BACKBONES:
            raise InputError(f"unknown LPIPS network {net!r}; use one of {', '.join(BACKBONES)}")
        self.net = net
        self.spec = BACKBONES[net]
        self.features = _build_features(self.spec)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.spec.channels())
        self.weights_sha256: str | None = None
        self.requires_grad_(False).eval()

    @classmethod
    def random_init(cls, net: str = "vgg", seed: int = 0) -> LPIPS:
        """Same architecture with random weights (He-normal convs, small positive heads)."""
        gen = torch.Generator().manual_seed(seed)
        model = cls(net)
        with torch.no_grad():
            for m in model.features:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                    m.bias.copy_(0.01 * torch.randn(m.bias.shape, generator=gen))
            for h in model.heads:
                h.weight.copy_(torch.rand(h.weight.shape, generator=gen) / h.in_channels)
        return model

    @classmethod
    def from_state(cls, net: str, state: Mapping[str, torch.Tensor]) -> LPIPS:
        """The network ``net`` with the weights ``state`` (names and shapes must match exactly;
        otherwise a :class:`~stylemapgan.errors.ModelFileError`)."""
        with torch.device("meta"):  # no time spent on a random init that is overwritten
            model = cls(net)
        _assign(model, state, f"LPIPS-{net}")
        return model.requires_grad_(False).eval()

    def layer_distances(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-tap contributions ``[N]`` (their sum is the LPIPS distance)."""
        _check_images(x, y, self.spec.min_size, f"LPIPS-{self.net}")
        w = self.heads[0].weight
        # The scaling constants are made in the working dtype (exact in float64).
        shift = torch.tensor(LPIPS_SHIFT, dtype=w.dtype, device=w.device).view(1, 3, 1, 1)
        scale = torch.tensor(LPIPS_SCALE, dtype=w.dtype, device=w.device).view(1, 3, 1, 1)
        h = (torch.cat([x, y]).to(w.dtype) - shift) / scale
        n = x.shape[0]
        out = []
        taps = iter(self.heads)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.spec.taps:
                fx, fy = _unit_normalize(h[:n]), _unit_normalize(h[n:])
                out.append(next(taps)((fx - fy) ** 2).mean(dim=(2, 3)).flatten())
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.layer_distances(x, y)).sum(dim=0)

    def extra_repr(self) -> str:
        return f"net={self.net!r}"


# --------------------------------------------------------------------------- FID Inception
class _BatchNorm(nn.Module):
    """Inference batch norm (always running statistics), eps 0.001 as in the TF graph."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


class BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = _BatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(cin, 64, 1)
        self.branch5x5_1 = BasicConv(cin, 48, 1)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1)
        self.branch_pool = BasicConv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(cin, 192, 1)
        self.branch7x7_1 = BasicConv(cin, c7, 1)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv(cin, 192, 1)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = x
        for m in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = m(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """``pool``: "avg" (Mixed_7b, average excluding padding) or "max" (Mixed_7c): the TF graph's
    two last blocks differ in this."""

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv(cin, 320, 1)
        self.branch3x3_1 = BasicConv(cin, 384, 1)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        p = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(p)], 1)


class FIDInception(nn.Module):
    """The FID Inception trunk: ``[N, 3, 299, 299]`` in ``[-1, 1]`` -> pool3 ``[N, 2048]``.
    Layer names follow torchvision / pytorch-fid, so pytorch-fid's weight file loads as is."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


class TinyFeatures(nn.Module):
    """A small random convolutional feature extractor (tests only): ``[N, 3, S, S]`` -> ``[N, dim]``."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv2(F.relu(self.conv1(x)))).mean(dim=(2, 3))


class InceptionFeatures(nn.Module):
    """Images ``[N, 3, H, W]`` in ``[-1, 1]`` -> features ``[N, dim]`` for FID.

    Resizes bilinearly (``align_corners=False``, no antialiasing: pytorch-fid's resize) to
    ``input_size`` unless the images already have that size.
    """

    def __init__(self, net: nn.Module, dim: int, input_size: int, name: str) -> None:
        super().__init__()
        self.net = net
        self.dim = dim
        self.input_size = input_size
        self.name = name
        self.weights_sha256: str | None = None
        self.requires_grad_(False).eval()

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> InceptionFeatures:
        """The FID Inception with the weights ``state`` (of :class:`FIDInception`; names and
        shapes must match exactly, otherwise a :class:`~stylemapgan.errors.ModelFileError`)."""
        with torch.device("meta"):
            net = FIDInception()
        _assign(net, state, "Inception")
        return cls(net, 2048, 299, "inception-2015-12-05")

    @classmethod
    def random_init(cls, variant: str = "tiny", seed: int = 0) -> InceptionFeatures:
        """``tiny``: a 2-layer random network (16-d features at 32x32) for tests;
        ``inception``: the full architecture with random weights."""
        gen = torch.Generator().manual_seed(seed)
        if variant == "tiny":
            net: nn.Module = TinyFeatures()
            dim, size = 16, 32
        elif variant == "inception":
            net, dim, size = FIDInception(), 2048, 299
        else:
            raise InputError(f"unknown feature network {variant!r}; use 'tiny' or 'inception'")
        with torch.no_grad():
            for name, p in net.named_parameters():
                if p.ndim > 1:  # conv weights: variance-preserving
                    p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
                elif not name.endswith("bn.weight"):  # biases
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        return cls(net, dim, size, f"random-{variant}-seed{seed}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"feature network: expected images [N, 3, H, W], got {tuple(x.shape)}")
        dtype = next(self.net.parameters()).dtype
        x = x.to(dtype)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        return self.net(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, input_size={self.input_size}"
