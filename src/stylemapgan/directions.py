"""Semantic directions in stylemap space, learned from labeled examples.

As in the reference's semantic manipulation, a linear classifier separates the flattened
stylemaps ``w`` of positive examples (e.g. smiling faces) from negative ones; the unit normal
of its decision boundary is the direction, and ``w + strength * direction`` (optionally only
inside a mask, see :func:`stylemapgan.editing.apply_direction`) adds the attribute (negative
strengths remove it). The classifiers are implemented in torch (float64, full-batch L-BFGS):

* ``svm``: a linear support vector machine with the squared hinge loss (the L2-SVM that
  liblinear's ``LinearSVC`` fits by default), ``0.5 |v|^2 + C * sum(max(0, 1 - y f(x))^2)``;
* ``logistic``: L2-regularized logistic regression, ``0.5 |v|^2 + C * sum(log(1 + e^(-y f(x))))``.

Both weight the two classes equally (each class's loss is averaged, then scaled by the total
count), so an unbalanced set of examples does not tilt the boundary. The bias is not
regularized. Features are used as they are (no standardization), so the direction lives in
the same units as ``w``: its norm is 1, and ``strength`` is a distance in stylemap space.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .checkpoint import atomic_write
from .errors import InputError

log = logging.getLogger(__name__)

FORMAT_NAME = "stylemapgan-direction"
FORMAT_VERSION = 1
METHODS = ("svm", "logistic")


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


def _objective(x: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor, v: torch.Tensor,
               b: torch.Tensor, method: str, c: float) -> torch.Tensor:
    margin = y * (x @ v + b)
    losses = F.relu(1.0 - margin).square() if method == "svm" else F.softplus(-margin)
    return 0.5 * v.square().sum() + c * (sample_weight * losses).sum()


def fit_direction(positive: torch.Tensor, negative: torch.Tensor, *, method: str = "svm",
                  c: float = 1.0, max_iter: int = 500, tol: float = 1e-10) -> Direction:
    """Learn a direction from stylemaps of positive [P, C, S, S] and negative [Q, C, S, S]
    examples. Deterministic (no random initialization). Returns a :class:`Direction` whose
    ``info`` holds the training accuracy."""
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
    v = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([v, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _objective(x, y, sw, v, b, method, c)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    v, b = v.detach(), b.detach()
    norm = float(v.norm())
    if not norm > 0:
        raise InputError("the examples gave no direction (are the positive and negative "
                         "stylemaps identical?)")
    pred = torch.where(x @ v + b > 0, 1.0, -1.0)
    acc = float((pred == y).double().mean())
    info = {"method": method, "C": c, "positives": len(positive), "negatives": len(negative),
            "train_accuracy": acc}
    log.info("direction: %s, C=%g, training accuracy %.3f", method, c, acc)
    return Direction((v / norm).reshape(shape).float(), float(b) / norm, info)


def accuracy(direction: Direction, positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Fraction of examples on the right side of the boundary."""
    right = (direction.score(positive) > 0).sum() + (direction.score(negative) <= 0).sum()
    return float(right) / (len(positive) + len(negative))


def save_direction(direction: Direction, path: str | os.PathLike[str], *,
                   overwrite: bool = False) -> Path:
    """Write a direction as a ``.safetensors`` file (vector + JSON metadata), atomically."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
            "bias": repr(float(direction.bias)), "info": json.dumps(direction.info, sort_keys=True)}
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        save_file({"direction": direction.vector.detach().cpu().float().contiguous()}, str(tmp),
                  metadata=meta)
    return path


def load_direction(path: str | os.PathLike[str]) -> Direction:
    """Read a file written by :func:`save_direction`; one-line errors for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such direction file; learn one with `stylemapgan direction`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta: Mapping[str, str] = f.metadata() or {}
            if meta.get("format") != FORMAT_NAME:
                raise InputError(f"{path} is not a direction file (made by `stylemapgan direction`)")
            vec = f.get_tensor("direction")
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not a readable direction file ({str(exc).splitlines()[0]})") from None
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise InputError(f"{path}: made by a newer stylemapgan; upgrade to use it")
    if vec.ndim != 3 or not torch.isfinite(vec).all():
        raise InputError(f"{path}: the direction must be a finite [C, S, S] tensor")
    try:
        info = json.loads(meta.get("info", "{}"))
        bias = float(meta.get("bias", "0"))
    except (json.JSONDecodeError, ValueError):
        raise InputError(f"{path}: unreadable metadata") from None
    return Direction(vec, bias, info)
