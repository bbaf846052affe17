"""``stylemapgan edit OPERATION``: every StyleMapGAN edit on your own photos or saved stylemaps.

Operations: reconstruct, mix, interpolate, local, transplant, direction, and replay (run the
edit a record.json describes again). Each writes its images, grid.png (inputs, mask, results)
and record.json into ``--out``.
"""

from __future__ import annotations

import argparse
from functools import partial

from stylemapgan.commands._common import (
    abspath,
    add_device,
    add_fast,
    add_model,
    add_overwrite,
    add_parser,
    finite_float,
    int_in,
    resolve_model,
    writes_folder,
)
from stylemapgan.commands._edit_requests import (
    Direction,
    EditCommon,
    Interpolate,
    Local,
    Mix,
    Reconstruct,
    Transplant,
)
from stylemapgan.commands._editio import (
    MaskOptions,
    add_fit,
    add_mask_args,
    add_output,
    add_paste_back,
)
from stylemapgan.commands.edit_replay import add_replay

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
    add_mask_args(q, regions=True)
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
                       stylemapgan edit direction me.jpg --direction smile.safetensors --strength -5 --steps 6 --mask-box 2,4,6,7 --model m.safetensors --out less
                       stylemapgan edit direction me.jpg --align --direction smile.safetensors --region mouth --paste-back --model ffhq.safetensors --out smile_only""")
    q.add_argument("source", type=abspath, help="photo or stylemap")
    q.add_argument("--direction", required=True, type=abspath, help="direction file (.safetensors)")
    q.add_argument("--strength", type=finite_float, default=3.0,
                   help="distance to move in stylemap space; the direction has unit norm (default: 3)")
    q.add_argument("--steps", type=steps_int, default=1,
                   help="images from strength 0 to --strength, 1..1000 (default: 1)")
    add_mask_args(q, regions=True)
    add_paste_back(q)
    _common(q)
    q.set_defaults(func=writes_folder(partial(run_direction, parser=q)))

    add_replay(ops)


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


def _source_box(c: EditCommon):
    from stylemapgan.imaging.placement import parse_box

    return parse_box(c.source_box, "--source-box") if c.source_box else None


def _finish(c: EditCommon, ses, out, frames, tiles, inputs, *, paste=None, extra_files=(),
            extra_parameters=None):
    """Write frames, grid, optional paste-back and the record; print a summary."""
    parameters = {**c.parameters, **(extra_parameters or {})}
    written = ses.write(out, operation=c.operation, argv=list(c.argv), frames=frames, tiles=tiles,
                        inputs=inputs, parameters=parameters, paste=paste,
                        extra_files=extra_files, overwrite=c.overwrite, gif_ms=c.gif_ms)
    files = written[:-1]  # record.json is named last
    names = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
    print(f"{c.operation}: wrote {len(written)} file(s) to {out} ({names}, record.json)")
    return 0


def _paste(c: EditCommon, ses, src, frame, mask=None, *, space: str = "w",
           mask_mode: str = "area"):
    """pasted.png's pixels with --paste-back, else None."""
    if c.paste is None:
        return None
    return ses.paste(src, frame, mask, space=space, mask_mode=mask_mode, area=c.paste.area,
                     mode=c.paste.mode, feather=c.paste.feather)


def _check_paste_source(c: EditCommon, path: str) -> None:
    from stylemapgan.errors import InputError
    from stylemapgan.formats.stylemaps import is_stylemap_file

    if c.paste is not None and is_stylemap_file(path):
        raise InputError(f"--paste-back needs the source photo, but {path} is a saved stylemap; "
                         "give the photo instead")


def _begin(c: EditCommon, k: int, runtime=None):
    from pathlib import Path

    from stylemapgan.commands._editio import face_choice
    from stylemapgan.editing.session import EditSession, planned_outputs
    from stylemapgan.imaging.images import check_writable

    out = Path(c.out)
    check_writable(planned_outputs(out, k, paste=c.paste is not None), c.overwrite,
                   inputs=list(c.inputs))
    ses = EditSession(resolve_model(c.model), c.device, c.batch_size,
                      align=face_choice(c.align, c.face), align_refs=c.align_refs,
                      source_box=c.offers_source_box, fast=c.fast, runtime=runtime)
    return out, ses


def _mask(opts: MaskOptions, required: bool, ses, src):
    from stylemapgan.commands._editio import mask_spec

    spec = mask_spec(opts, required)
    if spec is None:
        return None, None
    if spec.kind == "region":
        m = ses.region_mask(src, spec.parts, opts.region_grow or 0.0)
        return spec, (1.0 - m).astype(m.dtype) if spec.invert else m
    m = spec.build(ses.size, ses.config.stylemap_size, src.placement, photo=str(src.path))
    return spec, m


def _open(c: EditCommon, source: str, k: int, runtime):
    """The usual start of an edit of one source: refuse a saved stylemap with --paste-back,
    check the ``k`` frames' outputs, open the session and read the source."""
    _check_paste_source(c, source)
    out, ses = _begin(c, k, runtime)
    return out, ses, ses.read(source, c.fit, _source_box(c))


# --------------------------------------------------------------------------- operations
def run_reconstruct(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    runtime=None) -> int:
    from stylemapgan.imaging.images import to_uint8

    r = Reconstruct.from_args(args, parser)
    c = r.common
    out, ses, src = _open(c, r.source, 1, runtime)
    ses.project([src])
    frames = to_uint8(ses.editor.reconstruct(src.w))
    paste = _paste(c, ses, src, frames[-1])
    return _finish(c, ses, out, frames, [ses.preview(src)], [("source", src)], paste=paste)


def run_mix(args: argparse.Namespace, parser: argparse.ArgumentParser,
            runtime=None) -> int:
    from stylemapgan.editing.operations import layer_selection
    from stylemapgan.imaging.images import to_uint8

    r = Mix.from_args(args, parser)
    c = r.common
    _check_paste_source(c, r.source)
    out, ses = _begin(c, 1, runtime)
    layer_selection(r.layers, ses.config.num_styles)  # fail early on a bad spec
    a = ses.read(r.source, c.fit, _source_box(c))
    b = ses.read(r.reference, c.fit, reference=True)
    ses.project([a, b])
    frames = to_uint8(ses.editor.mix(a.w, b.w, r.layers))
    paste = _paste(c, ses, a, frames[-1])
    return _finish(c, ses, out, frames, [ses.preview(a), ses.preview(b)],
                   [("source", a), ("reference", b)], paste=paste)


def run_interpolate(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    runtime=None) -> int:
    from stylemapgan.imaging.images import to_uint8

    r = Interpolate.from_args(args, parser)
    c = r.common
    out, ses = _begin(c, r.steps, runtime)
    a = ses.read(r.source, c.fit)
    b = ses.read(r.reference, c.fit, reference=True)
    ses.project([a, b])
    frames = to_uint8(ses.editor.interpolate(a.w, b.w, r.steps, space=r.space))
    return _finish(c, ses, out, frames, [ses.preview(a), ses.preview(b)],
                   [("source", a), ("reference", b)])


def _t(k: int):
    from stylemapgan.editing.operations import steps

    return steps(k) if k > 1 else None


def run_local(args: argparse.Namespace, parser: argparse.ArgumentParser,
              runtime=None) -> int:
    from stylemapgan.imaging.images import mask_to_rgb, to_uint8
    from stylemapgan.imaging.masks import as_tensor

    r = Local.from_args(args, parser)
    c = r.common
    out, ses, src = _open(c, r.source, r.steps, runtime)
    ref = ses.read(r.reference, c.fit, reference=True)
    spec, mask = _mask(r.mask, True, ses, src)
    if float(mask.max()) == 0.0:
        print(f"note: the mask ({spec.describe()}) selects nothing; the result is the reconstruction")
    ses.project([src, ref])
    images = ses.editor.local_edit(src.w, ref.w, as_tensor(mask), space=r.space,
                                   mode=r.mask.mode, t=_t(r.steps))
    frames = to_uint8(images)
    paste = _paste(c, ses, src, frames[-1], mask, space=r.space, mask_mode=r.mask.mode)
    extra = [("mask", spec.path)] if spec.path else []
    return _finish(c, ses, out, frames, [ses.preview(src), ses.preview(ref), mask_to_rgb(mask)],
                   [("source", src), ("reference", ref)], paste=paste, extra_files=extra)


def _regions(r: Transplant, ses, refs):
    """The --region word lists as Regions (:func:`stylemapgan.editing.regions.parse_region`),
    their moved union (for the grid and the paste-back) and the mask files they read."""
    from stylemapgan.editing.regions import moved_union, parse_region

    parsed = [parse_region(list(tokens), i, size=ses.size, cells=ses.config.stylemap_size,
                           units=r.units, references=[(f.path, f.placement) for f in refs])
              for i, tokens in enumerate(r.regions)]
    files = [(f"region {i} mask", path) for i, (_, path) in enumerate(parsed) if path]
    regions = [region for region, _ in parsed]
    return regions, moved_union(regions, ses.size, r.mask_mode), files


def run_transplant(args: argparse.Namespace, parser: argparse.ArgumentParser,
                   runtime=None) -> int:
    import torch

    from stylemapgan.editing.operations import steps
    from stylemapgan.imaging.images import mask_to_rgb, to_uint8

    r = Transplant.from_args(args, parser)
    c = r.common
    out, ses, src = _open(c, r.source, r.steps, runtime)
    refs = [ses.read(f, c.fit, reference=True) for f in r.refs]
    regions, union, files = _regions(r, ses, refs)
    ses.project([src, *refs])
    alpha = steps(r.steps) if r.steps > 1 else 1.0
    images = ses.editor.transplant(src.w, torch.cat([f.w for f in refs]), regions,
                                   space=r.space, alpha=alpha, mode=r.mask_mode)
    frames = to_uint8(images)
    paste = _paste(c, ses, src, frames[-1], union, space=r.space, mask_mode=r.mask_mode)
    tiles = [ses.preview(src), *(ses.preview(f) for f in refs), mask_to_rgb(union)]
    inputs = [("source", src), *((f"reference {i}", f) for i, f in enumerate(refs))]
    # What each region became (pixels of the model's square): the transform and its pivot.
    placed = [{"reference": region.reference,
               "transform": {**region.transform.to_dict(), "pivot": list(region.pivot(ses.size))}}
              for region in regions]
    return _finish(c, ses, out, frames, tiles, inputs, paste=paste, extra_files=files,
                   extra_parameters={"placed_regions": placed})


def run_direction(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  runtime=None) -> int:
    import torch

    from stylemapgan.editing.directions import load_direction
    from stylemapgan.imaging.images import mask_to_rgb, to_uint8
    from stylemapgan.imaging.masks import as_tensor

    r = Direction.from_args(args, parser)
    c = r.common
    _check_paste_source(c, r.source)
    direction = load_direction(r.direction)
    out, ses = _begin(c, r.steps, runtime)
    if tuple(direction.vector.shape) != ses.config.stylemap_shape:
        from stylemapgan.errors import InputError

        raise InputError(f"{r.direction}: direction of shape {tuple(direction.vector.shape)} "
                         f"does not fit this model's stylemaps {ses.config.stylemap_shape}; "
                         "learn it with this model")
    src = ses.read(r.source, c.fit, _source_box(c))
    spec, mask = _mask(r.mask, False, ses, src)
    ses.project([src])
    strength = (torch.linspace(0.0, r.strength, r.steps) if r.steps > 1
                else torch.tensor([r.strength]))
    images = ses.editor.apply_direction(src.w, direction.vector, strength,
                                        mask=None if mask is None else as_tensor(mask),
                                        mode=r.mask.mode)
    frames = to_uint8(images)
    # Directions move w (no --space): the paste-back's footprint is w's.
    paste = _paste(c, ses, src, frames[-1], mask, mask_mode=r.mask.mode)
    tiles = [ses.preview(src)] + ([mask_to_rgb(mask)] if mask is not None else [])
    files = [("direction", r.direction)] + ([("mask", spec.path)] if spec and spec.path else [])
    return _finish(c, ses, out, frames, tiles, [("source", src)], paste=paste, extra_files=files)
