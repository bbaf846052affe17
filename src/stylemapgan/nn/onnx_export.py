"""Export the networks to ONNX and check the files with ONNX Runtime.

Three graphs, each with a dynamic batch axis:

* ``encoder.onnx``: ``images`` [N, 3, R, R] -> ``stylemap`` [N, C, S, S]
* ``generator.onnx``: ``stylemap`` -> ``images`` (resizer + synthesis: the W space)
* ``synthesis.onnx``: ``style_00`` .. ``style_KK`` (the W+ pyramid) -> ``images``

A ``manifest.json`` beside them records the config, the input/output names and shapes, the
verification against PyTorch and the SHA-256 of every file. Requires the ``onnx`` extra
(``onnx``, ``onnxscript``, ``onnxruntime``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stylemapgan.errors import ConfigError, StyleMapGANError
from stylemapgan.files import sha256_file
from stylemapgan.nn.layers import StyledConv, UpsamplingLayer
from stylemapgan.nn.networks import StyleMapGAN

log = logging.getLogger(__name__)

FILES = ("encoder.onnx", "generator.onnx", "synthesis.onnx")
TOLERANCE = 1e-3


class _Synthesis(nn.Module):
    """W+ as separate inputs (ONNX graphs take flat inputs, not lists)."""

    def __init__(self, model: StyleMapGAN) -> None:
        super().__init__()
        self.synthesis = model.generator.synthesis

    def forward(self, *styles: torch.Tensor) -> torch.Tensor:
        return self.synthesis(list(styles))


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx extra ({exc.name} is missing): "
                          'pip install "stylemapgan[onnx]"') from None
    return onnx, onnxruntime


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output: str,
            path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic: tuple = tuple({0: batch} for _ in args)
    if isinstance(module, _Synthesis):  # one *styles argument holding every input
        dynamic = (dynamic,)
    # The exporter prints progress to stdout (library code must not print) and warns that
    # inputs sharing the batch axis share its name, which is what we want. Two more warnings
    # are PyTorch's own and say nothing about this export, so they are filtered: it logs that
    # torchvision's operators (nms, roi_align, ...) are skipped when torchvision is missing
    # (these graphs use none of them), and torch.export copies its tree specs through a
    # deprecated LeafSpec check (a FutureWarning of torch 2.13 about its own code).
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    no_torchvision = _DropMessages("torchvision is not installed")
    registration.addFilter(no_torchvision)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=names,
                              output_names=[output], dynamic_shapes=dynamic,
                              external_data=True, verbose=False, artifacts_dir=str(path.parent))
    finally:
        registration.removeFilter(no_torchvision)


def export_onnx(model: StyleMapGAN, out_dir: str | os.PathLike[str], *, overwrite: bool = False,
                verify_batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Write the three ONNX graphs and a manifest to ``out_dir``; verify each with ONNX Runtime
    (CPU) against PyTorch (float32, CPU) on random inputs. Returns the manifest.

    Raises :class:`StyleMapGANError` when ONNX Runtime disagrees by more than 1e-3.
    """
    onnx, ort = _require_onnx()
    out_dir = Path(out_dir)
    existing = [out_dir / f for f in (*FILES, "manifest.json") if (out_dir / f).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    model = copy.deepcopy(model).to("cpu", torch.float32).eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, StyledConv):
            m.two_pass_norm = True
        if isinstance(m, UpsamplingLayer):
            m.phase_convs = False
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(verify_batch, 3, cfg.size, cfg.size, generator=gen) * 2 - 1
    with torch.no_grad():
        w = model.encoder(images)
        styles = model.generator.pyramid(w)
        expected = {
            "encoder.onnx": w,
            "generator.onnx": model.generator(w),
            "synthesis.onnx": model.generator.synthesize(styles),
        }
    style_names = [f"style_{i:02d}" for i in range(len(styles))]
    graphs = {
        "encoder.onnx": (model.encoder, (images,), ["images"], "stylemap"),
        "generator.onnx": (model.generator, (w,), ["stylemap"], "images"),
        "synthesis.onnx": (_Synthesis(model).eval(), tuple(styles), style_names, "images"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"config": cfg.to_dict(), "opset": None, "graphs": {}, "files": {}}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnx-export-") as tmp:
        tmp_dir = Path(tmp)
        for fname, (module, args, names, output) in graphs.items():
            log.info("exporting %s", fname)
            path = tmp_dir / fname
            _export(module, args, names, output, path)
            onnx.checker.check_model(str(path))
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
            got = torch.from_numpy(session.run(None, feeds)[0])
            diff = (got - expected[fname]).abs().max().item()
            if not diff <= TOLERANCE:
                raise StyleMapGANError(f"{fname}: ONNX Runtime differs from PyTorch by {diff:.3g} "
                                       f"(tolerance {TOLERANCE}); the export is not usable")
            manifest["graphs"][fname] = {
                "inputs": {n: ["N", *a.shape[1:]] for n, a in zip(names, args, strict=True)},
                "output": {output: ["N", *expected[fname].shape[1:]]},
                "max_abs_diff_vs_pytorch": diff,
            }
            manifest["opset"] = onnx.load(str(path), load_external_data=False).opset_import[0].version
        for f in sorted(tmp_dir.iterdir()):
            manifest["files"][f.name] = sha256_file(f)
        (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for f in sorted(tmp_dir.iterdir()):  # same filesystem: each move is atomic
            os.replace(f, out_dir / f.name)
    return manifest


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for one exported graph."""
    _, ort = _require_onnx()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


__all__ = ["FILES", "export_onnx", "onnx_session"]
