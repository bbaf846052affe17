"""``stylemapgan evaluate``: the paper's metrics (Tables 2-4) for a model on a dataset.

The command parses its arguments into a :class:`~stylemapgan.metrics.MetricContext`, computes
each chosen metric with :func:`~stylemapgan.metrics.calc_metric` and writes metrics.json and
metrics.md; the metrics themselves live in :mod:`stylemapgan.metrics`.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stylemapgan.commands._common import (
    add_device,
    add_model,
    add_overwrite,
    add_parser,
    dump_json,
    finite_or_none,
    float_in,
    int_in,
    positive_int,
    resolve_model,
    seed_int,
    writes_folder,
)
from stylemapgan.metrics import (  # light: no PyTorch until a metric runs
    Triple,  # noqa: F401  (re-exported: tests read triples as the command does)
    check_triples,
    default_registry,
    edit_batches,
    list_metrics,
    load_triple,
    read_triples,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "evaluate", help="reconstruction, FID, FID_lerp, local-editing metrics, runtime",
        description="""
            Evaluate a model on a dataset and write metrics.json and metrics.md (tables laid out
            like the paper's Tables 2-4) to --out.

            metrics (--metrics, comma-separated, or "all"):
              reconstruction  MSE (images in [-1, 1]) and LPIPS between x and G(E(x))
              fid             FID of random samples G(F(z)) against the dataset
              fid_lerp        FID of G(lerp(E(x_a), E(x_b), t)), random pairs, t ~ U(0, 1)
              local_editing   MSE_src / MSE_ref of local edits (needs --edit-triples)
              detectability   AP of a real-vs-edited logistic regression on Inception features
                              (a proxy, not the paper's CNNDetection; needs --edit-triples)
              runtime         projection + generation, seconds per image (median)
            Default: reconstruction, fid, fid_lerp, runtime (+ the editing metrics when
            --edit-triples is given).

            --edit-triples: either a JSONL file, one triple per line:
              {"src": "a.png", "ref": "b.png", "mask": "m.png", "part": "hair"}
            (paths relative to the file; "part" optional), or a folder with src/, ref/ and
            mask/ subfolders holding files of the same name (any image extension), or a folder
            of such folders, one per part (hair/src, hair/ref, hair/mask, glasses/...).
            Masks are grayscale images of the source's size; white (>= 50%) = take from the
            reference. Images are center-cropped and resized to the model's resolution.

            Needs the LPIPS / Inception weights: `stylemapgan weights fetch` first. Dataset
            FID statistics are cached in $STYLEMAPGAN_HOME/fid-stats, keyed by content.""",
        examples="""
            stylemapgan evaluate --model celeba_hq.safetensors --data data/celeba_hq/test --out eval
            stylemapgan evaluate --model m.safetensors --data test.zip --metrics reconstruction,runtime --out eval
            stylemapgan evaluate --model m.safetensors --data test/ --edit-triples triples/ --metrics local_editing,detectability --out eval""",
    )
    add_model(p)
    p.add_argument("--data", required=True,
                   help="test images: LMDB folder, image folder or .zip (see prepare-data)")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated subset of {', '.join(list_metrics())}, or all")
    p.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    p.add_argument("--num-images", type=positive_int, default=None,
                   help="use the first N dataset images (default: all)")
    p.add_argument("--fid-data", default=None,
                   help="reference images for FID / FID_lerp statistics (default: --data; the "
                        "paper uses the training set)")
    p.add_argument("--fid-samples", type=positive_int, default=None,
                   help="generated images for FID (default: as many as reference images, at most 50000)")
    p.add_argument("--lerp-samples", type=positive_int, default=None,
                   help="interpolated images for FID_lerp (default: as for --fid-samples)")
    p.add_argument("--edit-triples", default=None, help="local-editing triples (JSONL or folder)")
    p.add_argument("--edit-space", choices=["wplus", "w"], default="wplus",
                   help="blend stylemaps in W+ (every layer, default) or W")
    p.add_argument("--mask-mode", choices=["area", "max"], default="area",
                   help="mask downsampling to stylemap size (default: area)")
    p.add_argument("--lpips", choices=["vgg", "alex"], default="vgg",
                   help="LPIPS backbone for reconstruction (default: vgg, as the paper)")
    p.add_argument("--truncation", type=float_in(0.0, 2.0), default=1.0,
                   help="truncation for FID samples (default: 1 = none)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of samples, pairs and splits (default: 0)")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=16,
                   help="images per forward pass, 1..1024 (default: 16)")
    p.add_argument("--runtime-repeats", type=int_in(1, 1000), default=10,
                   help="timed repeats for runtime, 1..1000 (median reported)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached FID statistics")
    add_device(p)
    add_overwrite(p)
    p.set_defaults(func=writes_folder(run))


# --------------------------------------------------------------------------- the report
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_report(result: dict[str, Any]) -> str:
    m = result["metrics"]
    rec, fid, lerp = m.get("reconstruction", {}), m.get("fid", {}), m.get("fid_lerp", {})
    le, det, rt = m.get("local_editing", {}), m.get("detectability", {}), m.get("runtime", {})
    stylemap = result["model"]["stylemap"]
    lines = [f"# Evaluation of `{result['model']['name']}` on `{result['data']['name']}`", ""]
    lines += ["## Reconstruction and generation (layout of the paper's Table 2)", "",
              "| stylemap | runtime (s) | MSE | LPIPS | FID |", "|---|---|---|---|---|",
              f"| {stylemap} | {_fmt(rt.get('seconds'))} | {_fmt(rec.get('mse'))} | "
              f"{_fmt(rec.get('lpips'))} | {_fmt(fid.get('fid'), 2)} |", ""]
    lines += ["## Projection (layout of the paper's Table 3)", "",
              "| method | runtime (s) | MSE | LPIPS | FID_lerp |", "|---|---|---|---|---|",
              f"| StyleMapGAN {stylemap} (encoder) | {_fmt(rt.get('seconds'))} | "
              f"{_fmt(rec.get('mse'))} | {_fmt(rec.get('lpips'))} | {_fmt(lerp.get('fid_lerp'), 2)} |", ""]
    if le or det:
        lines += ["## Local editing (layout of the paper's Table 4)", "",
                  "| MSE_src | MSE_ref | detectability AP (%, proxy) | runtime (s) |",
                  "|---|---|---|---|",
                  f"| {_fmt(le.get('mse_src'))} | {_fmt(le.get('mse_ref'))} | "
                  f"{_fmt(det.get('ap'), 2)} | {_fmt(rt.get('edit_seconds'))} |", ""]
        if len(le.get("per_part", {})) > 1:
            lines += ["Per part:", "", "| part | triples | MSE_src | MSE_ref |", "|---|---|---|---|"]
            for part, v in le["per_part"].items():
                lines.append(f"| {part} | {v['count']} | {_fmt(v['mse_src'])} | {_fmt(v['mse_ref'])} |")
            lines += ["", f"Mean over parts: MSE_src {_fmt(le.get('mse_src_mean_over_parts'))}, "
                          f"MSE_ref {_fmt(le.get('mse_ref_mean_over_parts'))}.", ""]
    lines += ["## Details", ""]
    if rec:
        lines.append(f"- Reconstruction: {rec['count']} images; LPIPS backbone "
                     f"{result['settings']['lpips']}.")
        if "drift" in rec:
            signed = ", ".join(f"{v:+.3f}" for v in rec["signed_rgb"])
            lines.append(f"- Colour drift (mean absolute per-image, per-channel error): "
                         f"{_fmt(rec['drift'])}; mean signed error R, G, B: {signed}.")
    if fid:
        lines.append(f"- FID: {fid['num_samples']} generated (truncation {fid['truncation']}) vs "
                     f"{fid['num_real']} reference images.")
    if lerp:
        lines.append(f"- FID_lerp: {lerp['num_samples']} interpolations of {lerp['num_projected']} "
                     f"projected images vs {lerp['num_real']} reference images.")
    if le:
        lines.append(f"- Local editing: {le['count']} triples, blended in "
                     f"{'W+' if le['space'] == 'wplus' else 'W'} (mask mode {le['mask_mode']}); "
                     "MSE_src = mean squared error outside the mask vs the source, MSE_ref = "
                     "inside the mask vs the reference, each normalized by its region's area.")
    if det:
        lines.append(f"- Detectability: {det['num_real']} real vs {det['num_edited']} edited; "
                     f"{det['method']}; chance level {det['chance']:.1f}%.")
    if rt:
        lines.append(f"- Runtime: median of {rt['repeats']} runs, batch 1, on {rt['device']}.")
    for name, sha in result["weights"].items():
        lines.append(f"- Weights `{name}`: sha256 {sha}.")
    lines.append(f"- Model sha256 {result['model']['sha256']}; data {result['data']['path']} "
                 f"({result['data']['num_images']} images at {result['data']['resolution']} px).")
    for note in result.get("notes", []):
        lines.append(f"- Note: {note}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- run
def _parse_metrics(text: str | None, have_triples: bool) -> list[str]:
    """The metrics to compute, in the registry's order: ``text`` (comma-separated, or "all"),
    by default every metric that does not need edit triples, and those too with triples."""
    from stylemapgan.errors import InputError

    edit = [n for n in list_metrics() if "edit_triples" in default_registry.get(n).needs]
    if text is None:
        return [n for n in list_metrics() if have_triples or n not in edit]
    if text.strip().lower() == "all":
        chosen = list(list_metrics())
    else:
        chosen = default_registry.parse(text, what="--metrics", also="all")
    if not have_triples and any(t in edit for t in chosen):
        raise InputError(f"{' and '.join(edit)} need --edit-triples (a JSONL file or a "
                         "folder with src/, ref/ and mask/)")
    return chosen


@contextlib.contextmanager
def _bar(total: int, description: str) -> Iterator[Any]:
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="img", leave=False) as bar:
        yield bar.update


def _header(args: argparse.Namespace, config: Any, num_images: int, chosen: list[str],
            device: Any, networks: dict[str, Any]) -> dict[str, Any]:
    """metrics.json before the metrics: the model, the data, the settings, the weights."""
    import datetime as dt

    from stylemapgan import __version__
    from stylemapgan.formats.checkpoint import sha256_file

    return {
        "model": {"name": Path(args.model).name, "path": str(Path(args.model).resolve()),
                  "sha256": sha256_file(args.model), "config": config.to_dict(),
                  "stylemap": "x".join(str(v) for v in config.stylemap_shape)},
        "data": {"name": Path(args.data).name, "path": str(Path(args.data).resolve()),
                 "num_images": num_images, "resolution": config.size},
        "settings": {"metrics": chosen, "lpips": args.lpips, "seed": args.seed,
                     "truncation": args.truncation, "edit_space": args.edit_space,
                     "mask_mode": args.mask_mode, "batch_size": args.batch_size,
                     "device": str(device)},
        "weights": {k: v.weights_sha256 for k, v in networks.items() if v is not None},
        "metrics": {}, "notes": [],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "stylemapgan_version": __version__,
    }


def _write(result: dict[str, Any], out: Path, overwrite: bool) -> None:
    """metrics.json (a NaN or infinite metric as null, with a note: the file stays valid
    JSON and the other results are kept) and metrics.md; prints the tables."""
    from stylemapgan.formats.checkpoint import atomic_write

    not_finite: list[str] = []
    result = finite_or_none(result, found=not_finite)
    if not_finite:
        result["notes"].append(f"not finite, written as null: {', '.join(not_finite)}")
    report = markdown_report(result)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "metrics.json", overwrite=overwrite) as tmp:
        tmp.write_text(dump_json(result, str(out / "metrics.json"), default=str))
    with atomic_write(out / "metrics.md", overwrite=overwrite) as tmp:
        tmp.write_text(report)
    print(report)
    print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")


def _open_data(args: argparse.Namespace, size: int) -> tuple[Any, Any]:
    """The evaluation images (the first --num-images) and the FID reference images."""
    import torch

    from stylemapgan.data.datasets import open_dataset
    from stylemapgan.errors import InputError

    dataset = open_dataset(args.data, size)
    if args.num_images is not None and args.num_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(args.num_images))
    if len(dataset) < 1:
        raise InputError(f"{args.data}: no images")
    return dataset, dataset if args.fid_data is None else open_dataset(args.fid_data, size)


def run(args: argparse.Namespace) -> int:
    args.model = resolve_model(args.model)
    import torch

    from stylemapgan.formats.checkpoint import load_model, read_model_metadata
    from stylemapgan.formats.weights import home_dir, load_inception, load_lpips
    from stylemapgan.imaging.images import check_writable
    from stylemapgan.metrics import MetricContext, calc_metric
    from stylemapgan.utils import resolve_device

    chosen = _parse_metrics(args.metrics, args.edit_triples is not None)
    out = Path(args.out)
    check_writable([out / "metrics.json", out / "metrics.md"], args.overwrite,
                   inputs=[f for f in (args.data, args.fid_data, args.edit_triples,
                                       getattr(args, "model", None)) if f and Path(f).is_file()])
    device = resolve_device(args.device)
    config = read_model_metadata(args.model)["config"]
    size = config.size

    # Everything that can fail fast does so before the long work: data, triples, weights.
    dataset, fid_set = _open_data(args, size)
    triples = read_triples(args.edit_triples) if args.edit_triples else []
    check_triples(triples)
    if triples:
        load_triple(triples[0], size)  # fail early on unreadable files
    needs = set().union(*(default_registry.get(n).needs for n in chosen))
    lpips = load_lpips(args.lpips, device=device) if "lpips" in needs else None
    inception = load_inception(device=device) if "inception" in needs else None
    model = load_model(args.model, device=device)

    def batches(ds):
        return lambda: iter(torch.utils.data.DataLoader(ds, batch_size=args.batch_size))

    ctx = MetricContext(
        model, batches(dataset), len(dataset), device=device, lpips=lpips, inception=inception,
        fid_images=batches(fid_set), num_fid_images=len(fid_set),
        edit_batches=edit_batches(triples, size, args.batch_size) if triples else None,
        num_edits=len(triples), planned=tuple(chosen), seed=args.seed,
        batch_size=args.batch_size, truncation=args.truncation, fid_samples=args.fid_samples,
        lerp_samples=args.lerp_samples, edit_space=args.edit_space, mask_mode=args.mask_mode,
        runtime_repeats=args.runtime_repeats,
        stats_cache=None if args.no_cache else home_dir() / "fid-stats", progress=_bar)
    result = _header(args, config, len(dataset), chosen, device,
                     {f"lpips-{args.lpips}": lpips, "inception": inception})
    for name in chosen:
        computed = calc_metric(name, ctx)
        result["metrics"][name] = computed.results
        result["notes"] += computed.notes
    if "fid_reference" in ctx.shared:
        real, info = ctx.shared["fid_reference"]
        result["data"]["fid_reference"] = {"path": str(Path(args.fid_data or args.data).resolve()),
                                           "num_images": real.count, **info}
    _write(result, out, args.overwrite)
    return 0
