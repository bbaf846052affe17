"""``stylemapgan convert``: import a reference (naver-ai/StyleMapGAN) checkpoint."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import add_overwrite, add_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "convert", help="import a reference checkpoint (.pt) into a model file",
        description="""
            Convert a checkpoint published with the original StyleMapGAN implementation into
            a self-describing .safetensors model file (EMA generator and encoder). Runs on the
            CPU; only tensors and the saved training arguments are unpickled. The architecture
            is read from the checkpoint's train_args. The checkpoints come from the reference
            repository's download.sh (github.com/naver-ai/StyleMapGAN: bash download.sh
            download-pretrained-network-256 celeba_hq, Google Drive files); a web page saved
            in place of the file (the "invalid load key, '<'" of the reference) is recognized
            and named.""",
        examples="""
            stylemapgan convert celeba_hq_256_8x8.pt celeba_hq.safetensors
            stylemapgan convert ffhq_1024_16x16.pt ffhq.safetensors --preset official-1024-16x16-light""",
    )
    p.add_argument("reference", help="reference checkpoint written by torch.save (.pt)")
    p.add_argument("out", help="model file to write (.safetensors)")
    p.add_argument("--preset", default=None,
                   help="architecture preset to use instead of the checkpoint's train_args "
                        "(needed when it has none)")
    p.add_argument("--raw", action="store_true",
                   help="use the raw generator/encoder weights instead of their EMA copies")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stylemapgan.config import get_preset
    from stylemapgan.formats.checkpoint import convert_reference_file
    from stylemapgan.imaging.images import check_writable
    from stylemapgan.nn.networks import count_parameters

    check_writable([Path(args.out)], True, inputs=[args.reference])  # the input, not --overwrite
    config = get_preset(args.preset) if args.preset else None
    print(f"reading {args.reference} ...")
    model = convert_reference_file(args.reference, args.out, config=config,
                                   use_ema=not args.raw, overwrite=args.overwrite)
    print(f"wrote {args.out}: {model.config.size}px, {model.config.stylemap_size}x"
          f"{model.config.stylemap_size} stylemap, generator "
          f"{count_parameters(model.generator):,} and encoder "
          f"{count_parameters(model.encoder):,} parameters")
    return 0
