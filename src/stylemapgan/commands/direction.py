"""``stylemapgan direction``: learn a semantic direction from labeled example images."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    abspath,
    add_device,
    add_fast,
    add_model,
    add_overwrite,
    add_parser,
    float_in,
    fraction,
    int_in,
    resolve_model,
    seed_int,
)
from stylemapgan.commands._editio import add_fit, align_choice


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "direction", help="learn a semantic direction (e.g. smiling) from labeled examples",
        description="""
            Learn a direction in stylemap space from examples with and without an attribute
            (as the reference's semantic manipulation): the examples are projected (or read
            from saved stylemaps), a linear classifier (linear SVM or logistic regression)
            separates their flattened stylemaps, and the unit normal of its boundary is saved.
            Apply it with `stylemapgan edit direction`. A share of the examples (--val-fraction)
            is held out to report accuracy; the saved direction is then fit on all of them.""",
        examples="""
            stylemapgan direction --positive smiling/ --negative neutral/ --model m.safetensors --out smile.safetensors
            stylemapgan direction --csv labels.csv --model m.safetensors --out glasses.safetensors --method logistic""",
    )
    p.add_argument("--positive", nargs="+", type=abspath, default=[], metavar="PATH",
                   help="images, stylemaps or folders WITH the attribute")
    p.add_argument("--negative", nargs="+", type=abspath, default=[], metavar="PATH",
                   help="images, stylemaps or folders WITHOUT it")
    p.add_argument("--csv", type=abspath, metavar="FILE",
                   help="a CSV of PATH,LABEL lines (label 1/0, yes/no, true/false; paths relative "
                        "to the CSV's folder), instead of or besides --positive/--negative")
    add_model(p)
    p.add_argument("--out", required=True, help="direction file to write (.safetensors)")
    p.add_argument("--method", choices=("svm", "logistic"), default="svm",
                   help="linear classifier: svm (squared hinge, default) or logistic")
    p.add_argument("--C", dest="c", type=float_in(1e-6, 1e6), default=1.0,
                   help="inverse regularization strength, 1e-6..1e6 (default: 1)")
    p.add_argument("--val-fraction", type=fraction, default=0.2,
                   help="share of each class held out to measure accuracy, in [0, 1) (default: 0.2)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the held-out split (default: 0)")
    p.add_argument("--name", help="a name for the attribute (stored in the file)")
    add_fit(p)
    p.add_argument("--recursive", action="store_true", help="also read subfolders")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=8,
                   help="images per encoder pass, 1..1024 (default: 8)")
    add_device(p)
    add_fast(p)
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse into a :class:`~stylemapgan.editing.directions.DirectionRequest`, learn, print."""
    from functools import partial

    from tqdm import tqdm

    from stylemapgan.editing.directions import DirectionRequest, learn_direction

    model = resolve_model(args.model)
    req = DirectionRequest(
        model=model, out=args.out, positive=args.positive, negative=args.negative, csv=args.csv,
        method=args.method, c=args.c, val_fraction=args.val_fraction, seed=args.seed,
        name=args.name, fit=args.fit, align=align_choice(args), recursive=args.recursive,
        batch_size=args.batch_size, device=args.device, fast=args.fast, overwrite=args.overwrite)
    report = learn_direction(req, bar=partial(tqdm, unit="img"))
    val = (f", held-out accuracy {report.val_accuracy:.3f} ({report.val_examples} examples)"
           if report.val_accuracy is not None else "")
    print(f"direction ({args.method}, C={args.c:g}) from {report.positives} positive and "
          f"{report.negatives} negative examples: training accuracy "
          f"{report.direction.info['train_accuracy']:.3f}{val}; wrote {report.out}")
    return 0
