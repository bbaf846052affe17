"""An edit of photos or saved stylemaps from files to files: the work behind ``stylemapgan edit``.

An :class:`EditSession` holds a loaded model (an :class:`~stylemapgan.editing.Editor`) and
reads the inputs (photos fitted or aligned by :func:`stylemapgan.imaging.photos.photo_square`,
or saved stylemaps), projects them once, pastes a result back into the source photo, and
writes the frames, the animation, grid.png, pasted.png and the record.json that replays the
edit (:mod:`stylemapgan.editing.record`).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside functions
    import numpy as np
    import torch
    from PIL import Image

    from stylemapgan.editing.editor import Editor
    from stylemapgan.imaging.placement import Placement
    from stylemapgan.nn.runtime import RuntimeOptions

__all__ = ["EditSession", "Input", "in_photo_mode", "planned_outputs", "replay_web_record",
           "write_frames"]


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
    landmarks: np.ndarray | None = None  # [68, 2] photo pixels: the face --align used

    def describe(self, role: str) -> dict[str, Any]:
        d: dict[str, Any] = {"role": role, "path": str(self.path), "kind": self.kind,
                             "sha256": self.sha256}
        if self.placement is not None:
            d["placement"] = self.placement.to_dict()
        return d


class EditSession:
    """A loaded model plus the bookkeeping every edit needs.

    ``align``: the source's face (``largest`` or a number; None: fit); ``align_refs``: align
    the references too (their largest face); ``source_box``: whether the caller can give a
    box of the source (for the advice of the no-face error). ``fast``: the fast path this
    device has; ``runtime``: given options instead (a replay passes the recorded ones)."""

    def __init__(self, model_path: str | os.PathLike[str], device: str, batch_size: int = 8,
                 align: str | None = None, align_refs: bool = False,
                 source_box: bool = True, fast: bool = False,
                 runtime: RuntimeOptions | None = None) -> None:
        from stylemapgan.editing.editor import Editor
        from stylemapgan.files import sha256_file
        from stylemapgan.nn.runtime import RuntimeOptions
        from stylemapgan.utils import resolve_device

        self.model_path = Path(model_path)
        self.device = resolve_device(device)
        if runtime is None and fast:
            runtime = RuntimeOptions.fastest(self.device)
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
        return Input(p, "image", digest, pixels=sq.pixels, placement=sq.placement, photo=sq.photo,
                     landmarks=sq.landmarks)

    def region_mask(self, x: Input, names: str, grow: float = 0.0) -> np.ndarray:
        """The union of the named regions (``"mouth"``, ``"eyes,brows"``) of an input image in
        the model's square [size, size] float32: an avatar's part masks, or a photo's face
        regions (from the landmarks its alignment used, else from the largest face found).
        ``grow``: pixels of the image. A name the image does not have is a one-line error
        naming the image and the regions it has."""
        from stylemapgan.data.regions import region_mask
        from stylemapgan.errors import InputError

        if x.kind != "image":
            raise InputError(f"{x.path}: named regions are found in a photo, but this is a saved "
                             "stylemap; give the photo it was projected from, or a --mask")
        return region_mask(x.path, names, self.size, x.placement, grow=grow,
                           landmarks=x.landmarks, aligner=self.aligner)

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

    def paste(self, src: Input, frame: np.ndarray, mask: np.ndarray | None = None, *,
              space: str = "w", mask_mode: str = "area", area: str = "mask",
              mode: str = "replace", feather: float = 8.0) -> np.ndarray:
        """``frame`` (the edit of ``src``) put back into ``src``'s photo, in the photo file's
        kind of pixels (:func:`in_photo_mode`): only inside ``mask``'s paste area
        (:func:`~stylemapgan.editing.regions.paste_mask`; no mask: the whole square). ``mode``:
        ``replace`` the pixels, or add the edit's change (``residual``)."""
        from stylemapgan.editing.regions import paste_mask
        from stylemapgan.errors import InputError
        from stylemapgan.imaging.placement import paste_back

        if src.photo is None or src.placement is None:
            raise InputError(f"--paste-back needs the source photo: give the image {src.path.name} "
                             "was projected from instead of the stylemap")
        if mask is not None:
            mask = paste_mask(self.config, mask, space=space, mode=mask_mode, area=area)
        recon = None
        if mode == "residual":
            from stylemapgan.imaging.images import to_uint8

            recon = to_uint8(self.editor.reconstruct(src.w))[0]
        pasted = paste_back(src.photo, frame, src.placement, feather=feather, mask=mask,
                            mode=mode, reconstruction=recon)
        return in_photo_mode(pasted, src.path)

    def write(self, out: Path, *, operation: str, argv: list[str], frames: np.ndarray,
              tiles: Sequence[np.ndarray], inputs: Sequence[tuple[str, Input]],
              parameters: dict[str, Any], paste: np.ndarray | None = None,
              extra_files: Sequence[tuple[str, str]] = (), overwrite: bool = False,
              gif_ms: int = 80) -> list[Path]:
        """Write the frames, the animation, grid.png, pasted.png (``paste``) and record.json
        (``argv``: the edit's command line after ``stylemapgan``, for replays); returns the
        files written, record.json last."""
        from stylemapgan.imaging.images import save_png

        written = write_frames(out, frames, tiles, overwrite=overwrite, gif_ms=gif_ms)
        if paste is not None:
            written.append(save_png(paste, out / "pasted.png", overwrite=overwrite))
        record = write_record(out, operation=operation, argv=argv, session=self, inputs=inputs,
                              extra_files=extra_files, parameters=parameters, outputs=written,
                              overwrite=overwrite)
        return [*written, record]

    def preview(self, x: Input) -> np.ndarray:
        """What to show for an input in a grid: the fitted photo, or a stylemap's rendering."""
        from stylemapgan.imaging.images import to_uint8

        if x.pixels is not None:
            return x.pixels
        return to_uint8(self.editor.render(x.w))[0]


# --------------------------------------------------------------------------- outputs
def in_photo_mode(pasted: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
    """The pasted photo in its file's kind of pixels: grayscale stays grayscale, and a photo
    with transparency keeps its own alpha channel (EXIF orientation applied, as on reading)."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        mode = im.mode
        if mode in ("L", "I", "I;16", "I;16B", "I;16L", "F", "1"):
            return np.asarray(Image.fromarray(pasted).convert("L"))
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
            alpha = np.asarray(ImageOps.exif_transpose(im).convert("RGBA").getchannel("A"))
            return np.dstack([pasted, alpha])
    return pasted


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


def write_record(out: Path, *, operation: str, argv: list[str], session: EditSession,
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


def replay_web_record(editor: Editor, record: dict[str, Any], where: str, out: Path, *,
                      overwrite: bool = False) -> tuple[list[str], str]:
    """Run the edit a web editor record describes (:meth:`Editor.replay_web_record`) and write
    its frames into ``out`` with the recorded PNG level (so the bytes match) and the record
    beside them. Returns the frame names and the method used."""
    from stylemapgan.editing.record import dumps, frame_names
    from stylemapgan.files import atomic_write
    from stylemapgan.imaging.images import save_png

    painted = editor.replay_web_record(record, where)
    level = int(record.get("png_compress_level", 1))
    names = frame_names(len(painted.frames))
    for name, frame in zip(names, painted.frames, strict=True):
        save_png(frame, out / name, overwrite=overwrite, compress_level=level)
    with atomic_write(out / "record.json", overwrite=overwrite) as tmp:
        tmp.write_text(dumps(record))
    return names, painted.method
