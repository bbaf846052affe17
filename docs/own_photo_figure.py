"""Make docs/own_photo.jpg: what `--align` and `--paste-back` do to a real photo.

Panels: the photo with the detected face box, the 68 landmarks and the aligned square of the
FFHQ recipe; the aligned crop the model sees; the photo with an edit pasted back only where the
edit's mask reaches. No face model ships with the package, so the "edit" here is a synthetic
change of the crop (the mouth region tinted), pasted back in residual mode; it shows the
geometry, not a model's output. Needs the faces extra.

    python docs/own_photo_figure.py --out docs/own_photo.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stylemapgan.imaging.faces import FaceAligner, ffhq_quad, key_points
from stylemapgan.imaging.placement import fit_rgb, paste_back

PHOTO = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "photos" / "astronaut-256.jpg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/own_photo.jpg")
    ap.add_argument("--photo", default=str(PHOTO))
    ap.add_argument("--size", type=int, default=256, help="crop size (a 256 px face model's)")
    args = ap.parse_args()

    photo = Image.open(args.photo).convert("RGB")
    ((face, pl),) = FaceAligner().align(np.asarray(photo), args.size)
    crop = fit_rgb(photo, pl)

    # Panel 1: detection, landmarks, the aligned square.
    scale = 2
    big = photo.resize((photo.width * scale, photo.height * scale), Image.Resampling.LANCZOS)
    d = ImageDraw.Draw(big)
    d.rectangle([v * scale for v in face.box], outline=(52, 199, 89), width=2)
    for x, y in face.landmarks:
        d.ellipse([x * scale - 1.5, y * scale - 1.5, x * scale + 1.5, y * scale + 1.5], fill=(255, 214, 10))
    for x, y in key_points(face.landmarks):
        d.ellipse([x * scale - 4, y * scale - 4, x * scale + 4, y * scale + 4], outline=(255, 59, 48), width=2)
    c, x, y = ffhq_quad(face.landmarks)
    quad = [c - x - y, c - x + y, c + x + y, c + x - y, c - x - y]
    d.line([tuple(p * scale) for p in quad], fill=(255, 149, 0), width=3)

    # Panel 3: a synthetic edit of the crop's mouth region, pasted back (residual mode).
    mask = np.zeros((args.size, args.size), np.float32)
    s = args.size
    mask[int(0.62 * s):int(0.78 * s), int(0.30 * s):int(0.70 * s)] = 1.0
    edited = crop.astype(np.float32)
    edited[..., 0] += 60 * mask
    edited[..., 2] -= 30 * mask
    edited = np.clip(edited, 0, 255).astype(np.uint8)
    pasted = paste_back(photo, edited, pl, mask=mask, feather=3, mode="residual", reconstruction=crop)
    changed = np.abs(pasted.astype(int) - np.asarray(photo)).max(-1) > 0
    outline = Image.fromarray(pasted).resize(big.size, Image.Resampling.LANCZOS)

    h = big.height
    tile = [big, Image.fromarray(crop).resize((h, h), Image.Resampling.LANCZOS), outline]
    gap = 8
    canvas = Image.new("RGB", (sum(t.width for t in tile) + gap * (len(tile) - 1), h), "white")
    xoff = 0
    for t in tile:
        canvas.paste(t, (xoff, 0))
        xoff += t.width + gap
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, quality=88, optimize=True)
    print(f"wrote {args.out}: face {face.box} score {face.score:.2f}; paste-back changed "
          f"{int(changed.sum())} of {changed.size} photo pixels")


if __name__ == "__main__":
    main()
