"""``stylemapgan edit OPERATION``: every StyleMapGAN edit on your own photos or saved stylemaps.

Operations: reconstruct, mix, interpolate, local, transplant, direction, and replay (run the
edit a record.json describes again). Each writes its images, grid.png (inputs, mask, results)
and record.json into ``--out``.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from stylemapgan.commands._common import (
    abspath,
    add_device,
    add_fast,
    add_model,
    add_overwrite,
    add_parser,
    finite_float,
    int_in,
    model_file,
    resolve_model,
    writes_folder,
)
from stylemapgan.commands._editio import add_fit, add_mask_args, add_output, add_paste_back

#: number of images an edit writes (--steps); every frame is held in memory
steps_int = int_in(1, 1000)

SPACE_HELP = ("where to blend: wplus = every per-layer stylemap at its own resolution (finer "
              "boundaries, default), w = the stylemap w only")


def _common(p: argparse.ArgumentParser, source_box: bool = True, references: bool = False) -> None:
    add_model(p)
    add_output(p)
    add_fit(p, references)
    if source_box:
        p.add_argument("--source-box", metavar="X0,Y0,X1,Y1",
                       help="use only this region of the source photo (photo pixels), e.g. one "
                            "face of a group photo; with --paste-back the edit goes back there")
    add_device(p)
    add_fast(p)
    add_overwrite(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "edit", help="edit photos: reconstruct, mix, interpolate, local, transplant, direction, replay",
        description="""
            Edit your own photos (any size and format; non-square ones are center-cropped,
            see --fit) or stylemaps saved by `stylemapgan project`. Each operation writes its
            result image(s), grid.png (inputs, mask and results side by side) and
            record.json, which lists the inputs with checksums and the exact command; run it
            again with `stylemapgan edit replay record.json --out DIR`.""",
        examples="""
            stylemapgan edit reconstruct photo.jpg --model m.safetensors --out rec
            stylemapgan edit local me.jpg friend.jpg --labels me_labels.png --parts hair --model m.safetensors --out hair
            stylemapgan edit local me.jpg friend.jpg --mask-box 2,4,6,7 --steps 8 --model m.safetensors --out mouth
            stylemapgan edit local me.jpg friend.jpg --mask-box 2,4,6,7 --fast --model m.safetensors --out mouth_fast
            stylemapgan edit mix a.jpg b.jpg --layers coarse --model m.safetensors --out mix
            stylemapgan edit interpolate a.jpg b.stylemap.safetensors --steps 12 --model m.safetensors --out lerp
            stylemapgan edit transplant cat.jpg --ref dog.jpg --region ref=0 box=2,1,5,4 move=1,0 --model m.safetensors --out tp
            stylemapgan edit direction me.jpg --direction smile.safetensors --strength 4 --model m.safetensors --out smile
            stylemapgan edit replay hair/record.json --out hair_again""",
    )
    ops = p.add_subparsers(dest="operation", metavar="OPERATION", required=True)

    q = add_parser(ops, "reconstruct", help="G(E(x)): the projection of a photo",
                   description="Project a photo (or render a saved stylemap) and write the reconstruction.",
                   examples="stylemapgan edit reconstruct photo.jpg --model m.safetensors --out rec --paste-back")
    q.add_argument("source", type=abspath, help="photo or saved stylemap")
    add_paste_back(q)
    _common(q)
    q.set_defaults(func=writes_folder(partial(run_reconstruct, parser=q)))

    q = add_parser(ops, "mix", help="style mixing: some W+ layers from a second image",
                   description="""
                       Style mixing: the W+ stylemaps of A, with the layers selected by --layers
                       taken from B (layer 0 is the coarsest). coarse (default): A's coarse
                       layers (its first two: the layout) with B's finer layers (all the rest);
                       fine: B's first two layers with A's finer ones; colour: A's shapes with
                       B's colours and texture (B's last two layers, at full resolution; on a
                       64 px model coarse is nearly B's own reconstruction, colour visibly
                       mixes). A range a:b or a list 1,2,3 names the layers taken from B.""",
                   examples="""
                       stylemapgan edit mix a.jpg b.jpg --layers coarse --model m.safetensors --out mix
                       stylemapgan edit mix a.jpg b.jpg --layers colour --out mix_colour
                       stylemapgan edit mix a.jpg b.jpg --layers 4:8 --model m.safetensors --out mix48""")
    q.add_argument("source", type=abspath, help="image A (photo or stylemap)")
    q.add_argument("reference", type=abspath, help="image B (photo or stylemap)")
    q.add_argument("--layers", default="coarse",
                   help="coarse (A's first two layers, B's finer ones; default), fine (B's first "
                        "two, A's finer ones), colour (A's shapes with B's colours and texture: "
                        "B's last two layers), or B's layers as a:b or 1,2,3")
    add_paste_back(q)
    _common(q, references=True)
    q.set_defaults(func=writes_folder(partial(run_mix, parser=q)))

    q = add_parser(ops, "interpolate", help="interpolation in W or W+, N steps, grid and GIF",
                   description="""
                       Images along the straight line between two stylemaps, endpoints
                       included: in W (lerp of w) or W+ (lerp of every per-layer stylemap).
                       Writes frame_000.png ..., animation.gif and grid.png.""",
                   examples="""
                       stylemapgan edit interpolate a.jpg b.jpg --steps 10 --model m.safetensors --out lerp
                       stylemapgan edit interpolate a.jpg b.jpg --space wplus --steps 5 --model m.safetensors --out lerp""")
    q.add_argument("source", type=abspath, help="start (photo or stylemap)")
    q.add_argument("reference", type=abspath, help="end (photo or stylemap)")
    q.add_argument("--steps", type=steps_int, default=8, help="number of images, 1..1000 (default: 8)")
    q.add_argument("--space", choices=("w", "wplus"), default="w", help="W (default) or W+")
    _common(q, source_box=False, references=True)
    q.set_defaults(func=writes_folder(partial(run_interpolate, parser=q)))

    q = add_parser(ops, "local", help="local editing: the reference inside a mask",
                   description="""
                       Local editing (Eq. 2 of the paper): the reference's stylemap inside the
                       mask, the source's outside, with the mask shrunk to every stylemap's
                       resolution. Source and reference should be aligned (same framing). The
                       mask is in the source photo's coordinates (or the model's square size);
                       --region mouth takes it from the source's named regions (a face photo's
                       landmarks, an avatar's part masks).
                       --steps N > 1 adds N images from the reconstruction to the full edit.""",
                   examples="""
                       stylemapgan edit local me.jpg you.jpg --labels me_seg.png --parts hair,brows --model m.safetensors --out out
                       stylemapgan edit local me.jpg you.jpg --mask brush.png --space w --model m.safetensors --out out
                       stylemapgan edit local me.jpg you.jpg --align --region mouth --paste-back --model m.safetensors --out mouth
                       stylemapgan edit local me.jpg you.jpg --align --region eyes,brows --region-grow 6 --model m.safetensors --out eyes
                       stylemapgan edit local group.jpg you.jpg --source-box 400,80,656,336 --mask-box 2,4,6,7 --paste-back --model m.safetensors --out out""")
    q.add_argument("source", type=abspath, help="photo or stylemap to edit")
    q.add_argument("reference", type=abspath, help="photo or stylemap to take the masked part from")
    q.add_argument("--space", choices=("w", "wplus"), default="wplus", help=SPACE_HELP)
    q.add_argument("--steps", type=steps_int, default=1,
                   help="images from the reconstruction (0) to the full edit (1), 1..1000 "
                        "(default: 1)")
    add_mask_args(q, required=True, regions=True)
    add_paste_back(q)
    _common(q, references=True)
    q.set_defaults(func=writes_folder(partial(run_local, parser=q)))

    q = add_parser(ops, "transplant", help="unaligned transplantation of regions between images",
                   description="""
                       Copy regions of one or more references to other places of the original
                       (unaligned transplantation). Each --region is a list of KEY=VALUE:
                       ref=I (index into the --ref list, default 0); the region as box=X0,Y0,X1,Y1,
                       mask=IMAGE, or labels=LABEL_MAP with parts=PARTS (in the reference's
                       coordinates); scale=S (0.25..4), angle=DEG (counter-clockwise) and
                       flip=h|v|hv (mirror left-right, top-bottom), all about the centre of the
                       region's bounding box; then move=DX,DY (how far to move it) or to=X,Y
                       (where the top-left corner of the bounding box of the region, as scaled,
                       rotated and mirrored, goes); units=cells|px (default: --units). A scaled,
                       rotated or mirrored region warps every W+ stylemap of the reference (and
                       the mask with it) at its own resolution: bilinear, or nearest with
                       --mask-mode max. Later regions cover earlier ones. --steps N > 1
                       interpolates from the original to the full edit.""",
                   examples="""
                       stylemapgan edit transplant cat.jpg --ref dog.jpg --region box=2,1,5,4 move=1,0 --model m.safetensors --out tp
                       stylemapgan edit transplant me.jpg --ref a.jpg --ref b.jpg --region ref=0 box=1,1,3,3 to=5,1 --region ref=1 mask=b_eyes.png --steps 8 --model m.safetensors --out tp
                       stylemapgan edit transplant me.jpg --ref you.jpg --region mask=mouth.png scale=1.5 angle=20 move=0,1 --model m.safetensors --out big_mouth
                       stylemapgan edit transplant me.jpg --ref you.jpg --region box=1,2,4,6 flip=h to=4,2 --mask-mode max --model m.safetensors --out mirrored""")
    q.add_argument("source", type=abspath, help="the original (photo or stylemap)")
    q.add_argument("--ref", dest="refs", action="append", type=abspath, required=True, metavar="REFERENCE",
                   help="a reference photo or stylemap (repeat for several)")
    q.add_argument("--region", dest="regions", action="append", nargs="+", type=_region_token,
                   required=True, metavar="KEY=VALUE",
                   help="a region to move, scale, turn or mirror, e.g. box=1,2,4,6 scale=1.5 "
                        "angle=20 flip=h move=1,0 (repeat for several)")
    q.add_argument("--units", choices=("cells", "px"), default="cells",
                   help="units of boxes and moves: stylemap cells (default) or model-image pixels")
    q.add_argument("--space", choices=("w", "wplus"), default="wplus", help=SPACE_HELP)
    q.add_argument("--mask-mode", choices=("area", "max"), default="area",
                   help="how each region's mask shrinks to each stylemap: area = fraction of the "
                        "cell covered (default), max = any pixel selects the cell; a scaled, "
                        "rotated or mirrored region is warped bilinearly (area) or to the "
                        "nearest cell (max)")
    q.add_argument("--steps", type=steps_int, default=1, help="interpolation steps, 1..1000 (default: 1)")
    add_paste_back(q)
    _common(q, references=True)
    q.set_defaults(func=writes_folder(partial(run_transplant, parser=q)))

    q = add_parser(ops, "direction", help="semantic manipulation along a learned direction",
                   description="""
                       Move the stylemap along a direction learned by `stylemapgan direction`:
                       w + strength * direction, everywhere or only inside a mask. Positive
                       strengths add the attribute, negative ones remove it; --steps N > 1
                       writes N images with strengths from 0 to --strength.""",
                   examples="""
                       stylemapgan edit direction me.jpg --direction smile.safetensors --strength 5 --model m.safetensors --out smile
                       stylemapgan edit direction me.jpg --direction smile.safetensors --strength -5 --steps 6 --mask-box 2,4,6,7 --model m.safetensors --out less""")
    q.add_argument("source", type=abspath, help="photo or stylemap")
    q.add_argument("--direction", required=True, type=abspath, help="direction file (.safetensors)")
    q.add_argument("--strength", type=finite_float, default=3.0,
                   help="distance to move in stylemap space; the direction has unit norm (default: 3)")
    q.add_argument("--steps", type=steps_int, default=1,
                   help="images from strength 0 to --strength, 1..1000 (default: 1)")
    add_mask_args(q, required=False)
    add_paste_back(q)
    _common(q)
    q.set_defaults(func=writes_folder(partial(run_direction, parser=q)))

    q = add_parser(ops, "replay", help="run the edit a record.json describes again",
                   description="""
                       Check that the model and every input still have the checksums the record
                       lists, run the edit again into --out, and compare the new outputs with
                       the recorded checksums. A record.json of a command runs that command
                       again; a record downloaded from the web editor carries its images and
                       masks and is replayed with the model it names (or --model).""",
                   examples="""
                       stylemapgan edit replay out/record.json --out again
                       stylemapgan edit replay ~/Downloads/stylemapgan-edit.json --model m.safetensors --out web_again""")
    q.add_argument("record", type=abspath,
                   help="record.json written by an edit, or a record downloaded from the web editor")
    q.add_argument("--out", required=True, help="output folder for the new run")
    q.add_argument("--model", type=model_file, default=None,
                   help="model file for a web editor record (default: the path it recorded, or "
                        "the embedded default model if its checksum matches)")
    q.add_argument("--device", default=None, help="device to run on (default: cpu for a record "
                                                  "made on the CPU, else auto)")
    q.add_argument("--force", action="store_true", help="run even if an input's checksum changed")
    q.add_argument("--strict", action="store_true",
                   help="exit with status 1 if an output differs from the recorded one")
    add_overwrite(q)
    q.set_defaults(func=writes_folder(run_replay))


# --------------------------------------------------------------------------- helpers
def _region_token(text: str) -> str:
    """Region tokens that name files are made absolute (records replay from anywhere)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"region item {text!r} is not KEY=VALUE")
    key = key.strip().lower()
    if key in ("mask", "labels"):
        value = abspath(value)
    return f"{key}={value}"


def _source_box(args: argparse.Namespace):
    from stylemapgan.imaging.placement import parse_box

    box = getattr(args, "source_box", None)
    return parse_box(box, "--source-box") if box else None


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"func", "model", "out", "overwrite", "device", "command", "operation", "verbose"}
    return {k: v for k, v in vars(args).items()
            if not k.startswith("_") and k not in skip and isinstance(v, (str, int, float, bool, list, type(None)))}


def _finish(args, parser, ses, operation, out, frames, tiles, inputs, *, paste=None,
            extra_files=(), extra_parameters=None):
    """Write frames, grid, optional paste-back and the record; print a summary."""
    from stylemapgan.commands._editio import canonical_argv

    parameters = {**_parameters(args), **(extra_parameters or {})}
    written = ses.write(out, operation=operation, argv=[operation, *canonical_argv(parser, args)],
                        frames=frames, tiles=tiles, inputs=inputs, parameters=parameters,
                        paste=paste, extra_files=extra_files, overwrite=args.overwrite,
                        gif_ms=args.gif_ms)
    files = written[:-1]  # record.json is named last
    names = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
    print(f"{operation}: wrote {len(written)} file(s) to {out} ({names}, record.json)")
    return 0


def _paste(args, ses, src, frame, mask=None):
    """pasted.png's pixels with --paste-back, else None."""
    if not args.paste_back:
        return None
    return ses.paste(src, frame, mask, space=getattr(args, "space", None) or "w",  # direction: w
                     mask_mode=getattr(args, "mask_mode", "area"), area=args.paste_area,
                     mode=args.paste_mode, feather=args.feather)


def _check_paste_source(args, path: str) -> None:
    from stylemapgan.errors import InputError
    from stylemapgan.formats.stylemaps import is_stylemap_file

    if getattr(args, "paste_back", False) and is_stylemap_file(path):
        raise InputError(f"--paste-back needs the source photo, but {path} is a saved stylemap; "
                         "give the photo instead")


def _input_files(args) -> list[str]:
    """Every option value that names an existing file (photos, stylemaps, masks, label maps,
    directions, the model; also inside transplant regions): outputs must never replace one."""
    import os

    found: list[str] = []
    for key, value in vars(args).items():
        if key.startswith("_") or key == "out":
            continue
        for v in value if isinstance(value, list) else [value]:
            for word in v if isinstance(v, list) else [v]:
                if not isinstance(word, str):
                    continue
                # A transplant region's mask=FILE or labels=FILE names a file after the "=".
                for name in (word, word.partition("=")[2]):
                    if name and os.path.isfile(name):
                        found.append(name)
    return found


def _begin(args, k: int, runtime=None):
    from pathlib import Path

    from stylemapgan.commands._editio import align_choice
    from stylemapgan.editing.session import EditSession, planned_outputs
    from stylemapgan.imaging.images import check_writable

    out = Path(args.out)
    check_writable(planned_outputs(out, k, paste=bool(getattr(args, "paste_back", False))),
                   args.overwrite, inputs=_input_files(args))
    args.model = resolve_model(args.model)  # the record names the file itself
    ses = EditSession(args.model, args.device, args.batch_size, align=align_choice(args),
                      align_refs=bool(getattr(args, "align_ref", False)),
                      source_box=hasattr(args, "source_box"), fast=args.fast, runtime=runtime)
    return out, ses


def _mask(args, ses, src):
    from stylemapgan.commands._editio import mask_spec

    spec = mask_spec(args)
    if spec is None:
        return None, None
    if spec.kind == "region":
        m = ses.region_mask(src, spec.parts, args.region_grow or 0.0)
        return spec, (1.0 - m).astype(m.dtype) if spec.invert else m
    m = spec.build(ses.size, ses.config.stylemap_size, src.placement, photo=str(src.path))
    return spec, m


# --------------------------------------------------------------------------- operations
def run_reconstruct(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    runtime=None) -> int:
    from stylemapgan.imaging.images import to_uint8

    _check_paste_source(args, args.source)
    out, ses = _begin(args, 1, runtime)
    src = ses.read(args.source, args.fit, _source_box(args))
    ses.project([src])
    frames = to_uint8(ses.editor.reconstruct(src.w))
    paste = _paste(args, ses, src, frames[-1])
    return _finish(args, parser, ses, "reconstruct", out, frames, [ses.preview(src)], [("source", src)],
                   paste=paste)


def run_mix(args: argparse.Namespace, parser: argparse.ArgumentParser,
            runtime=None) -> int:
    from stylemapgan.editing.operations import layer_selection
    from stylemapgan.imaging.images import to_uint8

    _check_paste_source(args, args.source)
    out, ses = _begin(args, 1, runtime)
    layer_selection(args.layers, ses.config.num_styles)  # fail early on a bad spec
    a = ses.read(args.source, args.fit, _source_box(args))
    b = ses.read(args.reference, args.fit, reference=True)
    ses.project([a, b])
    frames = to_uint8(ses.editor.mix(a.w, b.w, args.layers))
    paste = _paste(args, ses, a, frames[-1])
    return _finish(args, parser, ses, "mix", out, frames, [ses.preview(a), ses.preview(b)],
                   [("source", a), ("reference", b)], paste=paste)


def run_interpolate(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    runtime=None) -> int:
    from stylemapgan.imaging.images import to_uint8

    out, ses = _begin(args, args.steps, runtime)
    a = ses.read(args.source, args.fit)
    b = ses.read(args.reference, args.fit, reference=True)
    ses.project([a, b])
    frames = to_uint8(ses.editor.interpolate(a.w, b.w, args.steps, space=args.space))
    return _finish(args, parser, ses, "interpolate", out, frames, [ses.preview(a), ses.preview(b)],
                   [("source", a), ("reference", b)])


def _t(k: int):
    from stylemapgan.editing.operations import steps

    return steps(k) if k > 1 else None


def run_local(args: argparse.Namespace, parser: argparse.ArgumentParser,
              runtime=None) -> int:
    from stylemapgan.imaging.images import mask_to_rgb, to_uint8
    from stylemapgan.imaging.masks import as_tensor

    _check_paste_source(args, args.source)
    out, ses = _begin(args, args.steps, runtime)
    src = ses.read(args.source, args.fit, _source_box(args))
    ref = ses.read(args.reference, args.fit, reference=True)
    spec, mask = _mask(args, ses, src)
    if float(mask.max()) == 0.0:
        print(f"note: the mask ({spec.describe()}) selects nothing; the result is the reconstruction")
    ses.project([src, ref])
    images = ses.editor.local_edit(src.w, ref.w, as_tensor(mask), space=args.space,
                                   mode=args.mask_mode, t=_t(args.steps))
    frames = to_uint8(images)
    paste = _paste(args, ses, src, frames[-1], mask)
    extra = [("mask", spec.path)] if spec.path else []
    return _finish(args, parser, ses, "local", out, frames,
                   [ses.preview(src), ses.preview(ref), mask_to_rgb(mask)],
                   [("source", src), ("reference", ref)], paste=paste, extra_files=extra)


def _regions(args, ses, refs):
    """The --region word lists as Regions (:func:`stylemapgan.editing.regions.parse_region`),
    their moved union (for the grid and the paste-back) and the mask files they read."""
    from stylemapgan.editing.regions import moved_union, parse_region

    parsed = [parse_region(tokens, i, size=ses.size, cells=ses.config.stylemap_size,
                           units=args.units, references=[(r.path, r.placement) for r in refs])
              for i, tokens in enumerate(args.regions)]
    files = [(f"region {i} mask", path) for i, (_, path) in enumerate(parsed) if path]
    regions = [r for r, _ in parsed]
    return regions, moved_union(regions, ses.size, args.mask_mode), files


def run_transplant(args: argparse.Namespace, parser: argparse.ArgumentParser,
                   runtime=None) -> int:
    import torch

    from stylemapgan.editing.operations import steps
    from stylemapgan.imaging.images import mask_to_rgb, to_uint8

    _check_paste_source(args, args.source)
    out, ses = _begin(args, args.steps, runtime)
    src = ses.read(args.source, args.fit, _source_box(args))
    refs = [ses.read(r, args.fit, reference=True) for r in args.refs]
    regions, union, files = _regions(args, ses, refs)
    ses.project([src, *refs])
    alpha = steps(args.steps) if args.steps > 1 else 1.0
    images = ses.editor.transplant(src.w, torch.cat([r.w for r in refs]), regions,
                                   space=args.space, alpha=alpha, mode=args.mask_mode)
    frames = to_uint8(images)
    paste = _paste(args, ses, src, frames[-1], union)
    tiles = [ses.preview(src), *(ses.preview(r) for r in refs), mask_to_rgb(union)]
    inputs = [("source", src), *((f"reference {i}", r) for i, r in enumerate(refs))]
    # What each region became (pixels of the model's square): the transform and its pivot.
    placed = [{"reference": r.reference, "transform": {**r.transform.to_dict(),
                                                       "pivot": list(r.pivot(ses.size))}}
              for r in regions]
    return _finish(args, parser, ses, "transplant", out, frames, tiles, inputs, paste=paste,
                   extra_files=files, extra_parameters={"placed_regions": placed})


def run_direction(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  runtime=None) -> int:
    import torch

    from stylemapgan.editing.directions import load_direction
    from stylemapgan.imaging.images import mask_to_rgb, to_uint8
    from stylemapgan.imaging.masks import as_tensor

    _check_paste_source(args, args.source)
    direction = load_direction(args.direction)
    out, ses = _begin(args, args.steps, runtime)
    if tuple(direction.vector.shape) != ses.config.stylemap_shape:
        from stylemapgan.errors import InputError

        raise InputError(f"{args.direction}: direction of shape {tuple(direction.vector.shape)} "
                         f"does not fit this model's stylemaps {ses.config.stylemap_shape}; "
                         "learn it with this model")
    src = ses.read(args.source, args.fit, _source_box(args))
    spec, mask = _mask(args, ses, src)
    ses.project([src])
    strength = (torch.linspace(0.0, args.strength, args.steps) if args.steps > 1
                else torch.tensor([args.strength]))
    images = ses.editor.apply_direction(src.w, direction.vector, strength,
                                        mask=None if mask is None else as_tensor(mask),
                                        mode=args.mask_mode)
    frames = to_uint8(images)
    paste = _paste(args, ses, src, frames[-1], mask)
    tiles = [ses.preview(src)] + ([mask_to_rgb(mask)] if mask is not None else [])
    files = [("direction", args.direction)] + ([("mask", spec.path)] if spec and spec.path else [])
    return _finish(args, parser, ses, "direction", out, frames, tiles, [("source", src)], paste=paste,
                   extra_files=files)


# --------------------------------------------------------------------------- replay
def run_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stylemapgan.editing.record import read_record

    path = Path(args.record)
    # A replay writes OUT/record.json: never over the record it reads, even with --overwrite.
    if _same_file(Path(args.out) / "record.json", path):
        from stylemapgan.errors import InputError

        raise InputError(f"--out {args.out}: the replay would write its record.json over the "
                         f"record it replays ({path}); choose another --out folder")
    record = read_record(path)
    if record.get("source") == "web":
        return _replay_web(args, path, record)
    return _replay_command(args, path, record)


def _same_file(a, b) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing (or unreadable): not one file
        return False


def _check_file(path, role: str, p, sha256: str | None, force: bool) -> None:
    from stylemapgan.errors import InputError
    from stylemapgan.files import sha256_file

    if not p.is_file():
        raise InputError(f"{path}: the {role} {p} is gone")
    if sha256 is None:
        print(f"note: {path} has no checksum for the {role}; {p} is used unchecked")
        return
    if sha256_file(p) != sha256:
        msg = f"{path}: the {role} {p} changed since the edit (checksum differs)"
        if not force:
            raise InputError(msg + "; pass --force to run anyway")
        print(f"warning: {msg}")


def _replay_device(args, record) -> str:
    """The user's --device; without it, cpu for a record made on the CPU (to get its bytes
    again), else auto. The record itself never names the device (it could only widen)."""
    if args.device is not None:
        return args.device
    return "cpu" if record.get("device") == "cpu" else "auto"


def _compare(out, record, args) -> int:
    """Compare the new outputs in ``out`` with the record's checksums; print and return the status."""
    from stylemapgan.files import sha256_file

    same, differ = 0, []
    for o in record.get("outputs", []):
        p = out / o["path"]
        if p.is_file() and sha256_file(p) == o["sha256"]:
            same += 1
        else:
            differ.append(o["path"])
    total = same + len(differ)
    if not differ:
        print(f"replay: all {total} output(s) are identical to the recorded ones")
        return 0
    print(f"replay: {same} of {total} output(s) identical; different: {', '.join(differ)} "
          f"(recorded on {record.get('device')} with torch {record.get('torch_version')}; other "
          "devices or versions can change the last bits)")
    return 1 if args.strict else 0


def _replay_command(args, path, record) -> int:
    """A command-line record: check the files, run the recorded command again."""
    from pathlib import Path

    from stylemapgan.commands import build_parser
    from stylemapgan.errors import InputError

    argv = record.get("argv")  # checked by read_record: words of an edit, no user-only option
    if not isinstance(argv, list) or not argv or argv[0] != "edit" or "replay" in argv[:2]:
        raise InputError(f"{path}: the record has no replayable command")
    if args.model is not None:
        raise InputError(f"{path}: --model applies to web editor records; a command-line record "
                         "names its model file")
    # The files must be the ones the record was made from.
    for f in [{"role": "model", **record.get("model", {})}, *record.get("inputs", [])]:
        _check_file(path, f.get("role", "input"), Path(f.get("path", "")), f.get("sha256"),
                    args.force)
    device = _replay_device(args, record)
    # Before --align-ref existed, --align aligned the references too: a record whose
    # references were aligned without it replays as it was made.
    if "--align-ref" not in argv and any(
            str(f.get("role", "")).startswith("reference") and isinstance(f.get("placement"), dict)
            and f["placement"].get("fit") == "aligned" for f in record.get("inputs", [])):
        argv = [*argv, "--align-ref"]
    new_argv = [*argv, "--out", args.out, "--device", device]
    if args.overwrite:
        new_argv.append("--overwrite")
    print("replaying: stylemapgan " + " ".join(new_argv))
    ns = _parse_recorded(build_parser(), new_argv, path)
    # --out, --device and --overwrite are the user's, whatever the record's words say.
    ns.out, ns.device, ns.overwrite = args.out, device, bool(args.overwrite)
    # A --fast edit runs again with the fast path it had (not this device's pick).
    rc = ns.func(ns, runtime=_recorded_runtime(path, record.get("model") or {}))
    if rc:
        return rc
    return _compare(Path(args.out), record, args)


def _parse_recorded(parser, argv: list[str], path) -> argparse.Namespace:
    """Parse a record's command line: argparse's usage and exit become one InputError."""
    import contextlib
    import io

    from stylemapgan.errors import InputError

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            ns = parser.parse_args(argv)
    except SystemExit:
        lines = [ln for ln in captured.getvalue().splitlines() if ln.strip()]
        why = lines[-1].split("error: ", 1)[-1] if lines else "not a command line"
        raise InputError(f"{path}: field 'argv' is not a valid edit command ({why}); the record "
                         "is damaged or was changed") from None
    if getattr(ns, "command", None) != "edit" or getattr(ns, "operation", None) == "replay":
        raise InputError(f"{path}: the record has no replayable command")
    return ns


def _recorded_runtime(path, model: dict[str, Any]):
    """The fast-path options a record's model entry names (None when it names none)."""
    from stylemapgan.errors import InputError
    from stylemapgan.nn.runtime import RuntimeOptions

    rt = model.get("runtime")
    if not rt:
        return None
    try:
        return RuntimeOptions(precision=rt.get("precision", "float32"),
                              channels_last=bool(rt.get("channels_last", False)),
                              compile=bool(rt.get("compile", False)),
                              cuda_graphs=bool(rt.get("cuda_graphs", False)))
    except Exception as exc:  # ConfigError: a record of a precision this build does not know
        raise InputError(f"{path}: unusable runtime {rt!r} ({exc})") from None


def _replay_web(args, path, record) -> int:
    """A web editor record: its images and masks are inside; run the same edit with the same
    engine settings and write the frames with the recorded PNG level."""
    from pathlib import Path

    from stylemapgan.editing.editor import Editor
    from stylemapgan.editing.record import frame_names
    from stylemapgan.editing.session import replay_web_record
    from stylemapgan.errors import InputError
    from stylemapgan.formats.checkpoint import default_model_path, load_model
    from stylemapgan.imaging.images import check_writable
    from stylemapgan.nn.runtime import RuntimeOptions
    from stylemapgan.utils import resolve_device

    m = record.get("model", {})
    if args.model is not None:
        model_path = Path(args.model)
        if not model_path.is_file():
            raise InputError(f"--model {model_path}: no such file; pass the model file the "
                             f"editor served (or {default_model_path().name} for the embedded "
                             "model)")
    else:
        model_path = Path(m["path"]) if m.get("path") else None
        if model_path is None or not model_path.is_file():
            default = default_model_path()
            if m.get("sha256") and default.is_file():
                from stylemapgan.files import sha256_file

                if sha256_file(default) == m["sha256"]:
                    model_path = default
        if model_path is None or not model_path.is_file():
            where = f"at {m['path']}" if m.get("path") else "no path recorded"
            raise InputError(f"{path}: the model the record names, {m.get('name', '?')} "
                             f"({where}), is not here and is not the embedded model; pass "
                             "--model MODEL_FILE (the file the editor served)")
    _check_file(path, "model", model_path, m.get("sha256"), args.force)
    runtime = _recorded_runtime(path, m) or RuntimeOptions()
    outputs = record.get("outputs", [])
    out = Path(args.out)
    names = frame_names(len(outputs)) if outputs else ["result.png"]
    check_writable([out / n for n in names], args.overwrite)
    device = resolve_device(_replay_device(args, record))
    editor = Editor(load_model(model_path, device=device), runtime=runtime)
    print(f"replaying a web editor edit ({record.get('parameters', {}).get('method', '?')}) with "
          f"{model_path.name} on {device}")
    names, method = replay_web_record(editor, record, str(path), out, overwrite=args.overwrite)
    print(f"replay: wrote {len(names)} frame(s) to {out} ({method})")
    return _compare(out, record, args)
