"""``stylemapgan evaluate``: the paper's metrics (Tables 2-4) for a model on a dataset."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
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

ALL_METRICS = ("reconstruction", "fid", "fid_lerp", "local_editing", "detectability", "runtime")
DEFAULT_METRICS = ("reconstruction", "fid", "fid_lerp", "runtime")
EDIT_METRICS = ("local_editing", "detectability")


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
                   help=f"comma-separated subset of {', '.join(ALL_METRICS)}, or all")
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


# --------------------------------------------------------------------------- edit triples
@dataclass(frozen=True)
class Triple:
    src: Path
    ref: Path
    mask: Path
    part: str


def _stems(folder: Path) -> dict[str, Path]:
    from stylemapgan.data.datasets import is_image_name

    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and is_image_name(f.name):
            out.setdefault(f.stem, f)
    return out


def _triples_from_dir(folder: Path, part: str) -> list[Triple]:
    from stylemapgan.errors import InputError

    src, ref, mask = (_stems(folder / d) for d in ("src", "ref", "mask"))
    names = sorted(set(src) & set(ref) & set(mask))
    unmatched = sorted((set(src) | set(ref) | set(mask)) - set(names))
    if unmatched:
        raise InputError(f"{folder}: {len(unmatched)} file name(s) are not in all of src/, ref/ "
                         f"and mask/ (e.g. {unmatched[0]!r}); every triple needs all three")
    return [Triple(src[n], ref[n], mask[n], part) for n in names]


def read_triples(path: str | os.PathLike[str]) -> list[Triple]:
    """Edit triples from a JSONL file or a src/ref/mask folder (or a folder of part folders)."""
    from stylemapgan.errors import InputError

    p = Path(path)
    if p.is_file():
        triples = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                paths = [p.parent / str(rec[k]) for k in ("src", "ref", "mask")]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{p}, line {i}: expected a JSON object with src, ref and mask "
                                 "paths (and optionally part)") from None
            for f in paths:
                if not f.is_file():
                    raise InputError(f"{p}, line {i}: {f} not found")
            triples.append(Triple(*paths, str(rec.get("part", "all"))))
    elif p.is_dir():
        if all((p / d).is_dir() for d in ("src", "ref", "mask")):
            triples = _triples_from_dir(p, "all")
        else:
            parts = [d for d in sorted(p.iterdir())
                     if d.is_dir() and all((d / s).is_dir() for s in ("src", "ref", "mask"))]
            if not parts:
                raise InputError(f"{p}: expected src/, ref/ and mask/ subfolders (or one folder "
                                 "per part holding them), or a JSONL file")
            triples = [t for d in parts for t in _triples_from_dir(d, d.name)]
    else:
        raise InputError(f"--edit-triples {p}: not found")
    if not triples:
        raise InputError(f"--edit-triples {p}: no triples")
    return triples


def check_triples(triples: list[Triple]) -> None:
    """Header-only checks of every triple (readable images, mask size = source size), so bad
    files stop the run before the long work starts."""
    from PIL import Image

    from stylemapgan.data.datasets import check_image_header
    from stylemapgan.errors import InputError

    for t in triples:
        for f in (t.src, t.ref, t.mask):
            problem = check_image_header(f, str(f))
            if problem:
                raise InputError(f"{f}: {problem}")
        with Image.open(t.src) as a, Image.open(t.mask) as b:
            if a.size != b.size:
                raise InputError(f"{t.mask}: mask is {b.size[0]}x{b.size[1]} but the source "
                                 f"{t.src.name} is {a.size[0]}x{a.size[1]}; they must match")


def load_triple(t: Triple, size: int):
    """(src [3,R,R], ref [3,R,R], mask [1,R,R] in {0, 1}) at the model's resolution.

    The photos are placed as the editor places them (center crop); the mask is read like an
    edit's mask image, brought to the square with the source's placement by the same soft
    resampler, then made hard with :func:`stylemapgan.imaging.masks.binarize` (the metric
    needs a clear inside and outside)."""
    import torch

    from stylemapgan.errors import InputError
    from stylemapgan.imaging.images import from_uint8, load_gray, load_rgb
    from stylemapgan.imaging.masks import binarize
    from stylemapgan.imaging.placement import fit_gray, fit_rgb, place

    src_img, ref_img = load_rgb(t.src), load_rgb(t.ref)
    mask_arr = load_gray(t.mask)
    if mask_arr.shape[::-1] != src_img.size:
        raise InputError(f"{t.mask}: mask is {mask_arr.shape[1]}x{mask_arr.shape[0]} but the source "
                         f"{t.src.name} is {src_img.size[0]}x{src_img.size[1]}; they must match")
    pl = place(src_img.size, size)
    src = from_uint8(fit_rgb(src_img, pl))[0]
    ref = from_uint8(fit_rgb(ref_img, place(ref_img.size, size)))[0]
    m = torch.from_numpy(binarize(fit_gray(mask_arr, pl)))[None]
    return src, ref, m


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
    from stylemapgan.errors import InputError

    if text is None:
        chosen = list(DEFAULT_METRICS) + (list(EDIT_METRICS) if have_triples else [])
    elif text.strip().lower() == "all":
        chosen = list(ALL_METRICS)
    else:
        chosen = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
        bad = [t for t in chosen if t not in ALL_METRICS]
        if bad or not chosen:
            raise InputError(f"--metrics {text!r}: choose from {', '.join(ALL_METRICS)} or all")
    if not have_triples and any(t in EDIT_METRICS for t in chosen):
        raise InputError("local_editing and detectability need --edit-triples (a JSONL file or a "
                         "folder with src/, ref/ and mask/)")
    return [t for t in ALL_METRICS if t in chosen]


def run(args: argparse.Namespace) -> int:
    args.model = resolve_model(args.model)
    import datetime as dt

    import torch
    from tqdm import tqdm

    from stylemapgan import __version__
    from stylemapgan.data.datasets import open_dataset
    from stylemapgan.errors import InputError
    from stylemapgan.formats.checkpoint import (
        atomic_write,
        load_model,
        read_model_metadata,
        sha256_file,
    )
    from stylemapgan.formats.weights import home_dir, load_inception, load_lpips
    from stylemapgan.imaging.images import check_writable
    from stylemapgan.metrics import scores as metrics
    from stylemapgan.utils import resolve_device

    chosen = _parse_metrics(args.metrics, args.edit_triples is not None)
    out = Path(args.out)
    targets = [out / "metrics.json", out / "metrics.md"]
    check_writable(targets, args.overwrite,
                   inputs=[f for f in (args.data, args.fid_data, args.edit_triples,
                                       getattr(args, "model", None)) if f and Path(f).is_file()])
    device = resolve_device(args.device)
    config = read_model_metadata(args.model)["config"]
    size = config.size

    # Everything that can fail fast does so before the long work: data, triples, weights.
    dataset = open_dataset(args.data, size)
    if args.num_images is not None and args.num_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(args.num_images))
    n_data = len(dataset)
    if n_data < 1:
        raise InputError(f"{args.data}: no images")
    fid_set = dataset if args.fid_data is None else open_dataset(args.fid_data, size)
    triples = read_triples(args.edit_triples) if args.edit_triples else []
    check_triples(triples)
    needs_fid = any(t in chosen for t in ("fid", "fid_lerp", "detectability"))
    lpips = load_lpips(args.lpips, device=device) if "reconstruction" in chosen else None
    inception = load_inception(device=device) if needs_fid else None
    model = load_model(args.model, device=device)

    def batches(ds):
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False)
        return iter(loader)

    result: dict[str, Any] = {
        "model": {"name": Path(args.model).name, "path": str(Path(args.model).resolve()),
                  "sha256": sha256_file(args.model), "config": config.to_dict(),
                  "stylemap": "x".join(str(v) for v in config.stylemap_shape)},
        "data": {"name": Path(args.data).name, "path": str(Path(args.data).resolve()),
                 "num_images": n_data, "resolution": size},
        "settings": {"metrics": chosen, "lpips": args.lpips, "seed": args.seed,
                     "truncation": args.truncation, "edit_space": args.edit_space,
                     "mask_mode": args.mask_mode, "batch_size": args.batch_size,
                     "device": str(device)},
        "weights": {}, "metrics": {}, "notes": [],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "stylemapgan_version": __version__,
    }
    if lpips is not None:
        result["weights"][f"lpips-{args.lpips}"] = lpips.weights_sha256
    if inception is not None:
        result["weights"]["inception"] = inception.weights_sha256

    def bar(total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="img", leave=False)

    if "reconstruction" in chosen:
        with bar(n_data, "reconstruction") as b:
            result["metrics"]["reconstruction"] = metrics.reconstruction(
                model, batches(dataset), lpips, device, progress=b.update)

    real = None
    if "fid" in chosen or "fid_lerp" in chosen:
        cache = None if args.no_cache else home_dir() / "fid-stats"
        with bar(len(fid_set), "FID reference statistics") as b:
            real, info = metrics.dataset_stats(lambda: batches(fid_set), inception, device=device,
                                               cache_dir=cache, progress=b.update)
        result["data"]["fid_reference"] = {"path": str(Path(args.fid_data or args.data).resolve()),
                                           "num_images": real.count, **info}
    n_fid = args.fid_samples or min(real.count if real is not None else n_data, 50_000)
    if "fid" in chosen:
        with bar(n_fid, "FID samples") as b:
            r = metrics.fid_generation(model, inception, real, n_fid, batch_size=args.batch_size,
                                       seed=args.seed, truncation=args.truncation, device=device,
                                       progress=b.update)
        result["metrics"]["fid"] = r
    if "fid_lerp" in chosen:
        if n_data < 2:
            raise InputError("FID_lerp needs at least 2 dataset images")
        n_lerp = args.lerp_samples or n_fid
        with bar(n_lerp, "FID_lerp samples") as b:
            result["metrics"]["fid_lerp"] = metrics.fid_lerp(
                model, batches(dataset), inception, real, n_lerp, batch_size=args.batch_size,
                seed=args.seed, device=device, progress=b.update)

    if triples:
        first = load_triple(triples[0], size)  # fail early on unreadable files

        def edit_batches():  # read lazily, one batch at a time
            for i in range(0, len(triples), args.batch_size):
                group = triples[i: i + args.batch_size]
                chunk = [load_triple(t, size) for t in group]
                yield metrics.EditBatch(torch.stack([c[0] for c in chunk]),
                                        torch.stack([c[1] for c in chunk]),
                                        torch.stack([c[2] for c in chunk]),
                                        [t.part for t in group])

        if "local_editing" in chosen or "detectability" in chosen:
            with bar(len(triples), "local editing") as b:
                le = metrics.local_editing(
                    model, edit_batches(), space=args.edit_space, mask_mode=args.mask_mode,
                    device=device, extractor=inception if "detectability" in chosen else None,
                    progress=b.update)
            real_f, edit_f = le.pop("_real_features", None), le.pop("_edited_features", None)
            if "local_editing" in chosen:
                result["metrics"]["local_editing"] = le
            if "detectability" in chosen:
                result["metrics"]["detectability"] = metrics.detectability(real_f, edit_f, seed=args.seed)

    if "runtime" in chosen:
        x = dataset[0][None]
        extra = {}
        if triples:
            s, r, m = first
            x, extra = s[None], {"reference": r[None], "mask": m[None], "space": args.edit_space}
        result["metrics"]["runtime"] = metrics.runtime(model, x, repeats=args.runtime_repeats,
                                                       device=device, **extra)

    for key in ("fid", "fid_lerp"):
        note = result["metrics"].get(key, {}).get("note")
        if note:
            result["notes"].append(f"{key}: {note}")
    if "detectability" in result["metrics"]:
        result["notes"].append("detectability is a proxy (logistic regression on Inception "
                               "features), not the paper's CNNDetection classifier")

    # A metric that came out NaN or infinite (e.g. FID of a diverged model) is written as
    # null with a note: metrics.json stays valid JSON and the other results are kept.
    not_finite: list[str] = []
    result = finite_or_none(result, found=not_finite)
    if not_finite:
        result["notes"].append(f"not finite, written as null: {', '.join(not_finite)}")
    report = markdown_report(result)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "metrics.json", overwrite=args.overwrite) as tmp:
        tmp.write_text(dump_json(result, str(out / "metrics.json"), default=str))
    with atomic_write(out / "metrics.md", overwrite=args.overwrite) as tmp:
        tmp.write_text(report)
    print(report)
    print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    return 0
