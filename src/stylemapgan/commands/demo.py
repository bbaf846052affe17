"""``stylemapgan demo``: StyleMapGAN at work on the packaged avatars, no files needed."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    add_device,
    add_fast,
    add_model,
    add_overwrite,
    add_parser,
    resolve_model,
    writes_folder,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "demo", help="project and edit the packaged avatar gallery; writes result grids",
        description="""
            Run the main StyleMapGAN operations on the eight avatars shipped with the package,
            with the embedded model (or --model, if it is trained on 64 px avatars too):

              reconstruction.png   originals (top) and G(E(x)) reconstructions (bottom)
              local_edit.png       hair transplanted in W+: source, reference, mask, result
              interpolation.png    eight steps from one avatar to another in W (and a .gif)
              style_mix.png        rows A, B and the result: A's shapes with B's colours
                                   and texture (B's last two W+ layers, at full
                                   resolution: edit mix --layers colour)

            Everything runs on the CPU in seconds.""",
        examples="""
            stylemapgan demo --out demo
            stylemapgan demo --out demo --overwrite --device cpu
            stylemapgan demo --out demo_fast --fast""",
    )
    add_model(p)
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    add_device(p)
    add_fast(p)
    add_overwrite(p)
    p.set_defaults(func=writes_folder(run))


def run(args: argparse.Namespace) -> int:
    """Parse into a :class:`~stylemapgan.editing.demo.DemoRequest`, run the demo, print."""
    from stylemapgan.editing.demo import DemoRequest, run_demo

    report = run_demo(DemoRequest(model=resolve_model(args.model), out=args.out,
                                  device=args.device, fast=args.fast, overwrite=args.overwrite))
    print(f"reconstruction MSE on the {report.count} gallery avatars: {report.mse:.4f} "
          "(images in [-1, 1])" + (f"; fast path: {report.runtime}" if args.fast else ""))
    for path in report.written:
        print(f"wrote {path}")
    return 0
