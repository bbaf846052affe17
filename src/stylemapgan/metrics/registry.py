"""Metrics by name: :func:`register_metric`, :func:`calc_metric`, :func:`list_metrics`.

The design follows stylegan3's ``metrics/metric_main.py``: each metric is a function of one
context (here a :class:`~stylemapgan.metrics.context.MetricContext`) that returns a dict of
JSON-able results, registered under a name; the callers (``stylemapgan evaluate``, ``train
--set metrics=...``) only pick names and write what comes back::

    from stylemapgan.metrics import MetricContext, calc_metric, register_metric

    @register_metric(summary="mean absolute value of the reconstructions")
    def brightness(ctx: MetricContext) -> dict:
        total = sum(float(ctx.model.reconstruct(x).abs().sum()) for x in ctx.images())
        return {"brightness": total / ctx.num_images}

    calc_metric("brightness", ctx).results   # {"brightness": ...}

The six metrics of the paper are registered in :func:`builtin_registry`, in the order they are
computed and reported: ``reconstruction``, ``fid``, ``fid_lerp``, ``local_editing``,
``detectability``, ``runtime``; their code lives in one module per family (:mod:`.fid`,
:mod:`.reconstruction`, :mod:`.editing`, :mod:`.runtime`), imported only when a metric runs,
so this module (and naming or checking metrics) does not import PyTorch.

What a metric needs (``needs``) is declared with it: ``"lpips"`` and ``"inception"`` (the
feature networks the caller loads before the long work starts) and ``"edit_triples"`` (source,
reference and mask images, which a training run does not have).
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from stylemapgan.errors import InputError
from stylemapgan.metrics.context import MetricContext

#: The resources a metric may declare in ``needs``.
NEEDS = ("lpips", "inception", "edit_triples")

MetricFn = Callable[[MetricContext], dict[str, Any]]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: ``name``, the function computing it, a one-line ``summary``, the
    resources it ``needs`` (:data:`NEEDS`) and ``notes`` reported with every result."""

    name: str
    compute: MetricFn
    summary: str = ""
    needs: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricResult:
    """What :func:`calc_metric` returns: the metric's ``results`` dict, the wall-clock
    ``seconds`` it took and its ``notes`` (the spec's, and a ``"note"`` in the results, e.g. a
    small-sample warning, as ``"NAME: note"``)."""

    metric: str
    results: dict[str, Any]
    seconds: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "results": self.results, "seconds": self.seconds,
                "notes": list(self.notes)}

    def scalars(self, prefix: str = "metrics") -> dict[str, float]:
        """The finite numbers among the results, flattened to ``prefix/metric/key[/subkey]``
        (what TensorBoard plots)."""
        return dict(_scalars(f"{prefix}/{self.metric}", self.results))


def _scalars(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _scalars(f"{prefix}/{k}", v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        yield prefix, float(value)


class MetricRegistry:
    """Metric specs by name, in registration order."""

    def __init__(self, specs: Iterable[MetricSpec] = ()) -> None:
        self._specs: dict[str, MetricSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: MetricSpec) -> MetricSpec:
        if not spec.name.isidentifier() or spec.name != spec.name.lower():
            raise ValueError(f"metric names are lower-case identifiers, got {spec.name!r}")
        if spec.name in self._specs:
            raise ValueError(f"metric {spec.name!r} is already registered")
        unknown = sorted(set(spec.needs) - set(NEEDS))
        if unknown:
            raise ValueError(f"metric {spec.name!r}: unknown needs {unknown}; known: {NEEDS}")
        self._specs[spec.name] = spec
        return spec

    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def get(self, name: str) -> MetricSpec:
        """The spec of ``name``; a one-line :class:`InputError` listing the known metrics."""
        try:
            return self._specs[name]
        except KeyError:
            raise InputError(f"unknown metric {name!r}; known metrics: "
                             f"{', '.join(self._specs)}") from None

    def copy(self) -> MetricRegistry:
        return MetricRegistry(self._specs.values())

    def parse(self, text: str, *, what: str = "metrics", without: Iterable[str] = (),
              also: str = "") -> list[str]:
        """Comma-separated names (case and ``-``/``_`` ignored) -> known names in registry
        order, each once. Metrics that need something in ``without`` are refused; ``also``
        names a further choice the caller handles itself (e.g. ``"all"``). Raises a one-line
        :class:`InputError` naming ``what`` and the choices."""
        lacking = set(without)
        allowed = [n for n, s in self._specs.items() if not s.needs & lacking]
        choices = ", ".join(allowed) + (f" or {also}" if also else "")
        chosen = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
        for name in chosen:
            if name in self._specs and name not in allowed:
                missing = ", ".join(sorted(self._specs[name].needs & lacking))
                raise InputError(f"{what} {text!r}: {name} needs {missing.replace('_', ' ')}, "
                                 f"which this run does not have; choose from {choices}")
        if not chosen or any(n not in self._specs for n in chosen):
            raise InputError(f"{what} {text!r}: choose from {choices}")
        return [n for n in self._specs if n in chosen]

    def calc(self, name: str, ctx: MetricContext) -> MetricResult:
        spec = self.get(name)
        t0 = time.perf_counter()
        results = spec.compute(ctx)
        seconds = time.perf_counter() - t0
        notes = list(spec.notes)
        if isinstance(results.get("note"), str) and results["note"]:
            notes.insert(0, f"{name}: {results['note']}")
        return MetricResult(name, results, seconds, tuple(notes))


def _lazy(module: str, function: str) -> MetricFn:
    """A metric function imported from ``stylemapgan.metrics.MODULE`` on its first call."""

    def compute(ctx: MetricContext) -> dict[str, Any]:
        fn = getattr(importlib.import_module(f"stylemapgan.metrics.{module}"), function)
        return fn(ctx)

    compute.__name__ = compute.__qualname__ = function
    return compute


def builtin_registry() -> MetricRegistry:
    """A new registry holding the paper's six metrics."""
    detectability_note = ("detectability is a proxy (logistic regression on Inception features), "
                          "not the paper's CNNDetection classifier")
    return MetricRegistry([
        MetricSpec("reconstruction", _lazy("reconstruction", "calc_reconstruction"),
                   "MSE (images in [-1, 1]) and LPIPS between x and G(E(x))",
                   frozenset({"lpips"})),
        MetricSpec("fid", _lazy("fid", "calc_fid"),
                   "FID of random samples G(F(z)) against the dataset", frozenset({"inception"})),
        MetricSpec("fid_lerp", _lazy("fid", "calc_fid_lerp"),
                   "FID of G(lerp(E(x_a), E(x_b), t)), random pairs, t ~ U(0, 1)",
                   frozenset({"inception"})),
        MetricSpec("local_editing", _lazy("editing", "calc_local_editing"),
                   "MSE_src / MSE_ref of local edits", frozenset({"edit_triples"})),
        MetricSpec("detectability", _lazy("editing", "calc_detectability"),
                   "AP of a real-vs-edited logistic regression on Inception features (a proxy)",
                   frozenset({"edit_triples", "inception"}), (detectability_note,)),
        MetricSpec("runtime", _lazy("runtime", "calc_runtime"),
                   "projection + generation, seconds per image (median)"),
    ])


#: The registry :func:`register_metric`, :func:`calc_metric` and :func:`list_metrics` use by
#: default (the command line's and training's): the built-in metrics, then any registered.
default_registry = builtin_registry()


@dataclass
class _Registration:
    name: str | None
    summary: str | None
    needs: Iterable[str]
    notes: Iterable[str]
    registry: MetricRegistry | None

    def __call__(self, fn: MetricFn) -> MetricFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        spec = MetricSpec(self.name or fn.__name__, fn,
                          self.summary if self.summary is not None else (doc[0] if doc else ""),
                          frozenset(self.needs), tuple(self.notes))
        (self.registry or default_registry).add(spec)
        return fn


def register_metric(fn: MetricFn | None = None, *, name: str | None = None,
                    summary: str | None = None, needs: Iterable[str] = (),
                    notes: Iterable[str] = (),
                    registry: MetricRegistry | None = None) -> Any:
    """Register ``fn(ctx) -> dict`` as a metric (a decorator, bare or with arguments) under
    ``name`` (default: the function's name) in ``registry`` (default:
    :data:`default_registry`). ``summary`` defaults to the docstring's first line; ``needs``
    lists what the metric uses (:data:`NEEDS`). Returns ``fn`` unchanged."""
    reg = _Registration(name, summary, needs, notes, registry)
    return reg(fn) if fn is not None else reg


def calc_metric(name: str, ctx: MetricContext,
                registry: MetricRegistry | None = None) -> MetricResult:
    """Compute the metric ``name`` on ``ctx``; an unknown name is a one-line
    :class:`InputError` listing the known metrics."""
    return (registry or default_registry).calc(name, ctx)


def list_metrics(registry: MetricRegistry | None = None) -> tuple[str, ...]:
    """The registered metric names, in the order they are computed and reported."""
    return (registry or default_registry).names()


#: What a training run cannot give a metric.
NOT_IN_TRAINING = ("edit_triples",)


def training_metric_names(text: str, registry: MetricRegistry | None = None) -> list[str]:
    """``TrainConfig.metrics`` (comma-separated) -> the metric names, in registry order; empty
    text -> none. A one-line :class:`InputError` lists the metrics training can compute."""
    if not text.strip():
        return []
    return (registry or default_registry).parse(text, what="metrics", without=NOT_IN_TRAINING)


def is_valid_metric(name: str, registry: MetricRegistry | None = None) -> bool:
    return name in (registry or default_registry)
