"""``stylemapgan demo``: StyleMapGAN at work on the packaged avatars, no files needed."""

from __future__ import annotations

import argparse

from stylemapgan.commands._common import (
    add_device,
    add_fast,
    add_model,
    add_overwrite,
    add_parser,
    fast_runtime,
    resolve_model,
    writes_folder,
)

OUTPUTS = ("reconstruction.png", "local_edit.png", "interpolation.png", "interpolation.gif",
           "style_mix.png")
#: The W+ layers style_mix.png takes from B: the last two, at the model's full resolution.
MIX_LAYERS = "colour"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "demo", help="project and edit the packaged avatar gallery; writes result grids",
        description="""
            Run the main StyleMapGAN operations on the eight avatars shipped with the package,
            with the embedded model (or --model, if it is trained on 64 px avatars too):

              reconstruction.png   originals (top) and G(E(x)) reconstructions (bottom)
              local_edit.png       hair transplanted in W+: source, reference, mask, result
              interpolation.png    eight steps from one avatar to another in W (and a .gif)
              style_mix.png        rows A, B and the result: A's shapes with B's colours
                                   and texture (B's last two W+ layers, at full
                                   resolution: edit mix --layers colour)

            Everything runs on the CPU in seconds.""",
        examples="""
            stylemapgan demo --out demo
            stylemapgan demo --out demo --overwrite --device cpu
            stylemapgan demo --out demo_fast --fast""",
    )
    add_model(p)
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    add_device(p)
    add_fast(p)
    add_overwrite(p)
    p.set_defaults(func=writes_folder(run))


def run(args: argparse.Namespace) -> int:
    args.model = resolve_model(args.model)
    from pathlib import Path

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
    from stylemapgan.utils import resolve_device

    out = Path(args.out)
    check_writable([out / name for name in OUTPUTS], args.overwrite)
    device = resolve_device(args.device)
    editor = Editor.load(args.model, device, runtime=fast_runtime(args.fast, device))
    folder = AvatarFolder(gallery_dir())
    records = folder.records()
    if editor.size != folder.size:
        raise InputError(f"{args.model} makes {editor.size} px images, the gallery is "
                         f"{folder.size} px: the demo needs a model trained on 64 px avatars")
    images = torch.cat([from_uint8(np.asarray(load_rgb(folder.image_path(r)))) for r in records])
    hair = torch.stack([torch.from_numpy(folder.load_mask(r, "hair")) for r in records])[:, None].float()
    n = len(records)

    w = editor.project(images)
    recon = editor.reconstruct(w)
    mse = float(((recon.clamp(-1, 1) - images) ** 2).mean())
    save_png(make_grid(to_uint8(torch.cat([images, recon])), ncols=n,
                       row_labels=["original", "reconstructed"]),
             out / "reconstruction.png", overwrite=args.overwrite)

    # Hair from the next avatar: the region both hairstyles cover, grown by 2 pixels.
    ref_idx = [(i + 1) % n for i in range(n)]
    mask = F.max_pool2d(torch.maximum(hair, hair[ref_idx]), 5, stride=1, padding=2)
    edited = editor.local_edit(w, w[ref_idx], mask, space="wplus")
    rows = [torch.stack([images[i], images[j], mask[i].expand(3, -1, -1) * 2 - 1, edited[i]])
            for i, j in enumerate(ref_idx)]
    save_png(make_grid(to_uint8(torch.cat(rows)), ncols=4,
                       col_labels=["source", "reference", "hair mask", "result"]),
             out / "local_edit.png", overwrite=args.overwrite)

    frames = to_uint8(editor.interpolate(w[0], w[3], 8, space="w"))
    save_png(make_grid(frames, ncols=8, col_labels=["A"] + [""] * 6 + ["B"]),
             out / "interpolation.png", overwrite=args.overwrite)
    save_gif(frames, out / "interpolation.gif", duration_ms=120, overwrite=args.overwrite)

    # On a 64 px model the reference's "coarse" split (B gives all but the first two layers)
    # is nearly B's own reconstruction; B's two full-resolution layers alone visibly mix.
    mixed = editor.mix(w[:4], w[4:8], MIX_LAYERS)
    save_png(make_grid(to_uint8(torch.cat([images[:4], images[4:8], mixed])), ncols=4,
                       row_labels=["A", "B", "A + B's colours"]),
             out / "style_mix.png", overwrite=args.overwrite)

    print(f"reconstruction MSE on the {n} gallery avatars: {mse:.4f} (images in [-1, 1])"
          + (f"; fast path: {editor.runtime.describe()}" if args.fast else ""))
    for name in OUTPUTS:
        print(f"wrote {out / name}")
    return 0
