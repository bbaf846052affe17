"""Photos -> saved stylemaps and reconstructions, batched over folders: the work of
``stylemapgan project`` as one library call, :func:`project_photos`.

Every photo is read (and, with alignment, its face found) before anything is written, so a
bad file stops the run with nothing written, or is left out with ``skip_bad``. Then the photos
are projected in batches (optionally refined by optimization), and for each photo NAME the
output folder gets NAME.stylemap.safetensors, NAME.png and the optional NAME.input.png and
NAME.error.png, and project.json describes the run.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stylemapgan.errors import InputError
from stylemapgan.utils import NoProgress

log = logging.getLogger(__name__)

__all__ = ["MSE_DEFINITION", "OUTSIDE_FACTOR", "ProjectReport", "ProjectRequest", "output_names",
           "project_photos"]

#: A photo whose reconstruction MSE is this many times the model's usual one is reported.
OUTSIDE_FACTOR = 3.0
#: What project.json's MSEs measure: the reconstruction as the PNG shows it (clamped to the
#: image range, as `demo` and `evaluate` measure it), before rounding to 8 bits.
MSE_DEFINITION = ("mean squared error between G(w) clamped to [-1, 1] (the NAME.png image, "
                  "before 8-bit rounding) and the input square, pixels in [-1, 1]")
#: Longest output name stem in bytes: NAME.stylemap.safetensors and its temporary file
#: (.NAME.stylemap.safetensors.XXXXXXXX.tmp) must fit the file system's 255 bytes.
MAX_STEM_BYTES = 200
#: What to tell the user about a photo without a face (``project`` has --box).
NO_FACE = "leave out --align and give the face's region with --box X0,Y0,X1,Y1"


@dataclass(frozen=True)
class ProjectRequest:
    """What ``stylemapgan project`` was asked (its options, checked by the parser)."""

    images: Sequence[str]
    model: str
    out: str
    fit: str = "crop"
    box: str | None = None
    align: str | None = None  # the face to align (largest or a number), None: fit
    recursive: bool = False
    batch_size: int = 8
    error_map: bool = False
    save_input: bool = False
    no_reconstruction: bool = False
    skip_bad: bool = False
    refine: int = 0
    lr: float = 0.03
    mse_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_net: str = "vgg"
    device: str = "auto"
    fast: bool = False
    overwrite: bool = False


@dataclass
class ProjectReport:
    """What :func:`project_photos` did: the project.json ``record``, the photos whose MSE is
    over :data:`OUTSIDE_FACTOR` times the model's ``typical`` one (``outside``: (path, MSE))."""

    out: Path
    record: dict[str, Any]
    runtime: str
    outside: list[tuple[Path, float]] = field(default_factory=list)
    typical: float | None = None

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.record["images"]

    @property
    def skipped(self) -> list[dict[str, str]]:
        return self.record["skipped"]


def _mse(recon: torch.Tensor, x: torch.Tensor) -> list[float]:
    """Per-image MSE of reconstructions against their inputs (:data:`MSE_DEFINITION`)."""
    return (recon.clamp(-1, 1) - x).square().flatten(1).mean(1).tolist()


def _fit_name(name: str) -> str:
    """A stem of at most MAX_STEM_BYTES: a longer one is cut and given 8 hex digits of its
    SHA-256, so two long names that share a beginning stay apart."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_STEM_BYTES:
        return name
    cut = raw[: MAX_STEM_BYTES - 9].decode("utf-8", "ignore")
    return f"{cut}_{hashlib.sha256(raw).hexdigest()[:8]}"


def output_names(paths: Sequence[Path]) -> list[str]:
    """Output names: the file stem (cut when too long for the file system), disambiguated by
    suffix and then by a counter."""
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


@dataclass
class _Photos:
    """The photos that were read, their output names and squares (aligned ones kept)."""

    paths: list[Path]
    names: list[str]
    squares: dict[Path, tuple[np.ndarray, Any]]
    bad: list[Path]
    skipped: list[dict[str, str]]


def _read_all(req: ProjectRequest, size: int, box, bar) -> _Photos:
    """Read every photo before anything is written: a bad file stops the run (or, with
    ``skip_bad``, is left out), never halfway through."""
    from stylemapgan.imaging.images import list_images
    from stylemapgan.imaging.photos import photo_square

    paths = list_images(req.images, recursive=req.recursive)
    names = output_names(paths)
    aligner = None
    if req.align is not None:
        from stylemapgan.imaging.faces import FaceAligner

        aligner = FaceAligner()
    squares: dict[Path, tuple[np.ndarray, Any]] = {}  # with align: the faces found, kept
    bad: list[tuple[Path, InputError]] = []
    progress = bar(desc="check", total=len(paths), leave=False, disable=len(paths) < 16)
    try:  # the bar is closed before an error is shown
        for path in paths:
            try:
                sq = photo_square(path, size, fit=req.fit, box=box, align=req.align,
                                  aligner=aligner, no_face=NO_FACE)
                if req.align is not None:
                    squares[path] = (sq.pixels, sq.placement)
            except InputError as exc:
                bad.append((path, exc))
            progress.update(1)
    finally:
        progress.close()
    skipped = []
    if bad:
        if not req.skip_bad:
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
    return _Photos(paths, names, squares, [p for p, _ in bad], skipped)


def _targets(req: ProjectRequest, out: Path, names: Sequence[str]) -> list[Path]:
    from stylemapgan.formats.stylemaps import SUFFIX

    targets = [out / "project.json"]
    for n in names:
        targets.append(out / f"{n}{SUFFIX}")
        if not req.no_reconstruction:
            targets.append(out / f"{n}.png")
        if req.save_input:
            targets.append(out / f"{n}.input.png")
        if req.error_map:
            targets.append(out / f"{n}.error.png")
    return targets


def _lpips(req: ProjectRequest, device):
    if not (req.refine and req.lpips_weight > 0):
        return None
    from stylemapgan.errors import StyleMapGANError
    from stylemapgan.formats.weights import load_lpips  # only refinement with LPIPS needs it

    try:
        return load_lpips(req.lpips_net, device=device)
    except StyleMapGANError as exc:
        raise type(exc)(f"{exc}; or refine with MSE only: --lpips-weight 0") from None


def _typical_mse(metadata: dict[str, Any]) -> float | None:
    """The model's usual reconstruction error (its file records it when known, e.g. from
    evaluate on a test split): photos far above it are outside what the model knows."""
    recon_info = metadata["provenance"].get("reconstruction") or {}
    typical = recon_info.get("mse") if isinstance(recon_info, dict) else None
    return float(typical) if isinstance(typical, (int, float)) and typical > 0 else None


class _Projector:
    """Projects and writes one batch at a time (the loop of :func:`project_photos`)."""

    def __init__(self, req: ProjectRequest, editor, device, photos: _Photos, box, lpips,
                 typical: float | None) -> None:
        from stylemapgan.files import sha256_file

        self.req, self.editor, self.device, self.photos, self.box = req, editor, device, photos, box
        self.lpips, self.typical = lpips, typical
        self.model_sha = sha256_file(req.model)
        self.out = Path(req.out)
        self.entries: list[dict[str, Any]] = []
        self.outside: list[tuple[Path, float]] = []

    def read(self, path: Path, name: str, size: int):
        from stylemapgan.imaging.photos import photo_square

        if path in self.photos.squares:
            pixels, placement = self.photos.squares[path]
        else:
            sq = photo_square(path, size, fit=self.req.fit, box=self.box)
            pixels, placement = sq.pixels, sq.placement
        return path, name, pixels, placement

    def project(self, chunk: list, start: int, bar) -> None:
        from stylemapgan.errors import ModelFileError
        from stylemapgan.imaging.images import from_uint8, to_uint8

        req, editor = self.req, self.editor
        x = from_uint8(np.stack([c[2] for c in chunk])).to(self.device)
        w = editor.project(x, keys=[("path", str(c[0]), start + i) for i, c in enumerate(chunk)])
        refine_info = encoder_mse = None
        if req.refine:
            bar.set_postfix_str("refining")
            encoder_mse = _mse(editor.render(w), x)
            res = editor.refine(x, w, steps=req.refine, lr=req.lr, mse_weight=req.mse_weight,
                                lpips_weight=req.lpips_weight, lpips=self.lpips)
            w, refine_info = res.w, res
        recon = editor.render(w)
        if not (torch.isfinite(w).all() and torch.isfinite(recon).all()):
            done = f" ({len(self.entries)} image(s) before it were written)" if self.entries \
                else "; nothing was written"
            raise ModelFileError(f"{req.model}: the model's output for {chunk[0][0]} is not "
                                 f"finite (NaN or infinity){done}; its weights are damaged: "
                                 "use another model file")
        mse = _mse(recon, x)
        recon_u8 = to_uint8(recon)
        for i, item in enumerate(chunk):
            projection = {"method": "encoder" if not req.refine else "encoder+refine",
                          "runtime": editor.runtime.describe(), "mse": mse[i]}
            if refine_info is not None:
                projection.update(steps=req.refine, lr=req.lr, mse_weight=req.mse_weight,
                                  lpips_weight=req.lpips_weight,
                                  lpips_net=req.lpips_net if req.lpips_weight > 0 else None,
                                  encoder_mse=encoder_mse[i],
                                  initial_loss=refine_info.initial_loss[i],
                                  final_loss=refine_info.final_loss[i])
            self.write(item, w[i: i + 1], recon_u8[i], projection)

    def write(self, item, w: torch.Tensor, recon_u8: np.ndarray, projection: dict[str, Any]) -> None:
        from stylemapgan.files import sha256_file
        from stylemapgan.formats.stylemaps import SUFFIX, save_stylemap
        from stylemapgan.imaging.images import save_png

        path, name, pixels, placement = item
        req, out = self.req, self.out
        digest = sha256_file(path)
        save_stylemap(out / f"{name}{SUFFIX}", w, config=self.editor.config,
                      model_sha256=self.model_sha, source=str(path), source_sha256=digest,
                      placement=placement, projection=projection, overwrite=req.overwrite)
        if not req.no_reconstruction:
            save_png(recon_u8, out / f"{name}.png", overwrite=req.overwrite)
        if req.save_input:
            save_png(pixels, out / f"{name}.input.png", overwrite=req.overwrite)
        if req.error_map:
            err = np.abs(recon_u8.astype(np.float32) - pixels.astype(np.float32)).mean(-1)
            save_png(np.clip(err * 2, 0, 255).astype(np.uint8), out / f"{name}.error.png",
                     overwrite=req.overwrite)
        if self.typical and projection["mse"] > OUTSIDE_FACTOR * self.typical:
            self.outside.append((path, projection["mse"]))
        self.entries.append({"name": name, "source": str(path), "sha256": digest,
                             "placement": placement.to_dict(), **projection})


def _write_record(req: ProjectRequest, pj: _Projector, skipped) -> dict[str, Any]:
    from stylemapgan import __version__
    from stylemapgan.files import atomic_write
    from stylemapgan.utils import dump_json, finite_or_none

    record = {
        "format": "stylemapgan-projection", "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stylemapgan_version": __version__, "torch_version": torch.__version__,
        "device": str(pj.device), "model": {"path": req.model, "sha256": pj.model_sha},
        "parameters": {"fit": req.fit, "box": req.box, "refine": req.refine, "lr": req.lr,
                       "mse_weight": req.mse_weight, "lpips_weight": req.lpips_weight,
                       "lpips_net": req.lpips_net, "fast": req.fast,
                       "runtime": pj.editor.runtime.describe()},
        "mean_mse": float(np.mean([e["mse"] for e in pj.entries])),
        "mse": MSE_DEFINITION,
        "images": pj.entries, "skipped": skipped,
    }
    not_finite: list[str] = []
    record = finite_or_none(record, found=not_finite)
    if not_finite:  # a model that renders NaN: say so, and keep the file valid JSON
        log.warning("project.json: %d value(s) were not finite and are written as null (%s)",
                    len(not_finite), ", ".join(not_finite[:3]))
    path = pj.out / "project.json"
    with atomic_write(path, overwrite=req.overwrite) as tmp:
        tmp.write_text(dump_json(record, str(path)))
    return record


def project_photos(req: ProjectRequest, *,
                   bar: Callable[..., Any] | None = None) -> ProjectReport:
    """Project the photos ``req`` names into ``req.out`` (see the module notes); ``req.fast``
    runs the fast path this device has (:meth:`RuntimeOptions.fastest`). ``bar``: a progress bar factory taking ``desc``,
    ``total``, ``leave`` and ``disable`` and returning an object with ``update``,
    ``set_postfix_str`` and ``close`` (``tqdm.tqdm`` fits); None shows nothing."""
    from stylemapgan.editing.editor import Editor
    from stylemapgan.formats.checkpoint import read_model_metadata
    from stylemapgan.imaging.images import check_writable
    from stylemapgan.imaging.placement import parse_box
    from stylemapgan.nn.runtime import RuntimeOptions
    from stylemapgan.utils import resolve_device

    bar = bar or NoProgress
    if req.refine and req.mse_weight + req.lpips_weight == 0:
        raise InputError("--mse-weight and --lpips-weight are both 0: nothing to optimize")
    box = parse_box(req.box) if req.box else None
    metadata = read_model_metadata(req.model)
    size = metadata["config"].size
    photos = _read_all(req, size, box, bar)
    out = Path(req.out)
    check_writable(_targets(req, out, photos.names), req.overwrite,
                   inputs=[*photos.paths, *photos.bad, req.model])
    device = resolve_device(req.device)
    runtime = RuntimeOptions.fastest(device) if req.fast else None
    editor = Editor.load(req.model, device, batch_size=req.batch_size, runtime=runtime)
    pj = _Projector(req, editor, device, photos, box, _lpips(req, device), _typical_mse(metadata))
    skipped = photos.skipped
    progress = bar(desc="project", total=len(photos.paths), leave=True, disable=False)
    try:  # the bar is closed before an error is shown
        for start in range(0, len(photos.paths), req.batch_size):
            chunk = []
            for path, name in zip(photos.paths[start: start + req.batch_size],
                                  photos.names[start: start + req.batch_size], strict=True):
                try:
                    chunk.append(pj.read(path, name, size))
                except InputError as exc:
                    if not req.skip_bad:
                        raise
                    log.warning("skipped: %s", exc)
                    skipped.append({"path": str(path), "error": str(exc)})
                    progress.update(1)
            if chunk:
                pj.project(chunk, start, progress)
                progress.update(len(chunk))
    finally:
        progress.close()
    if not pj.entries:
        raise InputError("no image could be read" + (f" ({len(skipped)} skipped)" if skipped else ""))
    record = _write_record(req, pj, skipped)
    return ProjectReport(out, record, editor.runtime.describe(), pj.outside, pj.typical)
