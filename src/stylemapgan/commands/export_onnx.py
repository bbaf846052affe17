"""``stylemapgan export-onnx``: the encoder and generator as ONNX graphs, verified."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    add_model,
    add_overwrite,
    add_parser,
    resolve_model,
    writes_folder,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "export-onnx", help="export encoder and generator to ONNX (checked with ONNX Runtime)",
        description="""
            Write encoder.onnx (images -> stylemap), generator.onnx (stylemap -> images) and
            synthesis.onnx (W+ pyramid -> images), each with a dynamic batch axis, plus
            manifest.json. Every graph is run with ONNX Runtime on the CPU and compared with
            PyTorch; the export fails if they differ by more than 1e-3.
            Needs the onnx extra: pip install "stylemapgan[onnx]".""",
        examples="""
            stylemapgan export-onnx --model celeba_hq.safetensors --out onnx/
            python benchmarks/onnx_speed.py --onnx-dir onnx/ --model celeba_hq.safetensors""",
    )
    add_model(p)
    p.add_argument("--out", required=True, help="output folder")
    add_overwrite(p)
    p.set_defaults(func=writes_folder(run))


def run(args: argparse.Namespace) -> int:
    args.model = resolve_model(args.model)
    from stylemapgan.formats.checkpoint import load_model
    from stylemapgan.nn.onnx_export import export_onnx

    model = load_model(args.model, device="cpu")
    print(f"exporting {args.model} to {args.out} ...")
    manifest = export_onnx(model, args.out, overwrite=args.overwrite)
    for name, g in manifest["graphs"].items():
        ins = ", ".join(f"{k}{tuple(v)}" for k, v in list(g["inputs"].items())[:2])
        more = f" (+{len(g['inputs']) - 2} more)" if len(g["inputs"]) > 2 else ""
        print(f"  {name:16s} {ins}{more} -> max |ONNX Runtime - PyTorch| = "
              f"{g['max_abs_diff_vs_pytorch']:.2e}")
    print(f"wrote {len(manifest['files'])} files and manifest.json (opset {manifest['opset']})")
    return 0
