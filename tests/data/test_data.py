import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from stylemapgan.cli import main
from stylemapgan.data.datasets import (
    FolderDataset,
    LMDBDataset,
    ZipDataset,
    fit_image,
    open_dataset,
    pil_to_tensor,
)
from stylemapgan.errors import InputError
from stylemapgan.imaging.placement import fit_square


def _pattern(w, h, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))[:h, :w]


def make_image_folder(root, n_good=5, corrupt=True):
    """A folder with every supported format and mode, a sub-folder, and bad files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    Image.fromarray(_pattern(40, 40, 1)).save(root / "a.png")
    Image.fromarray(_pattern(48, 32, 2)).save(root / "b.jpg", quality=95)
    rgba = np.dstack([_pattern(32, 32, 3), np.full((32, 32), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "sub" / "c.png")
    Image.fromarray(_pattern(32, 32, 4)[..., 0], "L").save(root / "sub" / "d.webp", lossless=True)
    Image.fromarray(_pattern(36, 36, 5)).convert("CMYK").save(root / "e.jpg")
    Image.fromarray(_pattern(32, 32, 6)).save(root / "f.bmp")
    for i in range(max(0, n_good - 6)):
        Image.fromarray(_pattern(32, 32, 10 + i)).save(root / f"g{i:03d}.png")
    if corrupt:
        (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
        (root / "sub" / "empty.png").write_bytes(b"")
        (root / "notes.txt").write_text("not an image")
    return root


def test_fit_image_crop_pad_stretch():
    """Training data is placed like editing input (one placement module)."""
    img = Image.fromarray(_pattern(64, 32))
    assert fit_image(img, 16).size == (16, 16)
    # Center crop of a 64x32 image keeps columns 16..47.
    crop = fit_image(img, 32, "crop")
    assert np.array_equal(np.asarray(crop), _pattern(64, 32)[:, 16:48])
    pad = np.asarray(fit_image(img, 64, "pad"))
    # pad: the image centred, the rest its edge rows repeated (the editor's meaning of pad).
    assert pad.shape == (64, 64, 3) and np.array_equal(pad[16:48], _pattern(64, 32))
    assert (pad[:16] == pad[16]).all() and (pad[48:] == pad[47]).all()
    assert fit_image(img, 20, "stretch").size == (20, 20)
    with pytest.raises(InputError):
        fit_image(img, 20, "zoom")
    assert np.array_equal(np.asarray(fit_image(img, 32, "crop")),
                          fit_square(img, 32, "crop"))


def test_pil_to_tensor_range():
    arr = np.zeros((2, 2, 3), np.uint8)
    arr[0, 0] = 255
    t = pil_to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 2, 2) and t.dtype == torch.float32
    assert t[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and t[:, 1, 1].tolist() == [-1.0, -1.0, -1.0]


def test_folder_dataset_reads_all_modes_and_skips_bad_files(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_good=6)
    ds = open_dataset(root, 32)
    assert isinstance(ds, FolderDataset)
    assert len(ds) == 6
    names = [p.relative_to(root).as_posix() for p in ds.files]
    assert names == ["a.png", "b.jpg", "e.jpg", "f.bmp", "sub/c.png", "sub/d.webp"]
    skipped = sorted(s[0].rsplit("/", 1)[-1] for s in ds.skipped)
    assert skipped == ["broken.jpg", "empty.png"]
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
    # Exact pixels: a.png (40x40) is resized with Lanczos to 32x32.
    ref = pil_to_tensor(Image.open(root / "a.png").convert("RGB").resize((32, 32), Image.LANCZOS))
    assert torch.equal(ds[0], ref)
    # RGBA is flattened on white: alpha 128 lifts dark pixels.
    c = ds[4]
    assert c.min() > -0.1
    # Grayscale -> equal channels.
    d = ds[5]
    assert torch.equal(d[0], d[1]) and torch.equal(d[1], d[2])


def test_decode_failure_after_open_is_replaced_not_fatal(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", n_good=6, corrupt=False)
    ds = open_dataset(root, 32)
    # Truncate a file after the header check: it fails only when decoded.
    data = (root / "b.jpg").read_bytes()
    (root / "b.jpg").write_bytes(data[: len(data) // 3])
    with caplog.at_level("WARNING"):
        x = ds[1]
    assert torch.equal(x, ds[2])
    assert "b.jpg" in caplog.text


def test_exif_orientation_applied(tmp_path):
    arr = _pattern(40, 20)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    root = tmp_path / "exif"
    root.mkdir()
    img.save(root / "r.png", exif=exif)
    ds = open_dataset(root, 20)
    rotated = np.asarray(Image.fromarray(arr).transpose(Image.Transpose.ROTATE_270))
    ref = pil_to_tensor(Image.fromarray(rotated[10:30]))  # 20x40 -> center crop 20x20
    assert torch.equal(ds[0], ref)


def test_zip_dataset(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_good=6)
    zpath = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
        zf.writestr("__MACOSX/._a.png", b"junk")
    ds = open_dataset(zpath, 32)
    assert isinstance(ds, ZipDataset) and len(ds) == 6 and len(ds.skipped) == 2
    folder = open_dataset(root, 32)
    for i in range(6):
        assert torch.equal(ds[i], folder[i])


def test_open_dataset_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_dataset(tmp_path / "nope", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no readable images"):
        open_dataset(tmp_path / "empty", 32)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match="not a dataset"):
        open_dataset(tmp_path / "f.txt", 32)


def test_prepare_data_writes_lmdb_and_counts_skipped(tmp_path, capsys):
    root = make_image_folder(tmp_path / "imgs", n_good=8)
    out = tmp_path / "lmdb"
    assert main(["prepare-data", str(root), "--out", str(out), "--size", "32,16",
                 "--format", "png", "--workers", "1"]) == 0
    msg = capsys.readouterr().out
    assert "wrote 8 image(s)" in msg and "skipped 2" in msg
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1]
                  for line in (out / "skipped.txt").read_text().splitlines()) == ["broken.jpg", "empty.png"]
    ds = open_dataset(out, 32)
    assert isinstance(ds, LMDBDataset) and len(ds) == 8 and ds.sizes == [16, 32]
    folder = open_dataset(root, 32)
    for i in range(8):  # PNG storage is lossless: identical to reading the folder
        assert torch.equal(ds[i], folder[i])
    small = open_dataset(out, 16)
    assert small.stored_size == 16 and small[0].shape == (3, 16, 16)
    # 8 px is not stored: the 16 px images are downscaled.
    assert open_dataset(out, 8)[0].shape == (3, 8, 8)
    with pytest.raises(InputError, match="--size 64"):
        open_dataset(out, 64)
    # Refuses to replace without --overwrite; replaces with it (jpeg, pooled workers).
    assert main(["prepare-data", str(root), "--out", str(out), "--size", "32"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prepare-data", str(root), "--out", str(out), "--size", "32", "--workers", "2",
                 "--overwrite"]) == 0
    capsys.readouterr()
    ds = open_dataset(out, 32)
    assert ds.sizes == [32] and len(ds) == 8
    assert (ds[0] - folder[0]).abs().mean() < 0.05  # JPEG q95
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_prepare_dataset_returns_what_it_wrote_and_prints_nothing(tmp_path, capsys):
    """The library call behind prepare-data: a summary to print, nothing printed itself."""
    from stylemapgan.data.prepare import prepare_dataset

    root = make_image_folder(tmp_path / "imgs", n_good=6)
    done = prepare_dataset(root, tmp_path / "db", sizes=[16], fmt="png", workers=1)
    assert done.out == tmp_path / "db" and done.count == 6 and done.sizes == (16,)
    assert sorted(s.split("\t")[0].rsplit("/", 1)[-1] for s in done.skipped) == ["broken.jpg",
                                                                               "empty.png"]
    assert (done.out / "skipped.txt").read_text().splitlines() == list(done.skipped)
    assert len(open_dataset(done.out, 16)) == 6
    assert capsys.readouterr().out == ""
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_dataset(root, tmp_path / "db", sizes=[16], workers=1)
    with pytest.raises(InputError, match="--quality"):
        prepare_dataset(root, tmp_path / "db2", quality=0)


def test_prepare_data_help_lists_every_format_it_reads(capsys):
    """--help and the README name every file suffix the dataset readers take (no drift)."""
    import re

    from stylemapgan.imaging.images import IMAGE_SUFFIXES

    with pytest.raises(SystemExit):
        main(["prepare-data", "--help"])
    words = set(re.findall(r"[a-z]+", capsys.readouterr().out.lower()))
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### `stylemapgan prepare-data`"):]
    section = set(re.findall(r"[a-z]+", section[: section.index("\n### ")].lower()))
    for suffix in IMAGE_SUFFIXES:
        assert suffix.lstrip(".") in words, suffix
        assert suffix.lstrip(".") in section, suffix


def test_prepare_data_bad_input(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    assert main(["prepare-data", str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error:") and "could be read" in err and "x.png" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["prepare-data", str(tmp_path / "bad"), "--out", str(tmp_path / "o"), "--size", "abc"])


def test_reads_reference_layout_lmdb(tmp_path):
    """The reference preprocessing's layout: '{size}-{index:05d}' -> JPEG bytes, 'length'."""
    import lmdb

    path = tmp_path / "ref_lmdb"
    env = lmdb.open(str(path), map_size=1 << 24)
    imgs = [_pattern(64, 64, s) for s in range(3)]
    with env.begin(write=True) as txn:
        for i, a in enumerate(imgs):
            for size in (32, 64):
                buf = io.BytesIO()
                Image.fromarray(a).resize((size, size), Image.LANCZOS).save(buf, "jpeg", quality=100, subsampling=0)
                txn.put(f"{size}-{str(i).zfill(5)}".encode(), buf.getvalue())
        txn.put(b"length", b"3")
    env.close()
    ds = open_dataset(path, 64)
    assert isinstance(ds, LMDBDataset) and len(ds) == 3 and ds.sizes == [32, 64]
    for i, a in enumerate(imgs):
        assert (ds[i] - pil_to_tensor(Image.fromarray(a))).abs().mean() < 0.03
    # Works through DataLoader worker processes (the environment is reopened per process).
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)
    batch = next(iter(loader))
    assert torch.equal(batch[2], ds[2])
