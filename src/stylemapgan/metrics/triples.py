"""Edit triples (source, reference, mask) for the editing metrics, from a JSONL file or folders.

``--edit-triples`` of ``stylemapgan evaluate``: either a JSONL file, one triple per line,
``{"src": "a.png", "ref": "b.png", "mask": "m.png", "part": "hair"}`` (paths relative to the
file; "part" optional), or a folder with ``src/``, ``ref/`` and ``mask/`` subfolders holding
files of the same name, or a folder of such folders, one per part. :func:`edit_batches` turns
them into :class:`~stylemapgan.metrics.editing.EditBatch` batches at the model's resolution.
This module imports PyTorch and the image code only when images are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stylemapgan.metrics.editing import EditBatch


@dataclass(frozen=True)
class Triple:
    src: Path
    ref: Path
    mask: Path
    part: str


def _stems(folder: Path) -> dict[str, Path]:
    from stylemapgan.data.datasets import is_image_name

    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and is_image_name(f.name):
            out.setdefault(f.stem, f)
    return out


def _triples_from_dir(folder: Path, part: str) -> list[Triple]:
    from stylemapgan.errors import InputError

    src, ref, mask = (_stems(folder / d) for d in ("src", "ref", "mask"))
    names = sorted(set(src) & set(ref) & set(mask))
    unmatched = sorted((set(src) | set(ref) | set(mask)) - set(names))
    if unmatched:
        raise InputError(f"{folder}: {len(unmatched)} file name(s) are not in all of src/, ref/ "
                         f"and mask/ (e.g. {unmatched[0]!r}); every triple needs all three")
    return [Triple(src[n], ref[n], mask[n], part) for n in names]


def read_triples(path: str | os.PathLike[str]) -> list[Triple]:
    """Edit triples from a JSONL file or a src/ref/mask folder (or a folder of part folders)."""
    from stylemapgan.errors import InputError

    p = Path(path)
    if p.is_file():
        triples = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                paths = [p.parent / str(rec[k]) for k in ("src", "ref", "mask")]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{p}, line {i}: expected a JSON object with src, ref and mask "
                                 "paths (and optionally part)") from None
            for f in paths:
                if not f.is_file():
                    raise InputError(f"{p}, line {i}: {f} not found")
            triples.append(Triple(*paths, str(rec.get("part", "all"))))
    elif p.is_dir():
        if all((p / d).is_dir() for d in ("src", "ref", "mask")):
            triples = _triples_from_dir(p, "all")
        else:
            parts = [d for d in sorted(p.iterdir())
                     if d.is_dir() and all((d / s).is_dir() for s in ("src", "ref", "mask"))]
            if not parts:
                raise InputError(f"{p}: expected src/, ref/ and mask/ subfolders (or one folder "
                                 "per part holding them), or a JSONL file")
            triples = [t for d in parts for t in _triples_from_dir(d, d.name)]
    else:
        raise InputError(f"--edit-triples {p}: not found")
    if not triples:
        raise InputError(f"--edit-triples {p}: no triples")
    return triples


def check_triples(triples: list[Triple]) -> None:
    """Header-only checks of every triple (readable images, mask size = source size), so bad
    files stop the run before the long work starts."""
    from PIL import Image

    from stylemapgan.data.datasets import check_image_header
    from stylemapgan.errors import InputError

    for t in triples:
        for f in (t.src, t.ref, t.mask):
            problem = check_image_header(f, str(f))
            if problem:
                raise InputError(f"{f}: {problem}")
        with Image.open(t.src) as a, Image.open(t.mask) as b:
            if a.size != b.size:
                raise InputError(f"{t.mask}: mask is {b.size[0]}x{b.size[1]} but the source "
                                 f"{t.src.name} is {a.size[0]}x{a.size[1]}; they must match")


def load_triple(t: Triple, size: int):
    """(src [3,R,R], ref [3,R,R], mask [1,R,R] in {0, 1}) at the model's resolution.

    The photos are placed as the editor places them (center crop); the mask is read like an
    edit's mask image, brought to the square with the source's placement by the same soft
    resampler, then made hard with :func:`stylemapgan.imaging.masks.binarize` (the metric
    needs a clear inside and outside)."""
    import torch

    from stylemapgan.errors import InputError
    from stylemapgan.imaging.images import from_uint8, load_gray, load_rgb
    from stylemapgan.imaging.masks import binarize
    from stylemapgan.imaging.placement import fit_gray, fit_rgb, place

    src_img, ref_img = load_rgb(t.src), load_rgb(t.ref)
    mask_arr = load_gray(t.mask)
    if mask_arr.shape[::-1] != src_img.size:
        raise InputError(f"{t.mask}: mask is {mask_arr.shape[1]}x{mask_arr.shape[0]} but the source "
                         f"{t.src.name} is {src_img.size[0]}x{src_img.size[1]}; they must match")
    pl = place(src_img.size, size)
    src = from_uint8(fit_rgb(src_img, pl))[0]
    ref = from_uint8(fit_rgb(ref_img, place(ref_img.size, size)))[0]
    m = torch.from_numpy(binarize(fit_gray(mask_arr, pl)))[None]
    return src, ref, m




def edit_batches(triples: list[Triple], size: int,
                 batch_size: int) -> Callable[[], Iterator[EditBatch]]:
    """A factory of :class:`~stylemapgan.metrics.editing.EditBatch` batches of ``triples``,
    each read when its batch is reached (the files are read again on each call)."""

    def batches() -> Iterator[EditBatch]:
        import torch

        from stylemapgan.metrics.editing import EditBatch

        for i in range(0, len(triples), batch_size):
            group = triples[i: i + batch_size]
            chunk = [load_triple(t, size) for t in group]
            yield EditBatch(torch.stack([c[0] for c in chunk]), torch.stack([c[1] for c in chunk]),
                            torch.stack([c[2] for c in chunk]), [t.part for t in group])

    return batches
