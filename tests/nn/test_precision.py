"""One bfloat16 probe (stylemapgan.nn.precision) decides for training and inference alike."""

import pytest
import torch

from stylemapgan.errors import ConfigError
from stylemapgan.nn import precision
from stylemapgan.nn.runtime import RuntimeOptions
from stylemapgan.training import cpu_has_native_bf16, resolve_amp

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_training_and_inference_ask_the_same_probe(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_amp("auto", CPU) == (torch.bfloat16 if native else None)
    assert (RuntimeOptions.fastest(CPU).precision == "bfloat16") == native


def test_the_probe_is_torchs_and_is_reexported_by_training():
    assert cpu_has_native_bf16 is precision.cpu_has_native_bf16
    expected = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert precision.cpu_has_native_bf16() == expected


def test_explicit_choices():
    assert resolve_amp("off", CPU) is None
    assert resolve_amp("bf16", CPU) == torch.bfloat16
    with pytest.raises(ConfigError, match="amp=fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)
