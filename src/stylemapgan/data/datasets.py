"""Image datasets for training and evaluation: LMDB, plain folders and zip archives.

:func:`open_dataset` is the one entry point: it returns a ``torch.utils.data.Dataset`` whose
items are float32 tensors [3, R, R] in [-1, 1] (RGB, unflipped), whatever the source holds.

How an image becomes an R x R square: the placement of :mod:`stylemapgan.imaging.placement`,
the same as for editing. By default the largest centred square is cropped, then resized with
a Lanczos filter (sharp and alias-free when shrinking, smooth when enlarging); ``fit="pad"``
centres the image in a square and fills the rest by repeating its edge pixels;
``fit="stretch"`` resizes without keeping the aspect ratio.

LMDB layout (the one the reference implementation's preprocessing writes, which this package
also reads): key ``"length"`` -> the number of images as ASCII digits, keys
``"{size}-{index:05d}"`` -> an encoded image (JPEG in the reference, JPEG or PNG here) of side
``size``. One database may hold several sizes of every image. Databases written by
``stylemapgan prepare-data`` add ``"stylemapgan-format"`` and ``"sizes"`` keys.

Unreadable files never stop a run: folder and zip datasets check every file's header when
opened and leave out those that fail (:attr:`ImageDataset.skipped` lists them); an image that
fails later, when fully decoded, is replaced by the next readable one and logged.
"""

from __future__ import annotations

import io
import logging
import os
import weakref
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from stylemapgan.errors import InputError
from stylemapgan.imaging.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    load_rgb,
    metadata_warnings,
)
from stylemapgan.imaging.placement import FITS, Fit, fit_square

log = logging.getLogger(__name__)

#: Value of the ``stylemapgan-format`` key in LMDB datasets this package writes.
LMDB_FORMAT = "stylemapgan-lmdb-1"
#: Sizes probed when reading an LMDB that does not list its sizes (reference databases).
_PROBE_SIZES = tuple(2**k for k in range(3, 12))

# Read-only LMDB environments shared by the datasets of one process (see LMDBDataset._open_env).
_OPEN_ENVS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()



# --------------------------------------------------------------------------- image helpers
def fit_image(img: Image.Image, size: int, fit: Fit = "crop") -> Image.Image:
    """An RGB image -> ``size`` x ``size`` by :func:`stylemapgan.imaging.placement.fit_square`
    (crop, pad or stretch, then Lanczos). Square images of the right size come back unchanged."""
    if img.size == (size, size) and img.mode == "RGB":
        return img
    return Image.fromarray(fit_square(img, size, fit))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_image_header(source: str | os.PathLike[str] | io.BytesIO, name: str) -> str | None:
    """Cheap check that a file is an image Pillow can open (header only, no decoding).

    Returns ``None`` when it looks fine, else a short reason.
    """
    try:
        if isinstance(source, (str, os.PathLike)):
            import stat

            if not stat.S_ISREG(os.stat(source).st_mode):  # a FIFO would block
                return "not a regular file"
        with metadata_warnings(name, quiet=True):  # logged when it is decoded, if at all
            img = Image.open(source)
        with img:
            w, h = img.size
            if w < 1 or h < 1:
                return "image has no pixels"
            if w * h > DEFAULT_MAX_PIXELS:
                return f"{w}x{h} pixels is more than the limit of {DEFAULT_MAX_PIXELS:,}"
    except UnidentifiedImageError:
        return "not an image file (or a format Pillow cannot read)"
    except Image.DecompressionBombError:
        return "refused as a decompression bomb"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"cannot read the image ({_first_line(exc)})"
    except Exception as exc:  # any other decoder or metadata error (struct.error, ...)
        return f"cannot read the image or its metadata ({type(exc).__name__}: {_first_line(exc)})"
    return None


#: The largest zip member read: an image at the pixel limit, 16-bit RGBA, uncompressed.
MAX_MEMBER_BYTES = DEFAULT_MAX_PIXELS * 8 + (1 << 20)


def _member_too_large(info: zipfile.ZipInfo) -> str | None:
    if info.file_size > MAX_MEMBER_BYTES:
        return (f"{info.file_size:,} bytes unpacked is more than an image of "
                f"{DEFAULT_MAX_PIXELS:,} pixels takes")
    return None


def is_image_name(name: str) -> bool:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- datasets
class ImageDataset(torch.utils.data.Dataset):
    """Base class: ``len(ds)`` images, ``ds[i]`` -> float32 [3, R, R] in [-1, 1].

    Subclasses implement :meth:`_load` (index -> PIL RGB image) and :meth:`name`.
    Safe to use with DataLoader worker processes: file handles are opened lazily per process.
    """

    def __init__(self, path: Path, resolution: int, fit: Fit = "crop") -> None:
        if not isinstance(resolution, int) or resolution < 1:
            raise InputError(f"resolution must be a positive integer, got {resolution!r}")
        if fit not in FITS:
            raise InputError(f"unknown fit {fit!r}; use one of {', '.join(FITS)}")
        self.path = Path(path)
        self.resolution = resolution
        self.fit: Fit = fit
        #: (name, reason) of files left out when the dataset was opened.
        self.skipped: list[tuple[str, str]] = []

    def _kept(self, path: Path, items: list, where: str) -> list:
        """``items`` (what passed the header checks), after one warning about those skipped;
        an InputError when none is left (``where`` says where images were looked for)."""
        if self.skipped:
            log.warning("%s: skipped %d unreadable file(s), e.g. %s (%s)", path,
                        len(self.skipped), *self.skipped[0])
        if not items:
            raise InputError(f"{path}: no readable images {where}")
        return items

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def name(self, index: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_image(self, index: int) -> Image.Image:
        """The image at ``index`` as an R x R RGB PIL image (raises InputError if unreadable)."""
        return fit_image(self._load(index), self.resolution, self.fit)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index %= n
        # An image that fails to decode is replaced by the next readable one (logged), so a
        # single bad file never stops a long run.
        for attempt in range(min(n, 16)):
            i = (index + attempt) % n
            try:
                return pil_to_tensor(self.load_image(i))
            except InputError as exc:
                log.warning("skipping unreadable image: %s", exc)
        raise InputError(f"{self.path}: 16 consecutive images could not be read, starting at "
                         f"{self.name(index)}; check the dataset")

    def describe(self) -> str:
        return f"{type(self).__name__}({self.path}, {len(self)} images, {self.resolution}px)"


class LMDBDataset(ImageDataset):
    """An LMDB database in the reference layout (see the module docstring)."""

    def __init__(self, path: Path, resolution: int, fit: Fit = "crop") -> None:
        super().__init__(path, resolution, fit)
        import lmdb

        try:
            env = self._open_env()
        except lmdb.Error as exc:
            raise InputError(f"{path}: cannot open the LMDB database ({_first_line(exc)})") from None
        with env.begin(write=False) as txn:
            raw_len = txn.get(b"length")
            if raw_len is None:
                raise InputError(f"{path}: LMDB database has no 'length' key; it was not "
                                 "written by `stylemapgan prepare-data` or the reference "
                                 "preprocessing")
            try:
                self._length = int(bytes(raw_len).decode("ascii").strip())
            except ValueError:
                raise InputError(f"{path}: unreadable 'length' value {bytes(raw_len)[:20]!r}") from None
            raw_sizes = txn.get(b"sizes")
            if raw_sizes is not None:
                sizes = [int(s) for s in bytes(raw_sizes).decode("ascii").split(",") if s.strip()]
            else:
                sizes = [s for s in _PROBE_SIZES if txn.get(f"{s}-00000".encode()) is not None]
        if self._length < 1:
            raise InputError(f"{path}: the LMDB database holds no images")
        if not sizes:
            raise InputError(f"{path}: no image keys of the form SIZE-00000 found in the LMDB "
                             "database")
        self.sizes = sorted(sizes)
        if resolution in self.sizes:
            self.stored_size = resolution
        else:
            larger = [s for s in self.sizes if s > resolution]
            if not larger:
                raise InputError(
                    f"{path} holds images of size {', '.join(map(str, self.sizes))}, all smaller "
                    f"than {resolution}; rebuild it with `stylemapgan prepare-data SRC --out DATA "
                    f"--size {resolution}`"
                )
            self.stored_size = larger[0]
            log.info("%s: no %dpx images stored, downscaling the %dpx ones", path, resolution,
                     self.stored_size)
        self._env = env
        self._pid = os.getpid()

    def _open_env(self):
        """The process's read-only environment for this database.

        LMDB allows one open environment per file and process, so datasets on the same
        database share it (kept alive by the datasets that use it).
        """
        import lmdb

        real = os.path.realpath(self.path)
        st = os.stat(os.path.join(real, "data.mdb") if os.path.isdir(real) else real)
        key = (real, st.st_dev, st.st_ino, os.getpid())  # a replaced database gets a new entry
        env = _OPEN_ENVS.get(key)
        if env is None:
            # In a forked child (DataLoader worker), environments inherited from the parent
            # must not be used, and py-lmdb refuses a new one while they look open: close the
            # child's copies (this does not affect the parent's).
            for other in [k for k in list(_OPEN_ENVS.keys()) if k[:3] == key[:3] and k[3] != key[3]]:
                inherited = _OPEN_ENVS.pop(other, None)
                if inherited is not None:
                    inherited.close()
            env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False,
                            meminit=False, max_readers=64, subdir=self.path.is_dir())
            _OPEN_ENVS[key] = env
        return env

    def _txn_get(self, key: bytes) -> bytes | None:
        if self._env is None or self._pid != os.getpid():
            self._env = self._open_env()
            self._pid = os.getpid()
        with self._env.begin(write=False, buffers=False) as txn:
            return txn.get(key)

    def __len__(self) -> int:
        return self._length

    def key(self, index: int) -> bytes:
        return f"{self.stored_size}-{index:05d}".encode()

    def name(self, index: int) -> str:
        return f"{self.path}[{self.key(index).decode()}]"

    def _load(self, index: int) -> Image.Image:
        data = self._txn_get(self.key(index))
        if data is None:
            raise InputError(f"{self.name(index)}: key missing from the LMDB database")
        return load_rgb(io.BytesIO(data), name=self.name(index))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_env"], state["_pid"] = None, -1
        return state


class FolderDataset(ImageDataset):
    """Every image file under a folder (recursive; jpg, png, webp, bmp), in sorted path order."""

    def __init__(self, path: Path, resolution: int, fit: Fit = "crop", check: bool = True) -> None:
        super().__init__(path, resolution, fit)
        files = sorted(
            (p for p in self.path.rglob("*") if p.is_file()
             and is_image_name(p.relative_to(self.path).as_posix())
             and not any(part.startswith(".") for part in p.relative_to(self.path).parts[:-1])),
            key=lambda p: p.relative_to(self.path).as_posix(),
        )
        if check:
            good = []
            for p in files:
                reason = check_image_header(p, str(p))
                if reason is None:
                    good.append(p)
                else:
                    self.skipped.append((str(p), reason))
            files = good
        self.files = self._kept(path, files, f"found (looked for {', '.join(IMAGE_SUFFIXES)} "
                                             "files, recursively)")

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files[index])

    def _load(self, index: int) -> Image.Image:
        return load_rgb(self.files[index])


class ZipDataset(ImageDataset):
    """Every image file inside a zip archive, in sorted member-name order."""

    def __init__(self, path: Path, resolution: int, fit: Fit = "crop", check: bool = True) -> None:
        super().__init__(path, resolution, fit)
        try:
            with zipfile.ZipFile(self.path) as zf:
                members = sorted(
                    i.filename for i in zf.infolist()
                    if not i.is_dir() and not i.filename.startswith("__MACOSX/")
                    and is_image_name(i.filename)
                )
                if check:
                    good = []
                    for m in members:
                        # The size first (a small zip can hold a huge member), then only the
                        # header, read from the member's stream: never the whole file.
                        reason = _member_too_large(zf.getinfo(m))
                        if reason is None:
                            try:
                                with zf.open(m) as f:
                                    reason = check_image_header(f, m)
                            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                                self.skipped.append((f"{path}:{m}",
                                                     f"cannot extract ({_first_line(exc)})"))
                                continue
                        if reason is None:
                            good.append(m)
                        else:
                            self.skipped.append((f"{path}:{m}", reason))
                    members = good
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{path}: not a readable zip archive ({_first_line(exc)})") from None
        self.members = self._kept(path, members, "in the zip archive (looked for "
                                                 f"{', '.join(IMAGE_SUFFIXES)} files)")
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.members)

    def name(self, index: int) -> str:
        return f"{self.path}:{self.members[index]}"

    def _load(self, index: int) -> Image.Image:
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        try:
            too_large = _member_too_large(self._zip.getinfo(self.members[index]))
            if too_large:
                raise InputError(f"{self.name(index)}: {too_large}")
            data = self._zip.read(self.members[index])
        except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{self.name(index)}: cannot extract ({_first_line(exc)})") from None
        return load_rgb(io.BytesIO(data), name=self.name(index))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_zip"], state["_pid"] = None, -1
        return state


def is_lmdb(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p.is_dir() and (p / "data.mdb").is_file()) or (p.is_file() and p.suffix == ".mdb")


def open_dataset(path: str | os.PathLike[str], resolution: int, fit: Fit = "crop") -> ImageDataset:
    """Open an image collection: an LMDB database (directory holding ``data.mdb``), a folder of
    images (searched recursively) or a ``.zip`` archive of images.

    Items are float32 tensors [3, resolution, resolution] in [-1, 1]. Raises
    :class:`InputError` when the path holds no usable images.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"dataset {p} not found")
    if is_lmdb(p):
        return LMDBDataset(p, resolution, fit)
    if p.is_dir():
        return FolderDataset(p, resolution, fit)
    if p.is_file() and zipfile.is_zipfile(p):
        return ZipDataset(p, resolution, fit)
    raise InputError(f"{p} is not a dataset: use an LMDB folder (from `stylemapgan prepare-data`), "
                     "a folder of images or a .zip of images")


class Subset(torch.utils.data.Dataset):
    """A view on some indices of a dataset (for train / validation splits)."""

    def __init__(self, dataset: ImageDataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[self.indices[i]]


# --------------------------------------------------------------------------- writing LMDB
def list_sources(src: str | os.PathLike[str]) -> ImageDataset:
    """The images of a folder or zip to convert, without header checks (done while converting)."""
    p = Path(src)
    if not p.exists():
        raise InputError(f"{p} not found")
    if p.is_dir() and not is_lmdb(p):
        return FolderDataset(p, 1, check=False)
    if p.is_file() and zipfile.is_zipfile(p):
        return ZipDataset(p, 1, check=False)
    raise InputError(f"{p}: expected a folder of images or a .zip of images")


def encode_image(img: Image.Image, fmt: str = "jpeg", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


class ImageConverter:
    """Decodes source images and encodes them at every size, for ``prepare-data``.

    Picklable; in a process pool, pass it once through the pool initializer
    (:meth:`install`) so that a large file list is not sent with every task.
    """

    _installed: ImageConverter | None = None  # set only inside pool worker processes

    def __init__(self, source: ImageDataset, sizes: Sequence[int], fit: Fit = "crop",
                 fmt: str = "jpeg", quality: int = 95) -> None:
        self.source, self.sizes, self.fit, self.fmt, self.quality = source, list(sizes), fit, fmt, quality

    def __call__(self, index: int) -> tuple[int, list[bytes] | None, str | None]:
        return convert_one(self.source, index, self.sizes, self.fit, self.fmt, self.quality)

    def install(self) -> None:
        """Process pool initializer: keep this converter, and die with the parent process
        (a ``kill -9`` of prepare-data leaves no workers behind)."""
        from stylemapgan.utils import exit_with_parent

        exit_with_parent()
        type(self)._installed = self

    @classmethod
    def run_installed(cls, index: int) -> tuple[int, list[bytes] | None, str | None]:
        assert cls._installed is not None, "ImageConverter.install was not called in this worker"
        return cls._installed(index)


def convert_one(source: ImageDataset, index: int, sizes: Sequence[int], fit: Fit, fmt: str,
                quality: int) -> tuple[int, list[bytes] | None, str | None]:
    """Decode one source image and encode it at every size: (index, encoded, error)."""
    try:
        img = source._load(index)
    except InputError as exc:
        return index, None, str(exc)
    return index, [encode_image(fit_image(img, s, fit), fmt, quality) for s in sizes], None


def write_lmdb(out: Path, encoded: Iterator[list[bytes]], sizes: Sequence[int],
               map_size: int = 1 << 30) -> int:
    """Write encoded images (one list per image, one entry per size) into a new LMDB at ``out``.

    Returns the number of images written. The map grows as needed.
    """
    import lmdb

    out.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(out), map_size=map_size, subdir=True, lock=True, readahead=False)
    count = 0
    try:
        pending: list[tuple[bytes, bytes]] = []

        def flush() -> None:
            nonlocal env
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for k, v in pending:
                            txn.put(k, v)
                    break
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()["map_size"] * 2)
            pending.clear()

        for per_size in encoded:
            for s, data in zip(sizes, per_size, strict=True):
                pending.append((f"{s}-{count:05d}".encode(), data))
            count += 1
            if len(pending) >= 256:
                flush()
        pending += [(b"length", str(count).encode()),
                    (b"sizes", ",".join(map(str, sizes)).encode()),
                    (b"stylemapgan-format", LMDB_FORMAT.encode())]
        flush()
        env.sync(True)
    finally:
        env.close()
    return count


__all__ = [
    "LMDB_FORMAT",
    "FolderDataset",
    "ImageConverter",
    "ImageDataset",
    "LMDBDataset",
    "Subset",
    "ZipDataset",
    "check_image_header",
    "convert_one",
    "encode_image",
    "fit_image",
    "is_image_name",
    "is_lmdb",
    "list_sources",
    "open_dataset",
    "pil_to_tensor",
    "write_lmdb",
]
