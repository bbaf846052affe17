"""A server-side listing of a folder of images, addressed by opaque ids only.

The folder is scanned once when the server starts; clients see ids and display names, and an id
is only ever looked up in this listing, so no request value becomes a file path.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from stylemapgan.errors import ConfigError
from stylemapgan.imaging.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GalleryItem:
    id: str
    name: str
    path: Path


class Gallery:
    """Image files under ``root`` (recursively, symlinked folders not followed, links to files
    outside ``root`` and hidden files skipped), at most ``max_items``, sorted by relative path."""

    def __init__(self, root: str | os.PathLike[str] | None, max_items: int = 2000) -> None:
        self.root = Path(root) if root is not None else None
        self._items: dict[str, GalleryItem] = {}
        self.truncated = False
        if self.root is None:
            return
        if not self.root.is_dir():
            raise ConfigError(f"gallery {self.root} is not a folder; pass --gallery DIR with images "
                              "in it, or leave it out to upload images only")
        found: list[Path] = []
        real_root = self.root.resolve()
        outside = 0
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                if fn.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                    continue
                if p.is_symlink() and not p.resolve().is_relative_to(real_root):
                    outside += 1  # a link to a file outside the gallery is never served
                    continue
                found.append(p)
        if outside:
            log.warning("gallery %s: left out %d link(s) to files outside it", self.root, outside)
        found.sort(key=lambda p: p.relative_to(self.root).as_posix())
        if len(found) > max_items:
            log.warning("gallery %s has %d images; listing the first %d", self.root, len(found), max_items)
            found = found[:max_items]
            self.truncated = True
        for p in found:
            rel = p.relative_to(self.root).as_posix()
            gid = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:16]
            self._items[gid] = GalleryItem(gid, rel, p)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[GalleryItem]:
        return list(self._items.values())

    def get(self, gid: str) -> GalleryItem | None:
        return self._items.get(gid)
