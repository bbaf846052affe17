"""Small helpers shared by the library and the interfaces: devices, seed lists, the CPU's name,
JSON text that is always valid JSON."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

import torch

from stylemapgan.errors import ConfigError, InputError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are
    checked against what this machine has."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but this PyTorch build sees no CUDA "
                              "device; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("--device mps was requested but MPS is not available")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return dev


def cpu_name() -> str:
    """The CPU's model name (``model name`` in /proc/cpuinfo on Linux, else what ``platform``
    knows), for printing beside timings: machines of one kind can differ by 4x."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def parse_seeds(text: str, limit: int = 100_000) -> list[int]:
    """``"0-7"``, ``"1,5,9"`` or ``"0-3,10"`` -> a list of non-negative seeds, in order."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo, hi = int(lo_s), int(hi_s if sep else lo_s)
        except ValueError:
            raise InputError(f"bad seeds {text!r}: use forms like 0-7, 1,5,9 or 0-3,10") from None
        if hi < lo:
            raise InputError(f"bad seed range {part!r}: the end is before the start")
        if len(seeds) + (hi - lo + 1) > limit:
            raise InputError(f"too many seeds in {text!r} (more than {limit})")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise InputError(f"no seeds in {text!r}")
    if min(seeds) < 0 or max(seeds) >= 2**63:
        raise InputError(f"seeds must be non-negative 63-bit integers, got {text!r}")
    return seeds


def seeded_normal(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """N(0, 1) draws that depend only on ``seed`` (CPU generator), not on batch or device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent() -> None:
    """In a worker process: on Linux, have the kernel SIGKILL this process as soon as the
    process that started it dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), so a command killed
    with ``kill -9`` leaves no workers behind. A no-op elsewhere. (Training's DataLoader
    workers do the same.)"""
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def dump_json(obj: Any, what: str, **kwargs: Any) -> str:
    """``obj`` as indented JSON text ending in a newline, never with NaN or Infinity (which
    are not JSON): a non-finite number raises an :class:`~stylemapgan.errors.InputError`
    naming ``what`` before anything is written."""
    import json

    try:
        return json.dumps(obj, indent=2, allow_nan=False, **kwargs) + "\n"
    except ValueError as exc:
        raise InputError(f"{what}: a value is not finite ({exc}); nothing was written") from None


def finite_or_none(obj: Any, where: str = "", found: list[str] | None = None) -> Any:
    """A copy of a JSON-like ``obj`` with every NaN or infinite float replaced by None; the
    paths of the replaced values are appended to ``found``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if found is not None:
            found.append(where or "value")
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v, f"{where}.{k}" if where else str(k), found)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


class NoProgress:
    """A progress bar that shows nothing: what a library function given ``bar=None`` uses in
    place of a ``tqdm.tqdm``-like factory (the command line passes ``tqdm``)."""

    def __init__(self, iterable: Any = None, *_: Any, **__: Any) -> None:
        self.iterable = iterable

    def __iter__(self) -> Any:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *_: Any, **__: Any) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

