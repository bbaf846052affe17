"""``stylemapgan info``: what a model file holds."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import add_parser, dump_json, model_file, resolve_model


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "info", help="show a model file's config, parameter counts and provenance",
        description="Print the configuration, parameter counts and provenance of a model file.",
        examples="""
            stylemapgan info celeba_hq.safetensors
            stylemapgan info celeba_hq.safetensors --json""",
    )
    p.add_argument("model", nargs="?", default=None, type=model_file,
                   help="model file (.safetensors); default: the embedded avatar model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    args.model = resolve_model(args.model)
    from pathlib import Path

    from stylemapgan.files import sha256_file
    from stylemapgan.formats.checkpoint import load_model, read_model_metadata
    from stylemapgan.nn.networks import count_parameters

    meta = read_model_metadata(args.model)
    model = load_model(args.model)
    info = {
        "file": str(args.model),
        "bytes": Path(args.model).stat().st_size,
        "sha256": sha256_file(args.model),
        "format_version": meta["format_version"],
        "config": meta["config"].to_dict(),
        "parameters": {"generator": count_parameters(model.generator),
                       "encoder": count_parameters(model.encoder)},
        "num_styles": meta["config"].num_styles,
        "provenance": meta["provenance"],
    }
    if args.json:
        print(dump_json(info, str(args.model), sort_keys=True), end="")
        return 0
    print(f"{info['file']}  ({info['bytes'] / 2**20:.1f} MiB, sha256 {info['sha256'][:16]}...)")
    print(f"format version {info['format_version']}")
    print("config:")
    for k, v in info["config"].items():
        print(f"  {k:20s} {v}")
    print(f"  {'W+ stylemaps':20s} {info['num_styles']}")
    print("parameters:")
    for k, v in info["parameters"].items():
        print(f"  {k:20s} {v:,}")
    if info["provenance"]:
        print("provenance:")
        for k, v in sorted(info["provenance"].items()):
            print(f"  {k:20s} {v}")
    return 0
