"""The main StyleMapGAN operations on the packaged avatar gallery, as result grids: the work
of ``stylemapgan demo`` as one library call, :func:`run_demo`.

The eight gallery avatars are projected and reconstructed, their hair is transplanted from
the next avatar by a local edit in W+, one avatar is interpolated into another in W, and
four are style-mixed with four others (the mixed rows take B's :data:`MIX_LAYERS`). The
grids go to :data:`OUTPUTS` in the output folder; nothing is written when one of them
exists already and overwriting was not asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIX_LAYERS", "OUTPUTS", "DemoReport", "DemoRequest", "run_demo"]

#: The files :func:`run_demo` writes, in the order it reports them.
OUTPUTS = ("reconstruction.png", "local_edit.png", "interpolation.png", "interpolation.gif",
           "style_mix.png")
#: The W+ layers style_mix.png takes from B: the last two, at the model's full resolution.
MIX_LAYERS = "colour"


@dataclass(frozen=True)
class DemoRequest:
    """What ``stylemapgan demo`` was asked: a model trained on the gallery's size (64 px),
    the output folder, the device, the fast path this device has
    (:meth:`~stylemapgan.nn.runtime.RuntimeOptions.fastest`) and whether to overwrite."""

    model: str
    out: str = "demo"
    device: str = "auto"
    fast: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class DemoReport:
    """What :func:`run_demo` did: the reconstruction MSE of the ``count`` avatars (clamped
    reconstructions against the originals, pixels in [-1, 1]), how the networks ran and the
    files it wrote (:data:`OUTPUTS` in ``out``)."""

    out: Path
    count: int
    mse: float
    runtime: str
    written: tuple[Path, ...]


def run_demo(req: DemoRequest) -> DemoReport:
    """Write the demo grids of the packaged avatar gallery to ``req.out`` (see the module
    notes); an :class:`~stylemapgan.errors.InputError` when the model does not make images of
    the gallery's size."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from stylemapgan.data.avatars import AvatarFolder, gallery_dir
    from stylemapgan.editing.editor import Editor
    from stylemapgan.errors import InputError
    from stylemapgan.imaging.images import (
        check_writable,
        from_uint8,
        load_rgb,
        make_grid,
        save_gif,
        save_png,
        to_uint8,
    )
    from stylemapgan.nn.runtime import RuntimeOptions
    from stylemapgan.utils import resolve_device

    out = Path(req.out)
    overwrite = req.overwrite
    check_writable([out / name for name in OUTPUTS], overwrite)
    device = resolve_device(req.device)
    editor = Editor.load(req.model, device,
                         runtime=RuntimeOptions.fastest(device) if req.fast else None)
    folder = AvatarFolder(gallery_dir())
    records = folder.records()
    if editor.size != folder.size:
        raise InputError(f"{req.model} makes {editor.size} px images, the gallery is "
                         f"{folder.size} px: the demo needs a model trained on 64 px avatars")
    images = torch.cat([from_uint8(np.asarray(load_rgb(folder.image_path(r)))) for r in records])
    hair = torch.stack([torch.from_numpy(folder.load_mask(r, "hair")) for r in records])[:, None].float()
    n = len(records)

    w = editor.project(images)
    recon = editor.reconstruct(w)
    mse = float(((recon.clamp(-1, 1) - images) ** 2).mean())
    save_png(make_grid(to_uint8(torch.cat([images, recon])), ncols=n,
                       row_labels=["original", "reconstructed"]),
             out / "reconstruction.png", overwrite=overwrite)

    # Hair from the next avatar: the region both hairstyles cover, grown by 2 pixels.
    ref_idx = [(i + 1) % n for i in range(n)]
    mask = F.max_pool2d(torch.maximum(hair, hair[ref_idx]), 5, stride=1, padding=2)
    edited = editor.local_edit(w, w[ref_idx], mask, space="wplus")
    rows = [torch.stack([images[i], images[j], mask[i].expand(3, -1, -1) * 2 - 1, edited[i]])
            for i, j in enumerate(ref_idx)]
    save_png(make_grid(to_uint8(torch.cat(rows)), ncols=4,
                       col_labels=["source", "reference", "hair mask", "result"]),
             out / "local_edit.png", overwrite=overwrite)

    frames = to_uint8(editor.interpolate(w[0], w[3], 8, space="w"))
    save_png(make_grid(frames, ncols=8, col_labels=["A"] + [""] * 6 + ["B"]),
             out / "interpolation.png", overwrite=overwrite)
    save_gif(frames, out / "interpolation.gif", duration_ms=120, overwrite=overwrite)

    # On a 64 px model the reference's "coarse" split (B gives all but the first two layers)
    # is nearly B's own reconstruction; B's two full-resolution layers alone visibly mix.
    mixed = editor.mix(w[:4], w[4:8], MIX_LAYERS)
    save_png(make_grid(to_uint8(torch.cat([images[:4], images[4:8], mixed])), ncols=4,
                       row_labels=["A", "B", "A + B's colours"]),
             out / "style_mix.png", overwrite=overwrite)
    return DemoReport(out, n, mse, editor.runtime.describe(),
                      tuple(out / name for name in OUTPUTS))
