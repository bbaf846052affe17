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
    dump_json,
    fast_runtime,
    finite_or_none,
    int_in,
    nonneg_float,
    positive_float,
    resolve_model,
    writes_folder,
)
from stylemapgan.commands._editio import add_fit, align_choice, load_photo

#: A photo whose reconstruction MSE is this many times the model's usual one gets a warning.
OUTSIDE_FACTOR = 3.0
#: What project.json's MSEs measure: the reconstruction as the PNG shows it (clamped to the
#: image range, as `demo` and `evaluate` measure it), before rounding to 8 bits.
MSE_DEFINITION = ("mean squared error between G(w) clamped to [-1, 1] (the NAME.png image, "
                  "before 8-bit rounding) and the input square, pixels in [-1, 1]")


def _mse(recon, x) -> list[float]:
    """Per-image MSE of reconstructions against their inputs (:data:`MSE_DEFINITION`)."""
    return (recon.clamp(-1, 1) - x).square().flatten(1).mean(1).tolist()


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


#: Longest output name stem in bytes: NAME.stylemap.safetensors and its temporary file
#: (.NAME.stylemap.safetensors.XXXXXXXX.tmp) must fit the file system's 255 bytes.
MAX_STEM_BYTES = 200


def _fit_name(name: str) -> str:
    """A stem of at most MAX_STEM_BYTES: a longer one is cut and given 8 hex digits of its
    SHA-256, so two long names that share a beginning stay apart."""
    import hashlib

    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_STEM_BYTES:
        return name
    cut = raw[: MAX_STEM_BYTES - 9].decode("utf-8", "ignore")
    return f"{cut}_{hashlib.sha256(raw).hexdigest()[:8]}"


def _names(paths) -> list[str]:
    """Output names: the file stem (cut when too long for the file system), disambiguated by
    suffix and then by a counter."""
    from collections import Counter

    stems = Counter(p.stem for p in paths)
    names = [_fit_name(p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}")
             for p in paths]
    seen: Counter[str] = Counter()
    out = []
    counts = Counter(names)
    for n in names:
        if counts[n] > 1:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        out.append(n)
    return out


def run(args: argparse.Namespace) -> int:
    args.model = resolve_model(args.model)
    import datetime as _dt
    import logging
    from pathlib import Path

    import numpy as np
    import torch
    from tqdm import tqdm

    from stylemapgan import __version__
    from stylemapgan.editing.editor import Editor
    from stylemapgan.errors import InputError, ModelFileError
    from stylemapgan.files import atomic_write, sha256_file
    from stylemapgan.formats.checkpoint import read_model_metadata
    from stylemapgan.formats.stylemaps import SUFFIX, save_stylemap
    from stylemapgan.imaging.images import (
        check_writable,
        from_uint8,
        list_images,
        save_png,
        to_uint8,
    )
    from stylemapgan.imaging.placement import load_image, parse_box
    from stylemapgan.utils import resolve_device

    log = logging.getLogger(__name__)
    if args.refine and args.mse_weight + args.lpips_weight == 0:
        raise InputError("--mse-weight and --lpips-weight are both 0: nothing to optimize")
    box = parse_box(args.box) if args.box else None
    paths = list_images(args.images, recursive=args.recursive)
    names = _names(paths)
    out = Path(args.out)

    # Read every image before anything is written: a bad file stops the run with nothing
    # written (or, with --skip-bad, is left out), never halfway through.
    size = read_model_metadata(args.model)["config"].size
    align = align_choice(args)
    aligner = None
    if align is not None:
        from stylemapgan.imaging.faces import FaceAligner

        aligner = FaceAligner()
    aligned: dict[Path, tuple] = {}  # with --align: the faces found while checking, kept
    bad: list[tuple[Path, InputError]] = []
    for path in tqdm(paths, unit="img", desc="check", leave=False, disable=len(paths) < 16):
        try:
            found = load_photo(path, size, fit=args.fit, box=box, align=align, aligner=aligner,
                               no_face="leave out --align and give the face's region with "
                                       "--box X0,Y0,X1,Y1")
            if align is not None:
                aligned[path] = found[:2]
        except InputError as exc:
            bad.append((path, exc))
    skipped = []
    if bad:
        if not args.skip_bad:
            path, exc = bad[0]
            more = f" ({len(bad) - 1} more unreadable file(s))" if len(bad) > 1 else ""
            raise InputError(f"{exc}{more}; nothing was written: fix or remove the file, or "
                             "pass --skip-bad to project the others")
        for path, exc in bad:
            log.warning("skipped: %s", exc)
            skipped.append({"path": str(path), "error": str(exc)})
        bad_paths = {p for p, _ in bad}
        kept = [(p, n) for p, n in zip(paths, names, strict=True) if p not in bad_paths]
        if not kept:
            raise InputError(f"no image could be read ({len(skipped)} skipped; the first: "
                             f"{skipped[0]['error']})")
        paths, names = [p for p, _ in kept], [n for _, n in kept]
    targets = [out / "project.json"]
    for n in names:
        targets.append(out / f"{n}{SUFFIX}")
        if not args.no_reconstruction:
            targets.append(out / f"{n}.png")
        if args.save_input:
            targets.append(out / f"{n}.input.png")
        if args.error_map:
            targets.append(out / f"{n}.error.png")
    check_writable(targets, args.overwrite, inputs=[*paths, *(p for p, _ in bad), args.model])

    device = resolve_device(args.device)
    editor = Editor.load(args.model, device, batch_size=args.batch_size,
                         runtime=fast_runtime(args.fast, device))
    model_sha = sha256_file(args.model)
    lpips = None
    if args.refine and args.lpips_weight > 0:
        from stylemapgan.errors import StyleMapGANError
        from stylemapgan.formats.weights import load_lpips  # only refinement with LPIPS needs it

        try:
            lpips = load_lpips(args.lpips_net, device=device)
        except StyleMapGANError as exc:
            raise type(exc)(f"{exc}; or refine with MSE only: --lpips-weight 0") from None

    entries = []
    # The model's usual reconstruction error (its file records it when known, e.g. from
    # evaluate on a test split): photos far above it are outside what the model knows.
    recon_info = read_model_metadata(args.model)["provenance"].get("reconstruction") or {}
    typical = recon_info.get("mse") if isinstance(recon_info, dict) else None
    typical = float(typical) if isinstance(typical, (int, float)) and typical > 0 else None
    outside: list[tuple[Path, float]] = []
    with tqdm(total=len(paths), unit="img", desc="project") as bar:
        for start in range(0, len(paths), args.batch_size):
            chunk = []
            for path, name in zip(paths[start: start + args.batch_size],
                                  names[start: start + args.batch_size], strict=True):
                try:
                    if path in aligned:
                        pixels, placement = aligned[path]
                    else:
                        pixels, placement, _ = load_image(path, size, fit=args.fit, box=box)
                except InputError as exc:
                    if not args.skip_bad:
                        raise
                    log.warning("skipped: %s", exc)
                    skipped.append({"path": str(path), "error": str(exc)})
                    bar.update(1)
                    continue
                chunk.append((path, name, pixels, placement))
            if not chunk:
                continue
            x = from_uint8(np.stack([c[2] for c in chunk])).to(device)
            w = editor.project(x, keys=[("path", str(c[0]), start + i) for i, c in enumerate(chunk)])
            refine_info = encoder_mse = None
            if args.refine:
                bar.set_postfix_str("refining")
                encoder_mse = _mse(editor.render(w), x)
                res = editor.refine(x, w, steps=args.refine, lr=args.lr, mse_weight=args.mse_weight,
                                    lpips_weight=args.lpips_weight, lpips=lpips)
                w, refine_info = res.w, res
            recon = editor.render(w)
            if not (torch.isfinite(w).all() and torch.isfinite(recon).all()):
                done = f" ({len(entries)} image(s) before it were written)" if entries else \
                    "; nothing was written"
                raise ModelFileError(f"{args.model}: the model's output for {chunk[0][0]} is not "
                                     f"finite (NaN or infinity){done}; its weights are damaged: "
                                     "use another model file")
            mse = _mse(recon, x)
            recon_u8 = to_uint8(recon)
            for i, (path, name, pixels, placement) in enumerate(chunk):
                projection = {"method": "encoder" if not args.refine else "encoder+refine",
                              "runtime": editor.runtime.describe(), "mse": mse[i]}
                if refine_info is not None:
                    projection.update(steps=args.refine, lr=args.lr, mse_weight=args.mse_weight,
                                      lpips_weight=args.lpips_weight,
                                      lpips_net=args.lpips_net if args.lpips_weight > 0 else None,
                                      encoder_mse=encoder_mse[i],
                                      initial_loss=refine_info.initial_loss[i],
                                      final_loss=refine_info.final_loss[i])
                digest = sha256_file(path)
                save_stylemap(out / f"{name}{SUFFIX}", w[i: i + 1], config=editor.config,
                              model_sha256=model_sha, source=str(path), source_sha256=digest,
                              placement=placement, projection=projection, overwrite=args.overwrite)
                if not args.no_reconstruction:
                    save_png(recon_u8[i], out / f"{name}.png", overwrite=args.overwrite)
                if args.save_input:
                    save_png(pixels, out / f"{name}.input.png", overwrite=args.overwrite)
                if args.error_map:
                    err = np.abs(recon_u8[i].astype(np.float32) - pixels.astype(np.float32)).mean(-1)
                    save_png(np.clip(err * 2, 0, 255).astype(np.uint8), out / f"{name}.error.png",
                             overwrite=args.overwrite)
                if typical and mse[i] > OUTSIDE_FACTOR * typical:
                    outside.append((path, mse[i]))
                entries.append({"name": name, "source": str(path), "sha256": digest,
                                "placement": placement.to_dict(), **projection})
            bar.update(len(chunk))
    if not entries:
        raise InputError("no image could be read" + (f" ({len(skipped)} skipped)" if skipped else ""))
    record = {
        "format": "stylemapgan-projection", "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stylemapgan_version": __version__, "torch_version": torch.__version__,
        "device": str(device), "model": {"path": args.model, "sha256": model_sha},
        "parameters": {"fit": args.fit, "box": args.box, "refine": args.refine, "lr": args.lr,
                       "mse_weight": args.mse_weight, "lpips_weight": args.lpips_weight,
                       "lpips_net": args.lpips_net, "fast": args.fast,
                       "runtime": editor.runtime.describe()},
        "mean_mse": float(np.mean([e["mse"] for e in entries])),
        "mse": MSE_DEFINITION,
        "images": entries, "skipped": skipped,
    }
    not_finite: list[str] = []
    record = finite_or_none(record, found=not_finite)
    if not_finite:  # a model that renders NaN: say so, and keep the file valid JSON
        log.warning("project.json: %d value(s) were not finite and are written as null (%s)",
                    len(not_finite), ", ".join(not_finite[:3]))
    with atomic_write(out / "project.json", overwrite=args.overwrite) as tmp:
        tmp.write_text(dump_json(record, str(out / "project.json")))
    for path, value in outside:
        print(f"warning: {path}: reconstruction MSE {value:.3f} is {value / typical:.1f}x this "
              f"model's usual {typical:.3f}: the photo is outside what the model knows; try "
              "--refine N" + ("" if args.align else ", or --align for faces")
              + " (see --error-map for where)")
    extra = f", {len(skipped)} skipped" if skipped else ""
    how = f"encoder + {args.refine} refine steps" if args.refine else "encoder"
    if args.fast:
        how += f", fast path: {editor.runtime.describe()}"
    mean = record["mean_mse"]
    print(f"projected {len(entries)} image(s) ({how}{extra}) to {out}: mean MSE "
          + (f"{mean:.4f}" if isinstance(mean, float) else "not finite"))
    return 0
