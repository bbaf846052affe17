"""Shared plumbing of the commands that read photos or stylemaps and write edits: argument
helpers, input loading, output naming and the JSON edit records that reproduce an edit."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylemapgan.commands._common import abspath, float_in, int_in, unit_threshold

if TYPE_CHECKING:  # heavy imports stay inside functions
    import numpy as np
    import torch
    from PIL import Image

    from stylemapgan.editing.editor import Editor
    from stylemapgan.imaging.placement import Placement



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
    from stylemapgan.errors import InputError

    if not getattr(args, "align", False):
        return None
    face = str(getattr(args, "face", "largest"))
    if face != "largest" and not face.isdigit():
        raise InputError(f"--face {face!r}: use largest or a face number (0 = largest); to cut "
                         "every face use `stylemapgan align --face all`")
    return face


def add_mask_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("mask (1 = take the edit; give one of --mask, --labels, --mask-box)")
    g.add_argument("--mask", type=abspath, metavar="IMAGE",
                   help="mask image, any size and format: white/opaque = edit, gray = partial")
    g.add_argument("--labels", type=abspath, metavar="LABEL_MAP",
                   help="label map (pixel value = label id), used with --parts")
    g.add_argument("--parts", metavar="PARTS",
                   help="parts of the label map: CelebAMask-HQ names (hair, skin, nose, eyes, "
                        "brows, ears, mouth, neck, cloth, background) and/or label ids, e.g. hair,13")
    g.add_argument("--mask-box", metavar="X0,Y0,X1,Y1",
                   help="a rectangle, right/bottom exclusive, in --units")
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
    p.set_defaults(_mask_required=required)


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
                        "(only where the edit can change pixels: its mask grown by the model's "
                        "receptive field, with a feathered seam)")
    p.add_argument("--paste-area", choices=("footprint", "mask"), default="footprint",
                   help="where the result goes back: footprint (default) = the mask grown by the "
                        "model's receptive field, everything the edit can change; mask = the mask "
                        "itself (grown by --feather only)")
    p.add_argument("--paste-mode", choices=("replace", "residual"), default="replace",
                   help="replace (default): paste the result's pixels; residual: add only the "
                        "edit's change G(w_edit) - G(w_src), keeping the photo's own detail")
    p.add_argument("--feather", type=float_in(0.0, 1024.0), default=8.0,
                   help="width of the paste-back seam in photo pixels, 0..1024 (default: 8)")


def mask_spec(args: argparse.Namespace):
    """The MaskSpec the mask flags describe (None if none given and none required)."""
    from stylemapgan.errors import InputError
    from stylemapgan.imaging.masks import MaskSpec

    given = [k for k in ("mask", "labels", "mask_box") if getattr(args, k, None)]
    if len(given) > 1:
        raise InputError("give only one of --mask, --labels and --mask-box")
    if getattr(args, "parts", None) and not getattr(args, "labels", None):
        raise InputError("--parts needs --labels LABEL_MAP")
    if not given:
        if getattr(args, "_mask_required", False):
            raise InputError("this edit needs a mask: give --mask IMAGE, --labels MAP --parts "
                             "PARTS or --mask-box X0,Y0,X1,Y1")
        return None
    if args.labels and not args.parts:
        raise InputError("--labels needs --parts (e.g. --parts hair or --parts 13,14)")
    if args.mask_threshold is not None and not args.mask:
        raise InputError("--mask-threshold applies to --mask images only")
    if given[0] == "mask":
        return MaskSpec("image", path=args.mask, invert=args.invert_mask, threshold=args.mask_threshold)
    if given[0] == "labels":
        return MaskSpec("labels", path=args.labels, parts=args.parts, invert=args.invert_mask)
    from stylemapgan.imaging.placement import parse_box

    parse_box(args.mask_box, "--mask-box")  # a malformed box is named by its option
    return MaskSpec("box", box=args.mask_box, units=args.units, invert=args.invert_mask)


# --------------------------------------------------------------------------- inputs
@dataclass
class Input:
    """One image or saved stylemap given on the command line."""

    path: Path
    kind: str  # "image" or "stylemap"
    sha256: str
    pixels: np.ndarray | None = None  # [S, S, 3] uint8: what the model sees (images)
    placement: Placement | None = None
    photo: Image.Image | None = None
    w: torch.Tensor | None = None  # [1, C, S, S] once projected (or read)

    def describe(self, role: str) -> dict[str, Any]:
        d: dict[str, Any] = {"role": role, "path": str(self.path), "kind": self.kind,
                             "sha256": self.sha256}
        if self.placement is not None:
            d["placement"] = self.placement.to_dict()
        return d


class Session:
    """A loaded model plus the bookkeeping every edit command needs."""

    def __init__(self, model_path: str, device: str, batch_size: int = 8,
                 align: str | None = None, align_refs: bool = False,
                 source_box: bool = True, fast: bool = False, runtime=None) -> None:
        from stylemapgan.commands._common import fast_runtime
        from stylemapgan.editing.editor import Editor
        from stylemapgan.files import sha256_file
        from stylemapgan.utils import resolve_device

        self.model_path = Path(model_path)
        self.device = resolve_device(device)
        # --fast: the fast path for this device; a replay passes the recorded one (runtime).
        runtime = runtime if runtime is not None else fast_runtime(fast, self.device)
        self.editor: Editor = Editor.load(model_path, self.device, batch_size=batch_size,
                                          runtime=runtime)
        self.model_sha256 = sha256_file(model_path)
        self.size = self.editor.size
        self.config = self.editor.config
        self.align = align  # the source's face (--align, --face)
        self.align_refs = align_refs  # references: their largest face (--align-ref)
        self.source_box = source_box  # whether the command has --source-box (for advice)
        self.aligner = None
        if align is not None or align_refs:
            from stylemapgan.imaging.faces import FaceAligner

            self.aligner = FaceAligner()

    def read(self, path: str | os.PathLike[str], fit: str = "crop",
             box: tuple[float, float, float, float] | None = None,
             reference: bool = False) -> Input:
        """Read an image (fitted to the model, or aligned: the source with --align, a
        ``reference`` with --align-ref) or a saved stylemap."""
        from stylemapgan.errors import InputError
        from stylemapgan.files import sha256_file
        from stylemapgan.formats.stylemaps import is_stylemap_file, load_stylemap
        from stylemapgan.imaging.photos import photo_square

        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: is a folder; this command takes one image or stylemap here"
                             if p.is_dir() else
                             f"{p}: not a regular file (a FIFO or device); give an image file"
                             if p.exists() else f"{p}: no such file")
        digest = sha256_file(p)
        if is_stylemap_file(p):
            if box is not None:
                raise InputError(f"{p}: --source-box applies to photos, not to saved stylemaps")
            saved = load_stylemap(p, self.config, self.model_sha256)
            self.editor.remember(("file", digest), saved.w)
            return Input(p, "stylemap", digest, placement=saved.placement, w=saved.w.to(self.device))
        if reference:
            align = "largest" if self.align_refs else None
            no_face = ("leave out --align-ref to fit the references by --fit, or give one "
                       "with a face")
        else:
            align = self.align
            no_face = ("leave out --align and give the face's region with --source-box "
                       "X0,Y0,X1,Y1" if self.source_box else
                       "leave out --align to fit the photo by --fit")
        sq = photo_square(p, self.size, fit=fit, box=box, align=align, aligner=self.aligner,
                          no_face=no_face)
        return Input(p, "image", digest, pixels=sq.pixels, placement=sq.placement, photo=sq.photo)

    def project(self, inputs: Sequence[Input]) -> None:
        """Fill ``w`` of every input; the encoder runs once per distinct picture."""
        from stylemapgan.imaging.images import from_uint8

        todo = [x for x in inputs if x.w is None]
        if not todo:
            return
        import numpy as np

        batch = from_uint8(np.stack([x.pixels for x in todo]))
        keys = [("image", x.sha256, json.dumps(x.placement.to_dict(), sort_keys=True, allow_nan=False))
                for x in todo]
        ws = self.editor.project(batch, keys=keys)
        for x, w in zip(todo, ws, strict=True):
            x.w = w[None]

    def preview(self, x: Input) -> np.ndarray:
        """What to show for an input in a grid: the fitted photo, or a stylemap's rendering."""
        from stylemapgan.imaging.images import to_uint8

        if x.pixels is not None:
            return x.pixels
        return to_uint8(self.editor.render(x.w))[0]


# --------------------------------------------------------------------------- outputs
def planned_outputs(out: Path, k: int, *, grid: bool = True, paste: bool = False) -> list[Path]:
    from stylemapgan.editing.record import frame_names

    names = frame_names(k)
    if k > 1:
        names.append("animation.gif")
    if grid:
        names.append("grid.png")
    if paste:
        names.append("pasted.png")
    names.append("record.json")
    return [out / n for n in names]


def write_frames(out: Path, frames: np.ndarray, tiles: Sequence[np.ndarray], *, overwrite: bool,
                 gif_ms: int = 80) -> list[Path]:
    """Write the result frames, the animation (K > 1) and grid.png (input tiles + frames)."""
    import numpy as np

    from stylemapgan.editing.editor import grid_columns
    from stylemapgan.editing.record import frame_names
    from stylemapgan.imaging.images import make_grid, save_gif, save_png

    written = []
    for name, img in zip(frame_names(len(frames)), frames, strict=True):
        written.append(save_png(img, out / name, overwrite=overwrite))
    if len(frames) > 1:
        written.append(save_gif(frames, out / "animation.gif", duration_ms=max(10, gif_ms),
                                overwrite=overwrite))
    all_tiles = np.stack([*tiles, *frames])
    cols = len(all_tiles) if len(frames) <= 8 else grid_columns(len(all_tiles))
    written.append(save_png(make_grid(all_tiles, ncols=cols), out / "grid.png", overwrite=overwrite))
    return written


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


def write_record(out: Path, *, operation: str, argv: list[str], session: Session,
                 inputs: Sequence[tuple[str, Input]], extra_files: Sequence[tuple[str, str]] = (),
                 parameters: dict[str, Any], outputs: Sequence[Path], overwrite: bool,
                 command_prefix: Sequence[str] = ("stylemapgan", "edit")) -> Path:
    """record.json (:mod:`stylemapgan.editing.record`): what was done, with checksums of every
    input and output and the exact command (``argv``) that ``stylemapgan edit replay`` runs
    again."""
    from stylemapgan.editing.record import dumps, new_record
    from stylemapgan.files import atomic_write, sha256_file
    from stylemapgan.imaging.images import PNG_LEVEL

    files = [x.describe(role) for role, x in inputs]
    for role, path in extra_files:
        files.append({"role": role, "path": path, "sha256": sha256_file(path)})
    full = [*command_prefix, *argv, "--out", str(out.resolve()), "--device", str(session.device)]
    model: dict[str, Any] = {"path": str(session.model_path), "sha256": session.model_sha256}
    runtime = session.editor.runtime
    if runtime != type(runtime)():  # --fast: what it meant on this device (replays use it)
        from dataclasses import asdict

        model["runtime"] = asdict(runtime)
    record = new_record(
        source="cli", operation=operation, device=str(session.device), model=model,
        inputs=files, parameters=parameters,
        outputs=[{"path": p.name, "sha256": sha256_file(p)} for p in outputs],
        png_compress_level=PNG_LEVEL, command=shlex.join(full),
        argv=[*command_prefix[1:], *argv])
    text = dumps(record)
    path = out / "record.json"
    with atomic_write(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return path
