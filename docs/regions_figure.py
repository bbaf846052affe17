"""Make docs/regions.jpg: named regions by landmarks, and a transplant that scales and turns.

Row 1: the astronaut fixture's aligned crop with its label map, then the mouth, eyes, skin and
(approximate) background masks drawn over it (`stylemapgan regions` writes the same masks at
the photo's size). Row 2, with the embedded 64 px avatar model and two packaged gallery
avatars: the original, the reference with its `glasses` region outlined, today's transplant
(the region as it is) and two affine transplants of `stylemapgan.editing.transform` (the
same region scaled and turned, and mirrored).
Needs the faces extra.

    python docs/regions_figure.py --out docs/regions.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from stylemapgan.data.avatars import AvatarFolder, gallery_dir
from stylemapgan.editing import Editor
from stylemapgan.editing import operations as E
from stylemapgan.editing.transform import AffineRegion, Transform, transplant_affine
from stylemapgan.formats.checkpoint import default_model_path
from stylemapgan.imaging.face_regions import aligned_face_regions, label_map, label_palette
from stylemapgan.imaging.faces import FaceAligner
from stylemapgan.imaging.images import from_uint8, to_uint8
from stylemapgan.imaging.masks import as_tensor
from stylemapgan.imaging.placement import fit_rgb

PHOTO = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "photos" / "astronaut-256.jpg"
TILE = 192


def _overlay(rgb: np.ndarray, mask: np.ndarray, colour=(255, 40, 40)) -> np.ndarray:
    out = rgb.astype(np.float32) * (1 - 0.6 * mask[..., None]) + \
        np.array(colour, np.float32) * 0.6 * mask[..., None]
    return out.clip(0, 255).astype(np.uint8)


def _tile(rgb: np.ndarray, caption: str) -> Image.Image:
    img = Image.fromarray(rgb).resize((TILE, TILE), Image.Resampling.LANCZOS
                                      if rgb.shape[0] > TILE else Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (TILE, TILE + 18), (255, 255, 255))
    canvas.paste(img, (0, 0))
    ImageDraw.Draw(canvas).text((4, TILE + 3), caption, fill=(0, 0, 0))
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/regions.jpg")
    args = ap.parse_args()

    # Row 1: named regions of a real photo, in the aligned square.
    photo = Image.open(PHOTO).convert("RGB")
    ((face, pl),) = FaceAligner().align(np.asarray(photo), 256)
    crop = fit_rgb(photo, pl)
    masks = aligned_face_regions(face.landmarks, pl, "mouth,eyes,skin,background")
    labels = Image.fromarray(label_map(pl.from_photo(face.landmarks), 256), "P")
    labels.putpalette(label_palette())
    lab = np.asarray(labels.convert("RGB"))
    row1 = [_tile((crop * 0.45 + lab * 0.55).astype(np.uint8), "label map"),
            *(_tile(_overlay(crop, m), n) for n, m in masks.items())]

    # Row 2: a region of one avatar placed on another, moved vs scaled, turned and mirrored.
    folder = AvatarFolder(gallery_dir())
    a, b = folder.record(9), folder.record(79)
    ed = Editor.load(default_model_path(), device="cpu")
    imgs = np.stack([np.asarray(Image.open(folder.image_path(r)).convert("RGB")) for r in (a, b)])
    w = ed.project(from_uint8(imgs))
    region = folder.regions(b, "glasses", grow=1)["glasses"]
    mask = as_tensor(region)
    with torch.inference_mode():
        src, ref = ed.pyramid(w[:1]), ed.pyramid(w[1:])
        moved = E.transplant(src, ref, [E.Region(mask)], ed.size)
        placed = transplant_affine(src, ref, [AffineRegion(
            mask, Transform(dx=-2, dy=2, scale=1.3, angle=15))], ed.size)
        mirrored = transplant_affine(src, ref, [AffineRegion(
            mask, Transform(dx=2, dy=-2, scale=0.8, angle=-20, flip="h"))], ed.size)
        out = to_uint8(torch.cat([ed.render(src), ed.render(moved), ed.render(placed),
                                  ed.render(mirrored)]))
    outline = imgs[1].copy()
    inside = np.pad(region > 0, 1)
    edge = inside[1:-1, 1:-1] & ~(inside[2:, 1:-1] & inside[:-2, 1:-1] & inside[1:-1, 2:]
                                  & inside[1:-1, :-2])
    outline[edge] = (255, 40, 40)
    row2 = [_tile(out[0], "original (reconstructed)"), _tile(outline, "reference: glasses"),
            _tile(out[1], "transplanted as they are"), _tile(out[2], "scale=1.3 angle=15"),
            _tile(out[3], "scale=0.8 angle=-20 flip=h")]
    sheet = Image.new("RGB", (5 * TILE + 16, 2 * (TILE + 18) + 4), (255, 255, 255))
    for r, row in enumerate((row1, row2)):
        for c, t in enumerate(row):
            sheet.paste(t, (c * (TILE + 4), r * (TILE + 22)))
    sheet.save(args.out, quality=88, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
