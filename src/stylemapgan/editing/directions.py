"""Semantic directions in stylemap space, learned from labeled examples.

As in the reference's semantic manipulation, a linear classifier separates the flattened
stylemaps ``w`` of positive examples (e.g. smiling faces) from negative ones; the unit normal
of its decision boundary is the direction, and ``w + strength * direction`` (optionally only
inside a mask, see :func:`stylemapgan.editing.apply_direction`) adds the attribute (negative
strengths remove it). The classifiers are implemented in torch (float64, Newton's method):

* ``svm``: a linear support vector machine with the squared hinge loss (the L2-SVM that
  liblinear's ``LinearSVC`` fits by default), ``0.5 |v|^2 + C * sum(max(0, 1 - y f(x))^2)``;
* ``logistic``: L2-regularized logistic regression, ``0.5 |v|^2 + C * sum(log(1 + e^(-y f(x))))``.

Both weight the two classes equally (each class's loss is averaged, then scaled by the total
count), so an unbalanced set of examples does not tilt the boundary. The bias is not
regularized. Features are used as they are (no standardization), so the direction lives in
the same units as ``w``: its norm is 1, and ``strength`` is a distance in stylemap space.

:func:`learn_direction` is the whole of ``stylemapgan direction`` as one library call: it reads
the labeled examples (image files, saved stylemaps, folders, a CSV of labels), projects them,
measures the accuracy on a held-out share, fits on all of them and saves the direction.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stylemapgan.errors import InputError
from stylemapgan.files import read_tagged, write_tagged

log = logging.getLogger(__name__)

FORMAT_NAME = "stylemapgan-direction"
FORMAT_VERSION = 1
METHODS = ("svm", "logistic")
#: The labels of a CSV of examples (:func:`read_labels_csv`), lower-cased.
TRUE_LABELS = frozenset({"1", "+1", "true", "yes", "y", "pos", "positive"})
FALSE_LABELS = frozenset({"0", "-1", "false", "no", "n", "neg", "negative"})

__all__ = ["FALSE_LABELS", "FORMAT_NAME", "FORMAT_VERSION", "METHODS", "TRUE_LABELS", "Direction",
           "DirectionReport", "DirectionRequest", "accuracy", "fit_direction", "learn_direction",
           "load_direction", "objective", "read_labels_csv", "save_direction"]


@dataclass
class Direction:
    """A unit direction in stylemap space and the classifier it came from.

    vector: [C, S, S], unit L2 norm, pointing toward the positive class.
    bias: offset of the classifier in that normalized form: ``score(w) = <w, vector> + bias``
        is the signed distance of ``w`` to the decision boundary.
    info: how it was learned (method, C, counts, accuracies, model checksum, names).
    """

    vector: torch.Tensor
    bias: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, w: torch.Tensor) -> torch.Tensor:
        """Signed distance of each stylemap [N, C, S, S] to the boundary (> 0: positive)."""
        v = self.vector.to(device=w.device, dtype=w.dtype)
        if w.shape[1:] != v.shape:
            raise InputError(f"stylemaps of shape {tuple(w.shape[1:])} do not fit a direction "
                             f"of shape {tuple(v.shape)}")
        return (w * v).flatten(1).sum(1) + self.bias


def objective(x: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor, v: torch.Tensor,
              b: torch.Tensor | float, method: str, c: float) -> torch.Tensor:
    """The training objective of the classifiers (a plain definition, also used by tests)."""
    margin = y * (x @ v + b)
    losses = F.relu(1.0 - margin).square() if method == "svm" else F.softplus(-margin)
    return 0.5 * v.square().sum() + c * (sample_weight * losses).sum()


def _newton(x: torch.Tensor, y: torch.Tensor, sw: torch.Tensor, method: str, c: float,
            max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimize :func:`objective` over (v, b) by Newton's method (the generalized Hessian for
    the squared hinge) with a backtracking line search; converges in a handful of steps.

    The Newton system ``[[I + X'DX, X'D1], [1'DX, 1'D1]] [dv; db] = -[g_v; g_b]`` is solved by
    eliminating the (unregularized) bias; ``(I + X'DX)^-1`` goes through the n x n Gram
    matrix of the examples when there are fewer examples than dimensions (Woodbury), else
    through the d x d matrix. Returns v, b and the number of steps.
    """
    n, d = x.shape
    v = torch.zeros(d, dtype=x.dtype)
    b = torch.zeros((), dtype=x.dtype)
    gram = x @ x.T if n <= d else None
    g0 = None
    steps = 0
    for steps in range(1, max_iter + 1):  # noqa: B007 (steps is returned)
        m = y * (x @ v + b)
        if method == "svm":
            r = F.relu(1.0 - m)
            coef = 2.0 * c * sw * y * r
            curv = 2.0 * c * sw * (m < 1.0).to(x.dtype)
        else:
            p = torch.sigmoid(-m)
            coef = c * sw * y * p
            curv = c * sw * p * (1.0 - p)
        gv, gb = v - x.T @ coef, -coef.sum()
        gnorm = float(torch.sqrt(gv.square().sum() + gb.square()))
        g0 = g0 or max(gnorm, 1e-300)
        if gnorm <= tol * g0:
            break
        act = torch.nonzero(curv > 0).flatten()
        sq = curv[act].sqrt()
        if gram is not None:
            k = torch.eye(len(act), dtype=x.dtype) + sq[:, None] * gram[act][:, act] * sq[None, :]
            chol = torch.linalg.cholesky(k)
            xa = x[act]

            def m_inv(z: torch.Tensor, chol: torch.Tensor = chol, xa: torch.Tensor = xa,
                      sq: torch.Tensor = sq) -> torch.Tensor:
                t = torch.cholesky_solve((sq * (xa @ z))[:, None], chol)[:, 0]
                return z - xa.T @ (sq * t)
        else:
            xa = sq[:, None] * x[act]
            chol = torch.linalg.cholesky(torch.eye(d, dtype=x.dtype) + xa.T @ xa)

            def m_inv(z: torch.Tensor, chol: torch.Tensor = chol) -> torch.Tensor:
                return torch.cholesky_solve(z[:, None], chol)[:, 0]
        u = x.T @ curv
        mg, mu = m_inv(gv), m_inv(u)
        schur = float(curv.sum() - u @ mu)
        db = (-gb + u @ mg) / schur if schur > 1e-12 * max(1.0, float(curv.sum())) else gb * 0
        dv = -mg - mu * db
        f0 = float(objective(x, y, sw, v, b, method, c))
        slope = float(gv @ dv + gb * db)
        t = 1.0
        while t > 1e-12 and float(objective(x, y, sw, v + t * dv, b + t * db, method, c)) > f0 + 1e-4 * t * slope:
            t *= 0.5
        v, b = v + t * dv, b + t * db
    return v, b, steps


def fit_direction(positive: torch.Tensor, negative: torch.Tensor, *, method: str = "svm",
                  c: float = 1.0, max_iter: int = 100, tol: float = 1e-8) -> Direction:
    """Learn a direction from stylemaps of positive [P, C, S, S] and negative [Q, C, S, S]
    examples. Deterministic. Returns a :class:`Direction` whose ``info`` holds the training
    accuracy and the norm of the unnormalized classifier weights."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not c > 0:
        raise InputError(f"C must be > 0, got {c}")
    if positive.ndim != 4 or negative.ndim != 4 or positive.shape[1:] != negative.shape[1:]:
        raise InputError(f"positive {tuple(positive.shape)} and negative {tuple(negative.shape)} "
                         "stylemaps must both be [N, C, S, S] of the same shape")
    if len(positive) < 1 or len(negative) < 1:
        raise InputError("learning a direction needs at least one positive and one negative example")
    shape = tuple(positive.shape[1:])
    x = torch.cat([positive, negative]).detach().flatten(1).to("cpu", torch.float64)
    y = torch.cat([torch.ones(len(positive)), -torch.ones(len(negative))]).double()
    n = len(x)
    sw = torch.where(y > 0, n / (2.0 * len(positive)), n / (2.0 * len(negative))).double()
    v, b, iters = _newton(x, y, sw, method, c, max_iter, tol)
    norm = float(v.norm())
    if not norm > 0:
        raise InputError("the examples gave no direction (are the positive and negative "
                         "stylemaps identical?)")
    pred = torch.where(x @ v + b > 0, 1.0, -1.0)
    acc = float((pred == y).double().mean())
    info = {"method": method, "C": c, "positives": len(positive), "negatives": len(negative),
            "train_accuracy": acc, "weight_norm": norm, "newton_steps": iters}
    log.info("direction: %s, C=%g, training accuracy %.3f (%d Newton steps)", method, c, acc, iters)
    return Direction((v / norm).reshape(shape).float(), float(b) / norm, info)


def accuracy(direction: Direction, positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Fraction of examples on the right side of the boundary."""
    right = (direction.score(positive) > 0).sum() + (direction.score(negative) <= 0).sum()
    return float(right) / (len(positive) + len(negative))


def save_direction(direction: Direction, path: str | os.PathLike[str], *,
                   overwrite: bool = False) -> Path:
    """Write a direction as a ``.safetensors`` file (vector + JSON metadata), atomically."""
    meta = {"bias": repr(float(direction.bias)), "info": json.dumps(direction.info, sort_keys=True)}
    return write_tagged(path, {"direction": direction.vector.detach().float()}, fmt=FORMAT_NAME,
                        version=FORMAT_VERSION, metadata=meta, overwrite=overwrite)


def load_direction(path: str | os.PathLike[str]) -> Direction:
    """Read a file written by :func:`save_direction`; one-line errors for anything else."""
    found = read_tagged(path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="direction file",
                        tensors=("direction",),
                        foreign={"stylemapgan-model": "a model file",
                                 "stylemapgan-stylemap": "a stylemap file"},
                        missing=f"{path}: no such direction file; learn one with "
                                "`stylemapgan direction`",
                        hint="learn one with `stylemapgan direction`")
    path, meta, vec = found.path, found.metadata, found.tensors["direction"]
    if vec.ndim != 3 or not torch.isfinite(vec).all():
        raise InputError(f"{path}: the direction must be a finite [C, S, S] tensor")
    try:
        info = json.loads(meta.get("info", "{}"))
        bias = float(meta.get("bias", "0"))
    except (json.JSONDecodeError, ValueError):
        raise InputError(f"{path}: unreadable metadata") from None
    return Direction(vec, bias, info)


def read_labels_csv(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """The positive and negative example paths of a CSV of ``PATH,LABEL`` lines (labels in
    :data:`TRUE_LABELS` or :data:`FALSE_LABELS`; paths relative to the CSV's folder). Lines
    starting with ``#`` are skipped, and so is a first line whose label is none of those and
    whose path names no file (a header)."""
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
                if i == 1 and label not in TRUE_LABELS | FALSE_LABELS and not (base / file).exists():
                    continue  # a header line
                if label in TRUE_LABELS:
                    pos.append(str(base / file))
                elif label in FALSE_LABELS:
                    neg.append(str(base / file))
                else:
                    raise InputError(f"{path}:{i}: label {row[1]!r} is not 1/0, yes/no or true/false")
    except FileNotFoundError:
        raise InputError(f"{path}: no such CSV file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file") from None
    return pos, neg


@dataclass(frozen=True)
class DirectionRequest:
    """What ``stylemapgan direction`` was asked (its options, checked by the parser).

    positive, negative: images, saved stylemaps or folders with and without the attribute;
    csv: a file of more of them (:func:`read_labels_csv`); align: the face to align
    (``largest`` or a number) or None to fit by ``fit``; fast: the fast path this device has
    (:meth:`~stylemapgan.nn.runtime.RuntimeOptions.fastest`)."""

    model: str
    out: str
    positive: Sequence[str] = ()
    negative: Sequence[str] = ()
    csv: str | None = None
    method: str = "svm"
    c: float = 1.0
    val_fraction: float = 0.2
    seed: int = 0
    name: str | None = None
    fit: str = "crop"
    align: str | None = None
    recursive: bool = False
    batch_size: int = 8
    device: str = "auto"
    fast: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class DirectionReport:
    """What :func:`learn_direction` did: the saved ``direction`` (fit on every example; its
    ``info`` holds the training accuracy), where it went, the example counts and the accuracy
    on the held-out ``val_examples`` (None when none could be held out of both classes)."""

    direction: Direction
    out: Path
    positives: int
    negatives: int
    val_accuracy: float | None
    val_examples: int


def _split(w: torch.Tensor, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept for training, held out): at least one held out when asked for and possible, at
    least one kept for training."""
    k = min(len(w) - 1, max(1, round(len(w) * fraction))) if fraction > 0 else 0
    if k <= 0:
        return w, w[:0]
    perm = torch.randperm(len(w), generator=gen)
    return w[perm[k:]], w[perm[:k]]


def learn_direction(req: DirectionRequest, *,
                    bar: Callable[..., Any] | None = None) -> DirectionReport:
    """Learn a direction from the examples ``req`` names and save it to ``req.out`` (see the
    module notes). Nothing is written when an example cannot be read. ``bar``: a progress bar
    factory taking ``total`` and ``desc`` and returning an object with ``update`` and
    ``close`` (``tqdm.tqdm`` fits); None shows nothing."""
    import numpy as np

    from stylemapgan.editing.editor import Editor
    from stylemapgan.files import sha256_file
    from stylemapgan.formats.stylemaps import is_stylemap_file, load_stylemap
    from stylemapgan.imaging.images import IMAGE_SUFFIXES, check_writable, from_uint8, list_images
    from stylemapgan.imaging.photos import photo_square
    from stylemapgan.nn.runtime import RuntimeOptions
    from stylemapgan.utils import resolve_device

    if not 0 <= req.val_fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {req.val_fraction}")
    if not req.c > 0:
        raise InputError("--C must be > 0")
    pos_in, neg_in = list(req.positive), list(req.negative)
    if req.csv:
        p, n = read_labels_csv(req.csv)
        pos_in += p
        neg_in += n
    if not pos_in or not neg_in:
        raise InputError("give examples of both kinds: --positive and --negative (or --csv)")
    suffixes = (*IMAGE_SUFFIXES, ".safetensors")
    pos = list_images(pos_in, recursive=req.recursive, suffixes=suffixes)
    neg = list_images(neg_in, recursive=req.recursive, suffixes=suffixes)
    both = set(pos) & set(neg)
    if both:
        raise InputError(f"{sorted(both)[0]} is labeled both positive and negative")
    out = Path(req.out)
    check_writable([out], req.overwrite, inputs=[*pos, *neg, *([req.csv] if req.csv else []),
                                                 *([req.model] if req.model else [])])

    device = resolve_device(req.device)
    editor = Editor.load(req.model, device, batch_size=req.batch_size,
                         runtime=RuntimeOptions.fastest(device) if req.fast else None)
    model_sha = sha256_file(req.model)
    aligner = None
    if req.align is not None:
        from stylemapgan.imaging.faces import FaceAligner

        aligner = FaceAligner()
    digests = hashlib.sha256()

    def stylemaps(paths: list[Path], what: str) -> torch.Tensor:
        ws = []
        progress = bar(total=len(paths), desc=f"project {what}") if bar else None
        try:  # the bar is closed before an error is shown
            for start in range(0, len(paths), req.batch_size):
                chunk = paths[start: start + req.batch_size]
                pixels = []
                for path in chunk:
                    digests.update(sha256_file(path).encode())
                    if is_stylemap_file(path):
                        ws.append(load_stylemap(path, editor.config, model_sha).w.to(device))
                    else:
                        pixels.append(photo_square(path, editor.size, fit=req.fit,
                                                   align=req.align, aligner=aligner,
                                                   no_face="leave it out of the examples, or "
                                                           "leave out --align").pixels)
                if pixels:
                    ws.append(editor.project(from_uint8(np.stack(pixels)).to(device)))
                if progress is not None:
                    progress.update(len(chunk))
        finally:
            if progress is not None:
                progress.close()
        return torch.cat(ws).cpu()

    w_pos, w_neg = stylemaps(pos, "positive"), stylemaps(neg, "negative")
    gen = torch.Generator().manual_seed(req.seed)
    (tp, vp), (tn, vn) = _split(w_pos, req.val_fraction, gen), _split(w_neg, req.val_fraction, gen)
    val_acc = None
    if len(vp) and len(vn):
        held = fit_direction(tp, tn, method=req.method, c=req.c)
        val_acc = accuracy(held, vp, vn)
    direction = fit_direction(w_pos, w_neg, method=req.method, c=req.c)
    direction.info.update(name=req.name, model_sha256=model_sha, val_accuracy=val_acc,
                          val_fraction=req.val_fraction, examples_sha256=digests.hexdigest())
    save_direction(direction, out, overwrite=req.overwrite)
    return DirectionReport(direction, out, len(w_pos), len(w_neg), val_acc, len(vp) + len(vn))
