"""Editing family (the paper's Table 4): local-editing errors and a detectability proxy.

* Local editing, for a source x_s, a reference x_r and a mask m in [0, 1] (1 = take from the
  reference), edited image e = G(blend(E(x_s), E(x_r), m)):
  ``MSE_src = sum((1 - m) * (e - x_s)^2) / (3 * sum(1 - m))`` (error outside the mask against
  the original source) and ``MSE_ref = sum(m * (e - x_r)^2) / (3 * sum(m))`` (error inside the
  mask against the original reference); sums over pixels and channels, i.e. per-pixel-channel
  means weighted by the (soft) mask. A triple whose mask is empty (or full) has no MSE_ref (or
  MSE_src) and is left out of that average. Reported: the mean over triples, and per part.
* Detectability: average precision of a real-vs-edited classifier. This is a *proxy*: an
  L2-regularized logistic regression on Inception features, trained on one half of the
  real/edited images and scored on the held-out half - not the paper's CNNDetection network.

Edits are made with the editor's own call (:meth:`stylemapgan.editing.Editor.local_edit`).
Registered as the metrics ``local_editing`` and ``detectability``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stylemapgan.editing.editor import Editor
from stylemapgan.editing.operations import check_space
from stylemapgan.errors import InputError
from stylemapgan.metrics._batches import Progress, check_batch, tick
from stylemapgan.metrics.context import MetricContext


@dataclass
class EditBatch:
    """Sources, references ``[B, 3, H, W]``, masks ``[B, 1, H, W]`` (1 = reference) and an
    optional part label per triple."""

    src: torch.Tensor
    ref: torch.Tensor
    mask: torch.Tensor
    parts: Sequence[str] = field(default_factory=list)


def masked_errors(edited: torch.Tensor, src: torch.Tensor, ref: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triple ``(MSE_src, MSE_ref)`` as defined in the module docstring; NaN where the
    region is empty. Mask ``[B, 1, H, W]`` at image resolution."""
    m = mask.to(torch.float64)
    e, s, r = edited.double(), src.double(), ref.double()
    ch = e.shape[1]
    outside = (1 - m).sum(dim=(1, 2, 3)) * ch
    inside = m.sum(dim=(1, 2, 3)) * ch
    err_src = ((1 - m) * (e - s).square()).sum(dim=(1, 2, 3))
    err_ref = (m * (e - r).square()).sum(dim=(1, 2, 3))
    nan = torch.full_like(outside, float("nan"))
    mse_src = torch.where(outside > 0, err_src / outside.clamp_min(1e-12), nan)
    mse_ref = torch.where(inside > 0, err_ref / inside.clamp_min(1e-12), nan)
    return mse_src, mse_ref


@torch.no_grad()
def edit_images(model: torch.nn.Module, src: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor,
                space: str = "wplus", mask_mode: str = "area") -> torch.Tensor:
    """G(blend(E(src), E(ref), mask)) with the blend in W+ (every layer) or W, clamped: each
    triple through :meth:`stylemapgan.editing.Editor.local_edit`, the same call the command
    line and the web editor make, so the metric measures the edit users get."""
    check_space(space)
    editor = Editor(model, cache_bytes=0)
    w_s, w_r = editor.project(src), editor.project(ref)
    masks = mask if mask.shape[0] == src.shape[0] else mask.expand(src.shape[0], -1, -1, -1)
    return torch.cat([editor.local_edit(w_s[i], w_r[i], masks[i: i + 1], space=space,
                                        mode=mask_mode)
                      for i in range(src.shape[0])]).clamp(-1, 1)


def _nanmean(values: Sequence[float]) -> tuple[float | None, int]:
    good = [v for v in values if not math.isnan(v)]
    return (sum(good) / len(good) if good else None), len(good)


def local_editing(model: torch.nn.Module, batches: Iterable[EditBatch], *, space: str = "wplus",
                  mask_mode: str = "area", device: torch.device | str = "cpu",
                  extractor: torch.nn.Module | None = None, progress: Progress = None) -> dict[str, Any]:
    """MSE_src / MSE_ref over edit triples (overall and per part). With ``extractor``, also
    returns the features of the real sources and of the edited images (keys ``_real_features``
    and ``_edited_features``) for :func:`detectability`."""
    src_err: list[float] = []
    ref_err: list[float] = []
    parts: list[str] = []
    real_f, edit_f = [], []
    for b in batches:
        src = check_batch(b.src, "local editing source").to(device)
        ref = check_batch(b.ref, "local editing reference").to(device)
        if ref.shape != src.shape:
            raise InputError(f"local editing: source {tuple(src.shape)} and reference "
                             f"{tuple(ref.shape)} differ in shape")
        mask = b.mask.to(device)
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != src.shape[0] \
                or mask.shape[-2:] != src.shape[-2:]:
            raise InputError(f"local editing: masks must be [B, 1, H, W] matching the images "
                             f"{tuple(src.shape)}, got {tuple(mask.shape)}")
        edited = edit_images(model, src, ref, mask, space, mask_mode).to(src.dtype)
        es, er = masked_errors(edited, src, ref, mask)
        src_err += es.cpu().tolist()
        ref_err += er.cpu().tolist()
        labels = list(b.parts) if b.parts else ["all"] * src.shape[0]
        if len(labels) != src.shape[0]:
            raise InputError("local editing: one part label per triple is needed")
        parts += labels
        if extractor is not None:
            with torch.no_grad():
                real_f.append(extractor(src).to("cpu", torch.float64))
                edit_f.append(extractor(edited).to("cpu", torch.float64))
        tick(progress, src.shape[0])
    if not src_err:
        raise InputError("local editing: no triples")
    mse_src, n_src = _nanmean(src_err)
    mse_ref, n_ref = _nanmean(ref_err)
    per_part = {}
    for p in sorted(set(parts)):
        ps, _ = _nanmean([v for v, q in zip(src_err, parts, strict=True) if q == p])
        pr, _ = _nanmean([v for v, q in zip(ref_err, parts, strict=True) if q == p])
        per_part[p] = {"mse_src": ps, "mse_ref": pr, "count": parts.count(p)}
    out: dict[str, Any] = {
        "mse_src": mse_src, "mse_ref": mse_ref, "count": len(src_err),
        "count_mse_src": n_src, "count_mse_ref": n_ref, "space": space, "mask_mode": mask_mode,
        "per_part": per_part,
    }
    if len(per_part) > 1:
        vals_s = [v["mse_src"] for v in per_part.values() if v["mse_src"] is not None]
        vals_r = [v["mse_ref"] for v in per_part.values() if v["mse_ref"] is not None]
        out["mse_src_mean_over_parts"] = sum(vals_s) / len(vals_s) if vals_s else None
        out["mse_ref_mean_over_parts"] = sum(vals_r) / len(vals_r) if vals_r else None
    if extractor is not None:
        out["_real_features"] = torch.cat(real_f)
        out["_edited_features"] = torch.cat(edit_f)
    return out


# --------------------------------------------------------------------------- detectability
def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision, ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in
    decreasing order (tied scores form one threshold), positives = ``labels == 1``."""
    s = scores.detach().double().flatten().cpu()
    y = labels.detach().flatten().cpu().bool()
    if s.numel() != y.numel():
        raise InputError("average precision: scores and labels differ in length")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise InputError("average precision needs at least one positive")
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order].double()
    tp = torch.cumsum(y, 0)
    fp = torch.cumsum(1 - y, 0)
    # the last index of every group of equal scores is a threshold
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - prev) * precision).sum())


def logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2,
                        steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularized logistic regression (float64, L-BFGS). Returns weights and bias."""
    x = x.double()
    y = y.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def detectability(real: torch.Tensor, edited: torch.Tensor, *, seed: int = 0,
                  l2: float = 1e-2) -> dict[str, Any]:
    """AP (in %) of a logistic-regression real-vs-edited classifier on held-out features.

    Each set is split in half at random (seeded): the classifier (features standardized with
    the training half's statistics) is fit on one half and scored on the other, then the
    halves swap; AP is computed over all held-out scores (edited = positive). 50% is chance
    for balanced sets; lower is better (harder to detect).
    """
    n_r, n_e = real.shape[0], edited.shape[0]
    if min(n_r, n_e) < 4:
        raise InputError(f"detectability needs at least 4 real and 4 edited images, got {n_r} and {n_e}")
    gen = torch.Generator().manual_seed(seed)
    pr, pe = torch.randperm(n_r, generator=gen), torch.randperm(n_e, generator=gen)
    folds = [(pr[: n_r // 2], pe[: n_e // 2]), (pr[n_r // 2:], pe[n_e // 2:])]
    scores, labels = [], []
    for k in range(2):
        tr_r, tr_e = folds[k]
        te_r, te_e = folds[1 - k]
        x_tr = torch.cat([real[tr_r], edited[tr_e]]).double()
        y_tr = torch.cat([torch.zeros(len(tr_r)), torch.ones(len(tr_e))])
        mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
        x_tr = (x_tr - mean) / std
        x_te = (torch.cat([real[te_r], edited[te_e]]).double() - mean) / std
        if x_tr.shape[0] < x_tr.shape[1]:
            # The L2-regularized solution lies in the span of the training rows: solving in an
            # orthonormal basis of that span is exact and much cheaper.
            basis = torch.linalg.qr(x_tr.T).Q
            x_tr, x_te = x_tr @ basis, x_te @ basis
        w, b = logistic_regression(x_tr, y_tr, l2=l2)
        scores.append(x_te @ w + b)
        labels.append(torch.cat([torch.zeros(len(te_r)), torch.ones(len(te_e))]))
    ap = average_precision(torch.cat(scores), torch.cat(labels))
    return {"ap": 100.0 * ap, "num_real": n_r, "num_edited": n_e,
            "chance": 100.0 * n_e / (n_r + n_e),
            "method": "proxy: L2 logistic regression on Inception pool3 features, 2-fold held-out "
                      "(not the paper's CNNDetection classifier)"}




# --------------------------------------------------------------------------- registered metrics
def edit_run(ctx: MetricContext) -> dict[str, Any]:
    """:func:`local_editing` of the context's triples, once per context (with the Inception
    features when ``detectability`` is planned)."""

    def compute() -> dict[str, Any]:
        if ctx.edit_batches is None:
            raise InputError("local_editing and detectability need edit triples")
        extractor = ctx.inception if "detectability" in ctx.planned else None
        with ctx.bar(ctx.num_edits, "local editing") as progress:
            return local_editing(ctx.model, ctx.edit_batches(), space=ctx.edit_space,
                                 mask_mode=ctx.mask_mode, device=ctx.device,
                                 extractor=extractor, progress=progress)

    return ctx.once("edit_run", compute)


def calc_local_editing(ctx: MetricContext) -> dict[str, Any]:
    """The ``local_editing`` metric (without the features kept for detectability)."""
    return {k: v for k, v in edit_run(ctx).items() if not k.startswith("_")}


def calc_detectability(ctx: MetricContext) -> dict[str, Any]:
    """The ``detectability`` metric on the real and edited images of :func:`edit_run`."""
    run = edit_run(ctx)
    if "_real_features" not in run:
        raise InputError("detectability needs the Inception network and must be planned "
                         "(MetricContext.planned) before the editing run")
    return detectability(run["_real_features"], run["_edited_features"], seed=ctx.seed)
