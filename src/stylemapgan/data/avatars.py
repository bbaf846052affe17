"""The Open Peeps avatar dataset: rebuild it with Node.js, read its manifest and part masks.

The images are DiceBear "Open Peeps" avatars (artwork by Pablo Stanley, CC0) rendered by
``tools/avatars/render.mjs`` of this repository, which needs Node.js and the npm packages locked
in ``tools/avatars/package-lock.json`` (``npm ci --prefix tools/avatars``). Everything here
except :func:`render_avatars` works without Node.

A dataset folder holds::

    manifest.json                  settings, package versions, one record per image
    train/ val/ test/              <name>.png, RGB; the split of seed s: s % 10 <= 7 train,
                                   8 val, 9 test
    masks/<part>/<name>.png        8-bit grayscale, 0 or 255, for each part in the record's
                                   "parts" (background, skin, clothing, head, hair, face,
                                   face_region and, when present, facial_hair, glasses)

A small gallery of test-split avatars with their masks ships inside the package
(:func:`gallery_dir`), so demos and tests have real images without any download.

Named regions (:data:`AVATAR_REGIONS`, :meth:`AvatarFolder.regions`): the part masks under the
names the face photos use (:mod:`stylemapgan.imaging.face_regions`) where they mean the same
thing, e.g. ``face`` is the head without its hair (the dataset's part ``face`` is the
expression, here called ``features``). The expression is drawn as one part, so an avatar has no
separate ``eyes`` or ``mouth``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from stylemapgan.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: ``format`` value of the manifests render.mjs writes.
MANIFEST_FORMAT = "stylemapgan-avatars-1"
#: Environment variable naming a folder with render.mjs and its installed node_modules.
TOOL_ENV = "STYLEMAPGAN_AVATARS_TOOL"
SPLITS = ("train", "val", "test")
#: Packages render.mjs imports (installed by ``npm ci`` into the tool folder).
NODE_PACKAGES = ("@dicebear/core", "@dicebear/collection", "@resvg/resvg-js")


def split_of(seed: int) -> str:
    """The split a seed belongs to (the rule render.mjs applies)."""
    r = seed % 10
    return "train" if r <= 7 else "val" if r == 8 else "test"


def name_of(seed: int) -> str:
    return f"seed{seed:06d}"


# --------------------------------------------------------------------------- the renderer
def tool_dir() -> Path:
    """The folder holding render.mjs: ``$STYLEMAPGAN_AVATARS_TOOL`` or the repository checkout
    this package runs from (``tools/avatars``)."""
    env = os.environ.get(TOOL_ENV)
    if env:
        path = Path(env)
        if not (path / "render.mjs").is_file():
            raise ConfigError(f"{TOOL_ENV}={env} has no render.mjs; point it at the "
                              "tools/avatars folder of a stylemapgan checkout")
        return path
    # src/stylemapgan/data/avatars.py -> the checkout root is three folders above data/.
    path = Path(__file__).resolve().parents[3] / "tools" / "avatars"
    if not (path / "render.mjs").is_file():
        raise ConfigError("the avatar renderer (tools/avatars/render.mjs) is not installed with "
                          "the package; run from a checkout of the stylemapgan repository or set "
                          f"{TOOL_ENV} to its tools/avatars folder")
    return path


def node_status(folder: Path | None = None) -> tuple[str | None, str]:
    """``(node executable or None, reason)``: whether render.mjs can run from ``folder``."""
    node = shutil.which("node")
    if node is None:
        return None, "Node.js (the `node` command) is not installed"
    try:
        folder = folder or tool_dir()
    except ConfigError as exc:
        return None, str(exc)
    missing = [p for p in NODE_PACKAGES if not (folder / "node_modules" / p / "package.json").is_file()]
    if missing:
        return None, (f"the npm packages of {folder} are not installed ({', '.join(missing)}); "
                      f"run `npm ci --prefix {folder}`")
    return node, "ok"


def require_node() -> tuple[str, Path]:
    """``(node executable, tool folder)``, or :class:`ConfigError` saying what to install."""
    node = shutil.which("node")
    if node is None:
        raise ConfigError("cannot render avatars: Node.js (the `node` command) is not installed; "
                          "install Node.js 18 or newer, then run `npm ci --prefix tools/avatars`")
    folder = tool_dir()
    node, reason = node_status(folder)
    if node is None:
        raise ConfigError(f"cannot render avatars: {reason}")
    return node, folder


def render_avatars(out: str | os.PathLike[str], *, size: int = 64, seeds: Sequence[int],
                   masks: bool = True, overwrite: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Render the avatars of ``seeds`` (and their masks) into ``out`` with Node.js; returns the
    folder's manifest. Adds to an existing folder built with the same settings."""
    seeds = sorted(set(int(s) for s in seeds))
    if not seeds:
        raise InputError("no seeds to render")
    if seeds[0] < 0 or seeds[-1] > 999_999:
        raise InputError(f"avatar seeds must be in 0..999999, got {seeds[0]}..{seeds[-1]}")
    if not 16 <= size <= 512:
        raise InputError(f"avatar size must be in 16..512, got {size}")
    node, folder = require_node()
    cmd = [node, str(folder / "render.mjs"), "--out", str(out), "--size", str(size),
           "--seeds", _ranges(seeds), "--progress"]
    if not masks:
        cmd.append("--no-masks")
    if overwrite:
        cmd.append("--overwrite")
    log.info("running %s", " ".join(cmd))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "progress" and progress is not None:
                progress(int(parts[1]), int(parts[2]))
            elif parts and parts[0] != "progress":
                log.info("render.mjs: %s", line.rstrip())
        err = proc.stderr.read()
        rc = proc.wait()
    if rc != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        first = next((ln for ln in lines if ln.startswith("error: ")), None)
        if rc == 2 and first:
            raise InputError(first[len("error: "):])
        raise ConfigError(f"render.mjs failed (exit {rc}): {' | '.join(lines[-5:]) or 'no output'}")
    return read_manifest(out)


def _ranges(seeds: Sequence[int]) -> str:
    """Sorted seeds -> "0-7,19,29"."""
    out: list[str] = []
    start = prev = seeds[0]
    for s in [*seeds[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(f"{start}-{prev}" if prev > start else str(start))
        if s is not None:
            start = prev = s
    return ",".join(out)


# --------------------------------------------------------------------------- reading a dataset
def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an avatar folder, checked for its format."""
    path = Path(root) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; {root} is not an avatar dataset (build one with "
                         "`stylemapgan make-avatars`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc}); rebuild the folder") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: not a {MANIFEST_FORMAT} manifest; rebuild the folder with "
                         "`stylemapgan make-avatars`")
    return data


class AvatarFolder:
    """A rendered avatar dataset: its records, image files and part masks."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        try:
            self.size = int(self.manifest["settings"]["size"])
            self.parts: dict[str, str] = dict(self.manifest.get("parts", {}))
            self._by_name = {r["name"]: r for r in self.manifest["images"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{self.root / 'manifest.json'}: incomplete manifest ({exc!r}); "
                             "rebuild the folder") from None

    def __len__(self) -> int:
        return len(self._by_name)

    def records(self, split: str | None = None) -> list[dict[str, Any]]:
        """The image records (all, or those of one split), in seed order."""
        if split is not None and split not in SPLITS:
            raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return [r for r in self.manifest["images"] if split is None or r["split"] == split]

    def record(self, key: str | int) -> dict[str, Any]:
        """The record of an image by name (``seed000019``) or seed (19)."""
        name = name_of(key) if isinstance(key, int) else key
        if name not in self._by_name:
            raise InputError(f"{self.root} has no avatar {name}")
        return self._by_name[name]

    def image_path(self, record: dict[str, Any]) -> Path:
        return self.root / record["file"]

    def mask_path(self, record: dict[str, Any], part: str) -> Path | None:
        """Where the mask of ``part`` lies; None when the image lacks the part (no glasses)."""
        self._check_part(part)
        if part not in record.get("parts", {}):
            return None
        return self.root / "masks" / part / f"{record['name']}.png"

    def load_mask(self, record: dict[str, Any], part: str) -> np.ndarray:
        """The mask of ``part`` as a bool array [size, size]; all False when the image lacks it."""
        from PIL import Image

        path = self.mask_path(record, part)
        if path is None:
            return np.zeros((self.size, self.size), dtype=bool)
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable mask ({exc}); rebuild the dataset") from None
        if arr.shape != (self.size, self.size):
            raise InputError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]}, expected "
                             f"{self.size}x{self.size}; rebuild the dataset")
        return arr >= 128

    def regions(self, record: dict[str, Any], names: str | Sequence[str] | None = None, *,
                grow: int = 0) -> dict[str, np.ndarray]:
        """The named regions of an avatar (:data:`AVATAR_REGIONS`) as float32 [size, size]
        masks of 0 and 1, each grown by ``grow`` pixels (negative: shrunk). ``names``: some
        of them (a list or ``"hair,glasses"``; default: all the avatar has); one it lacks is
        a one-line error naming the image and listing the regions it has."""
        return _avatar_regions(self, record, names, grow=grow)

    def _check_part(self, part: str) -> None:
        if part not in self.parts:
            raise InputError(f"unknown avatar part {part!r}; {self.root} has masks for "
                             f"{', '.join(self.parts) or 'no parts (built with --no-masks)'}")


# --------------------------------------------------------------------------- named regions
#: The named regions of an avatar: name -> (how it is made of the dataset's parts, meaning).
#: Names shared with face photos (:data:`stylemapgan.imaging.face_regions.FACE_REGIONS`):
#: background, face, skin, features, features_hull.
AVATAR_REGIONS: dict[str, str] = {
    "background": "background: pixels no drawn layer covers",
    "face": "head - hair: the face with its ears and what lies on it (as a photo's face)",
    "skin": "skin & head: the visible skin of the face and ears (as a photo's skin)",
    "features": "the part 'face': eyes, brows, nose and mouth strokes (as a photo's features)",
    "features_hull": "the part 'face_region': their convex hull (as a photo's features_hull)",
    "neck": "skin - head: the skin of the neck and chest",
    "head": "head: the head's silhouette with hair or headwear",
    "hair": "hair: hair or headwear",
    "clothing": "clothing",
    "facial_hair": "facial_hair: beard or moustache (when the avatar has one)",
    "glasses": "glasses: frames and dark lenses (when the avatar has them)",
}
#: Each region as (parts added, parts taken away).
_REGION_PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    # name: (parts united, parts removed, intersect with head)
    "background": (("background",), (), False),
    "face": (("head",), ("hair",), False),
    "skin": (("skin",), (), True),
    "features": (("face",), (), False),
    "features_hull": (("face_region",), (), False),
    "neck": (("skin",), ("head",), False),
    "head": (("head",), (), False),
    "hair": (("hair",), (), False),
    "clothing": (("clothing",), (), False),
    "facial_hair": (("facial_hair",), (), False),
    "glasses": (("glasses",), (), False),
}


def _grow_binary(mask: np.ndarray, grow: int) -> np.ndarray:
    """A bool mask grown (``grow`` > 0) or shrunk (< 0) by ``|grow|`` pixels (a disc)."""
    if grow == 0:
        return mask
    import torch
    import torch.nn.functional as F

    r = abs(int(grow))
    yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
    disc = torch.from_numpy((xx * xx + yy * yy <= r * r + r).astype(np.float32))[None, None]
    x = torch.from_numpy(mask if grow > 0 else ~mask).float()[None, None]
    hit = F.conv2d(x, disc, padding=r)[0, 0].numpy() > 0.5
    return hit if grow > 0 else ~hit


def _region_names_of(record: dict[str, Any]) -> list[str]:
    have = set(record.get("parts", {}))
    return [n for n, (plus, minus, head) in _REGION_PARTS.items()
            if all(p in have for p in plus) and (not head or "head" in have)]


def avatar_region_names(record: dict[str, Any]) -> list[str]:
    """The named regions an avatar has (``glasses`` only when it wears them, ...)."""
    return _region_names_of(record)


def _avatar_regions(folder: AvatarFolder, record: dict[str, Any],
                    names: str | Sequence[str] | None = None, *, grow: int = 0) -> dict[str, np.ndarray]:
    from stylemapgan.imaging.face_regions import check_region_names

    have = _region_names_of(record)
    chosen = have if names is None else check_region_names(
        names, have, str(folder.image_path(record)))
    if abs(int(grow)) > folder.size:
        raise InputError(f"region grow {grow} px is larger than the {folder.size} px avatar")
    cache: dict[str, np.ndarray] = {}

    def part(p: str) -> np.ndarray:
        if p not in cache:
            cache[p] = folder.load_mask(record, p)
        return cache[p]

    out = {}
    for name in chosen:
        plus, minus, head = _REGION_PARTS[name]
        m = np.logical_or.reduce([part(p) for p in plus])
        for p in minus:
            m = m & ~part(p)
        if head:
            m = m & part("head")
        out[name] = _grow_binary(m, int(grow)).astype(np.float32)
    return out


def avatar_of_image(path: str | os.PathLike[str]) -> tuple[AvatarFolder, dict[str, Any]] | None:
    """The dataset and record of an avatar image (``ROOT/<split>/<name>.png`` with
    ``ROOT/manifest.json``, e.g. a gallery image), or None when ``path`` is not one."""
    p = Path(path)
    root = p.parent.parent
    if p.parent.name not in SPLITS or not (root / "manifest.json").is_file():
        return None
    try:
        folder = AvatarFolder(root)
        record = folder.record(p.stem)
    except InputError:
        return None
    if Path(record.get("file", "")).as_posix() != f"{p.parent.name}/{p.name}":
        return None
    return folder, record


# --------------------------------------------------------------------------- the gallery
def gallery_dir() -> Path:
    """The avatar folder shipped inside the package (a few test-split images and masks)."""
    path = Path(str(resources.files("stylemapgan") / "assets" / "gallery"))
    if not (path / "manifest.json").is_file():
        raise ConfigError(f"the packaged avatar gallery is missing ({path}); reinstall stylemapgan")
    return path


def gallery_images() -> list[Path]:
    """The gallery's avatar PNGs, in seed order."""
    folder = AvatarFolder(gallery_dir())
    return [folder.image_path(r) for r in folder.records()]
