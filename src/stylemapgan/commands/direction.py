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
    fast_runtime,
    float_in,
    fraction,
    int_in,
    resolve_model,
    seed_int,
)
from stylemapgan.commands._editio import add_fit, align_choice

TRUE = {"1", "+1", "true", "yes", "y", "pos", "positive"}
FALSE = {"0", "-1", "false", "no", "n", "neg", "negative"}


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


def _read_csv(path: str) -> tuple[list[str], list[str]]:
    import csv
    from pathlib import Path

    from stylemapgan.errors import InputError

    base = Path(path).parent
    pos, neg = [], []
    if Path(path).exists() and not Path(path).is_file():  # a folder, a FIFO (would block), ...
        raise InputError(f"{path}: not a regular file; give a CSV file of PATH,LABEL lines")
    try:
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f), 1):
                if not row or row[0].strip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise InputError(f"{path}:{i}: expected PATH,LABEL")
                file, label = row[0].strip(), row[1].strip().lower()
                if i == 1 and label not in TRUE | FALSE and not (base / file).exists():
                    continue  # a header line
                if label in TRUE:
                    pos.append(str(base / file))
                elif label in FALSE:
                    neg.append(str(base / file))
                else:
                    raise InputError(f"{path}:{i}: label {row[1]!r} is not 1/0, yes/no or true/false")
    except FileNotFoundError:
        raise InputError(f"{path}: no such CSV file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file") from None
    return pos, neg


def run(args: argparse.Namespace) -> int:
    args.model = resolve_model(args.model)
    import hashlib
    from pathlib import Path

    import numpy as np
    import torch
    from tqdm import tqdm

    from stylemapgan.editing.directions import accuracy, fit_direction, save_direction
    from stylemapgan.editing.editor import Editor
    from stylemapgan.errors import InputError
    from stylemapgan.files import sha256_file
    from stylemapgan.formats.stylemaps import is_stylemap_file, load_stylemap
    from stylemapgan.imaging.images import (
        IMAGE_SUFFIXES,
        check_writable,
        from_uint8,
        list_images,
    )
    from stylemapgan.imaging.photos import photo_square
    from stylemapgan.utils import resolve_device

    if not 0 <= args.val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not args.c > 0:
        raise InputError("--C must be > 0")
    pos_in, neg_in = list(args.positive), list(args.negative)
    if args.csv:
        p, n = _read_csv(args.csv)
        pos_in += p
        neg_in += n
    if not pos_in or not neg_in:
        raise InputError("give examples of both kinds: --positive and --negative (or --csv)")
    suffixes = (*IMAGE_SUFFIXES, ".safetensors")
    pos = list_images(pos_in, recursive=args.recursive, suffixes=suffixes)
    neg = list_images(neg_in, recursive=args.recursive, suffixes=suffixes)
    both = set(pos) & set(neg)
    if both:
        raise InputError(f"{sorted(both)[0]} is labeled both positive and negative")
    out = Path(args.out)
    check_writable([out], args.overwrite, inputs=[*pos, *neg, *([args.csv] if args.csv else []),
                                                  *([args.model] if args.model else [])])

    device = resolve_device(args.device)
    editor = Editor.load(args.model, device, batch_size=args.batch_size,
                         runtime=fast_runtime(args.fast, device))
    model_sha = sha256_file(args.model)
    align = align_choice(args)
    aligner = None
    if align is not None:
        from stylemapgan.imaging.faces import FaceAligner

        aligner = FaceAligner()
    digests = hashlib.sha256()

    def stylemaps(paths: list[Path], what: str) -> torch.Tensor:
        ws = []
        with tqdm(total=len(paths), unit="img", desc=f"project {what}") as bar:
            for start in range(0, len(paths), args.batch_size):
                chunk = paths[start: start + args.batch_size]
                pixels = []
                for path in chunk:
                    digests.update(sha256_file(path).encode())
                    if is_stylemap_file(path):
                        ws.append(load_stylemap(path, editor.config, model_sha).w.to(device))
                    else:
                        pixels.append(photo_square(path, editor.size, fit=args.fit,
                                                   align=align, aligner=aligner,
                                                   no_face="leave it out of the examples, or "
                                                           "leave out --align").pixels)
                if pixels:
                    ws.append(editor.project(from_uint8(np.stack(pixels)).to(device)))
                bar.update(len(chunk))
        return torch.cat(ws).cpu()

    w_pos, w_neg = stylemaps(pos, "positive"), stylemaps(neg, "negative")
    gen = torch.Generator().manual_seed(args.seed)

    def split(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # At least one held out when asked for and possible; at least one kept for training.
        k = min(len(w) - 1, max(1, round(len(w) * args.val_fraction))) if args.val_fraction > 0 else 0
        if k <= 0:
            return w, w[:0]
        perm = torch.randperm(len(w), generator=gen)
        return w[perm[k:]], w[perm[:k]]

    (tp, vp), (tn, vn) = split(w_pos), split(w_neg)
    val_acc = None
    if len(vp) and len(vn):
        held = fit_direction(tp, tn, method=args.method, c=args.c)
        val_acc = accuracy(held, vp, vn)
    direction = fit_direction(w_pos, w_neg, method=args.method, c=args.c)
    direction.info.update(name=args.name, model_sha256=model_sha, val_accuracy=val_acc,
                          val_fraction=args.val_fraction, examples_sha256=digests.hexdigest())
    save_direction(direction, out, overwrite=args.overwrite)
    val = f", held-out accuracy {val_acc:.3f} ({len(vp) + len(vn)} examples)" if val_acc is not None else ""
    print(f"direction ({args.method}, C={args.c:g}) from {len(w_pos)} positive and {len(w_neg)} "
          f"negative examples: training accuracy {direction.info['train_accuracy']:.3f}{val}; "
          f"wrote {out}")
    return 0
