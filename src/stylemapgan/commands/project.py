"""``stylemapgan project``: photos -> saved stylemaps and reconstructions, batched over folders."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    abspath,
    add_device,
    add_fast,
    add_model,
    add_overwrite,
    add_parser,
    int_in,
    nonneg_float,
    positive_float,
    resolve_model,
    writes_folder,
)
from stylemapgan.commands._editio import add_fit, align_choice


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "project", help="project photos into stylemaps (+ reconstructions)",
        description="""
            Project photos (files or folders; any size, format and mode) into stylemaps with
            the encoder, in batches. For each image NAME it writes NAME.stylemap.safetensors
            (the stylemap w plus the model and source checksums and where the square was cut
            from the photo) and NAME.png (the reconstruction G(w)), and project.json with the
            settings and per-image errors. Edit commands accept the .stylemap.safetensors files
            in place of images and skip the encoder for them.

            --refine N optimizes each stylemap for N steps from the encoder's output (MSE +
            LPIPS, the optimization-based projection of the paper's Table 3): slower, closer
            reconstructions. --lpips-weight 0 uses MSE alone and needs no extra weights; LPIPS
            needs `stylemapgan weights fetch` once.""",
        examples="""
            stylemapgan project photos/ --model celeba_hq.safetensors --out projected
            stylemapgan project a.jpg b.png --model m.safetensors --out proj --fit pad --save-input
            stylemapgan project photos/ --model m.safetensors --out refined --refine 200 --lpips-weight 1
            stylemapgan project photos/ --model m.safetensors --out refined --refine 100 --lpips-weight 0
            stylemapgan project photos/ --model m.safetensors --out fast --fast""",
    )
    p.add_argument("images", nargs="+", type=abspath, metavar="IMAGE_OR_FOLDER",
                   help="image files and/or folders of images")
    add_model(p)
    p.add_argument("--out", required=True, help="output folder")
    add_fit(p)
    p.add_argument("--box", metavar="X0,Y0,X1,Y1",
                   help="use only this region of every photo (photo pixels)")
    p.add_argument("--recursive", action="store_true", help="also read images in subfolders")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=8,
                   help="images per pass, 1..1024 (default: 8)")
    p.add_argument("--error-map", action="store_true",
                   help="also write NAME.error.png: |x - G(E(x))| per pixel (white = the model "
                        "misses half the value range), to see where the model does not know the photo")
    p.add_argument("--save-input", action="store_true",
                   help="also write NAME.input.png: the square the model saw")
    p.add_argument("--no-reconstruction", action="store_true", help="do not write NAME.png")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images with a warning instead of stopping (every image "
                        "is read before anything is written, so without it a bad file stops "
                        "the run with nothing written)")
    g = p.add_argument_group("optimization (optional)")
    g.add_argument("--refine", type=int_in(0, 1_000_000), default=0, metavar="N",
                   help="optimize each stylemap for N Adam steps after the encoder (default: 0)")
    g.add_argument("--lr", type=positive_float, default=0.03,
                   help="learning rate of --refine, > 0 (default: 0.03)")
    g.add_argument("--mse-weight", type=nonneg_float, default=1.0, help="weight of the pixel MSE (default: 1)")
    g.add_argument("--lpips-weight", type=nonneg_float, default=1.0,
                   help="weight of LPIPS; 0 = MSE only, no weights needed (default: 1)")
    g.add_argument("--lpips-net", choices=("vgg", "alex"), default="vgg",
                   help="LPIPS backbone (default: vgg, the paper's training loss)")
    add_device(p)
    add_fast(p)
    add_overwrite(p)
    p.set_defaults(func=writes_folder(run))


def run(args: argparse.Namespace) -> int:
    """Parse into a :class:`~stylemapgan.editing.projecting.ProjectRequest`, project, print."""
    from functools import partial

    from tqdm import tqdm

    from stylemapgan.editing.projecting import ProjectRequest, project_photos
    model = resolve_model(args.model)
    req = ProjectRequest(
        images=args.images, model=model, out=args.out, fit=args.fit, box=args.box,
        align=align_choice(args), recursive=args.recursive, batch_size=args.batch_size,
        error_map=args.error_map, save_input=args.save_input,
        no_reconstruction=args.no_reconstruction, skip_bad=args.skip_bad, refine=args.refine,
        lr=args.lr, mse_weight=args.mse_weight, lpips_weight=args.lpips_weight,
        lpips_net=args.lpips_net, device=args.device, fast=args.fast, overwrite=args.overwrite)
    report = project_photos(req, bar=partial(tqdm, unit="img"))
    for path, value in report.outside:
        print(f"warning: {path}: reconstruction MSE {value:.3f} is "
              f"{value / report.typical:.1f}x this model's usual {report.typical:.3f}: the photo "
              "is outside what the model knows; try --refine N"
              + ("" if args.align else ", or --align for faces") + " (see --error-map for where)")
    skipped = report.skipped
    extra = f", {len(skipped)} skipped" if skipped else ""
    how = f"encoder + {args.refine} refine steps" if args.refine else "encoder"
    if args.fast:
        how += f", fast path: {report.runtime}"
    mean = report.record["mean_mse"]
    print(f"projected {len(report.entries)} image(s) ({how}{extra}) to {report.out}: mean MSE "
          + (f"{mean:.4f}" if isinstance(mean, float) else "not finite"))
    return 0
