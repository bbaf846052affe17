"""Numeric precision, for training and inference alike: the one bfloat16 probe of this package
and the mixed-precision policy of training.

* :func:`cpu_has_native_bf16` — whether this CPU computes bfloat16 natively. Training's
  ``amp=auto`` (:func:`resolve_amp`) and inference's
  :meth:`~stylemapgan.nn.runtime.RuntimeOptions.fastest` both ask it, so they never disagree.
* :func:`resolve_amp` — the autocast dtype of a ``TrainConfig.amp`` setting on a device.
"""

from __future__ import annotations

import torch

from stylemapgan.errors import ConfigError

__all__ = ["cpu_has_native_bf16", "resolve_amp"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), where bfloat16 runs
    2-3x faster than float32; elsewhere PyTorch emulates it and it is slower.

    The answer is PyTorch's own (``torch.cpu._is_amx_tile_supported`` /
    ``_is_avx512_bf16_supported``), not the flags of ``/proc/cpuinfo``, because it is the one
    that decides which kernels run: PyTorch's cpuinfo library, which oneDNN's dispatch uses too,
    checks the CPUID bits *and* that the operating system enabled the registers (XSAVE state
    for AVX-512 and the AMX tiles), on every operating system. ``/proc/cpuinfo`` exists on Linux
    only and lists what the CPU offers, which can be more than the process may use (AMX needs
    the kernel's permission per process; a CPU cap such as ``ATEN_CPU_CAPABILITY`` or a
    hypervisor may hide the rest), so it can claim bfloat16 speed that PyTorch does not deliver.
    Older PyTorch without these probes: its dispatch level (``"AMX"`` means native bfloat16).
    """
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, name, None)
              for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(fn is None for fn in probes):  # pragma: no cover - PyTorch < 2.2
        return torch.backends.cpu.get_cpu_capability() == "AMX"
    for fn in probes:
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:  # pragma: no cover - defensive
            pass
    return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` (``auto``, ``bf16``, ``fp16`` or ``off``) on ``device``
    (None: full float32).

    ``auto`` picks bfloat16 on CUDA devices that support it, else float16 on CUDA; on the CPU
    bfloat16 when the CPU has native bfloat16 instructions (:func:`cpu_has_native_bf16`), else
    float32. A choice the device cannot run is a :class:`~stylemapgan.errors.ConfigError`.
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            native = device.type == "cpu" and cpu_has_native_bf16()
            return torch.bfloat16 if native else None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=off on the CPU")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bfloat16; use amp=fp16 or amp=off")
    return torch.bfloat16
