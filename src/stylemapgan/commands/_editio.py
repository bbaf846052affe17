"""Argument helpers of the commands that read photos or stylemaps and write edits, and the
command line an edit record keeps. The work (inputs, outputs, records) is
:mod:`stylemapgan.editing.session`'s."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from stylemapgan.commands._common import abspath, float_in, int_in, unit_threshold


# --------------------------------------------------------------------------- argument types
def add_fit(p: argparse.ArgumentParser, references: bool = False) -> None:
    """--fit, --align and --face; with ``references`` (edits that read reference images) also
    --align-ref: --align then aligns the source only."""
    p.add_argument("--fit", choices=("crop", "pad", "stretch"), default="crop",
                   help="how a photo that is not square becomes the model's square: crop the "
                        "center (default), pad it (edge pixels repeated) or stretch it")
    which = "the source photo" if references else "each photo"
    p.add_argument("--align", action="store_true",
                   help=f"find the face in {which} and align it as the face models were trained "
                        "(FFHQ recipe; needs the faces extra); the crop-to-photo map is kept, so "
                        "--paste-back puts the edit back into the full photo")
    if references:
        p.add_argument("--align-ref", action="store_true",
                       help="also align the reference photos (their largest face); without it "
                            "references are fitted by --fit, so a cartoon or a photo without a "
                            "face can be a reference of an aligned source")
    p.add_argument("--face", default="largest", metavar="WHICH",
                   help="with --align: largest (default) or a face number (0 = largest) of the "
                        "source photo")


def align_choice(args: argparse.Namespace) -> str | None:
    """The face to align (``largest`` or a number), or None without --align."""
    return face_choice(bool(getattr(args, "align", False)), str(getattr(args, "face", "largest")))


def face_choice(align: bool, face: str) -> str | None:
    """The face to align given --align and --face: ``largest`` or a number, None without --align."""
    from stylemapgan.errors import InputError

    if not align:
        return None
    if face != "largest" and not face.isdigit():
        raise InputError(f"--face {face!r}: use largest or a face number (0 = largest); to cut "
                         "every face use `stylemapgan align --face all`")
    return face


def add_mask_args(p: argparse.ArgumentParser, regions: bool = False) -> None:
    """The mask options; with ``regions`` also --region NAME[,NAME] and --region-grow."""
    one_of = "--mask, --labels, --mask-box" + (", --region" if regions else "")
    g = p.add_argument_group(f"mask (1 = take the edit; give one of {one_of})")
    g.add_argument("--mask", type=abspath, metavar="IMAGE",
                   help="mask image, any size and format: white/opaque = edit, gray = partial")
    g.add_argument("--labels", type=abspath, metavar="LABEL_MAP",
                   help="label map (pixel value = label id), used with --parts")
    g.add_argument("--parts", metavar="PARTS",
                   help="parts of the label map: CelebAMask-HQ names (hair, skin, nose, eyes, "
                        "brows, ears, mouth, neck, cloth, background) and/or label ids, e.g. hair,13")
    g.add_argument("--mask-box", metavar="X0,Y0,X1,Y1",
                   help="a rectangle, right/bottom exclusive, in --units")
    if regions:
        g.add_argument("--region", metavar="NAME[,NAME]",
                       help="named regions of the source photo, e.g. mouth or eyes,brows: from "
                            "its face's 68 landmarks (the face --align found; needs the faces "
                            "extra), or an avatar's part masks (hair, face, clothing, ...); "
                            "`stylemapgan regions PHOTO --out DIR` shows them")
        g.add_argument("--region-grow", type=float_in(-512.0, 512.0), default=None, metavar="PX",
                       help="grow the --region by PX pixels of the source photo (negative: "
                            "shrink; default: 0)")
    g.add_argument("--units", choices=("cells", "px"), default="cells",
                   help="units of --mask-box and of transplant boxes/moves: stylemap cells "
                        "(default) or pixels of the model's image")
    g.add_argument("--invert-mask", action="store_true", help="edit everything but the mask")
    g.add_argument("--mask-threshold", type=unit_threshold, metavar="T",
                   help="make a mask image binary: values >= T count as 1 (0 < T <= 1, "
                        "1 = white)")
    g.add_argument("--mask-mode", choices=("area", "max"), default="area",
                   help="how the mask shrinks to each stylemap: area = fraction of the cell "
                        "covered (soft, default), max = any pixel selects the cell (the "
                        "reference's max pooling; the edited area grows)")


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--gif-ms", type=int_in(1, 60_000), default=80,
                   help="milliseconds per animation frame, 1..60000; GIF viewers show at least "
                        "10 (default: 80)")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=8,
                   help="images per generator pass, 1..1024 (default: 8)")


def add_paste_back(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paste-back", action="store_true",
                   help="also write pasted.png: the result put back into the full source photo "
                        "(with a mask only around it: the mask grown by --feather and feathered; "
                        "every other pixel is the photo's own)")
    p.add_argument("--paste-area", choices=("mask", "footprint"), default="mask",
                   help="where the result goes back: mask (default) = the mask grown by "
                        "--feather photo pixels, feathered; footprint = the mask grown by the "
                        "model's receptive field, every pixel the edit can change (far more: a "
                        "mouth can change the whole face)")
    p.add_argument("--paste-mode", choices=("replace", "residual"), default="replace",
                   help="replace (default): paste the result's pixels; residual: add only the "
                        "edit's change G(w_edit) - G(w_src), keeping the photo's own detail")
    p.add_argument("--feather", type=float_in(0.0, 1024.0), default=8.0,
                   help="how far the pasted area grows past the mask and the width of its "
                        "seam, in photo pixels, 0..1024 (default: 8)")


@dataclass(frozen=True)
class MaskOptions:
    """The mask options of one edit as given (:func:`add_mask_args`); :func:`mask_spec` checks
    them. ``regions``: whether the edit offers --region (and --region-grow)."""

    mask: str | None = None
    labels: str | None = None
    parts: str | None = None
    mask_box: str | None = None
    region: str | None = None
    region_grow: float | None = None
    units: str = "cells"
    invert: bool = False
    threshold: float | None = None
    mode: str = "area"
    regions: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MaskOptions:
        return cls(mask=args.mask, labels=args.labels, parts=args.parts, mask_box=args.mask_box,
                   region=getattr(args, "region", None),
                   region_grow=getattr(args, "region_grow", None), units=args.units,
                   invert=bool(args.invert_mask), threshold=args.mask_threshold,
                   mode=args.mask_mode, regions=hasattr(args, "region"))


def mask_spec(opts: MaskOptions, required: bool):
    """The MaskSpec the mask options describe (None if none is given and ``required`` is false)."""
    from stylemapgan.errors import InputError
    from stylemapgan.imaging.masks import MaskSpec

    given = [k for k, v in (("mask", opts.mask), ("labels", opts.labels),
                            ("mask_box", opts.mask_box), ("region", opts.region)) if v]
    if len(given) > 1:
        raise InputError("give only one of --mask, --labels, --mask-box"
                         + (" and --region" if opts.regions else ""))
    if opts.region_grow is not None and not opts.region:
        raise InputError("--region-grow applies to --region NAME")
    if opts.parts and not opts.labels:
        raise InputError("--parts needs --labels LABEL_MAP")
    if not given:
        if required:
            raise InputError("this edit needs a mask: give --mask IMAGE, --labels MAP --parts "
                             "PARTS, --mask-box X0,Y0,X1,Y1"
                             + (" or --region NAME" if opts.regions else ""))
        return None
    if opts.labels and not opts.parts:
        raise InputError("--labels needs --parts (e.g. --parts hair or --parts 13,14)")
    if opts.threshold is not None and not opts.mask:
        raise InputError("--mask-threshold applies to --mask images only")
    if given[0] == "region":
        return MaskSpec("region", parts=opts.region, invert=opts.invert)
    if given[0] == "mask":
        return MaskSpec("image", path=opts.mask, invert=opts.invert, threshold=opts.threshold)
    if given[0] == "labels":
        return MaskSpec("labels", path=opts.labels, parts=opts.parts, invert=opts.invert)
    from stylemapgan.imaging.placement import parse_box

    parse_box(opts.mask_box, "--mask-box")  # a malformed box is named by its option
    return MaskSpec("box", box=opts.mask_box, units=opts.units, invert=opts.invert)


# --------------------------------------------------------------------------- records
def canonical_argv(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   skip: Sequence[str] = ("out", "overwrite", "device", "help")) -> list[str]:
    """The options of ``args`` as a command line for ``parser`` (paths already absolute):
    positionals first, then every option whose value is set. Parsing it again gives the
    same namespace."""
    positionals: list[str] = []
    options: list[str] = []
    for a in parser._actions:  # argparse keeps no public list of actions
        if a.dest in skip or a.dest == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
            continue
        v = getattr(args, a.dest, None)
        if not a.option_strings:
            positionals.extend(str(x) for x in (v if isinstance(v, list) else [v]))
            continue
        opt = next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
        if isinstance(a, argparse._StoreTrueAction):
            if v:
                options.append(opt)
        elif v is None or v is False:
            continue
        elif isinstance(a, argparse._AppendAction):
            for item in v:
                options += [opt, *(str(t) for t in (item if isinstance(item, list) else [item]))]
        elif isinstance(v, list):
            options += [opt, *(str(t) for t in v)]
        else:
            options += [opt, str(v)]
    return positionals + options
