"""The Open Peeps avatar dataset: the packaged gallery, the reader, and (when Node.js and the
locked npm packages are installed: `npm ci --prefix tools/avatars`) the real renderer."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from stylemapgan.cli import main
from stylemapgan.data import avatars
from stylemapgan.data.avatars import AvatarFolder, gallery_dir, name_of, split_of
from stylemapgan.errors import ConfigError, InputError

GALLERY_SEEDS = [9, 29, 59, 79, 89, 259, 409, 579]
ALWAYS = {"background", "skin", "clothing", "head", "hair", "face", "face_region"}

NODE, _reason = avatars.node_status()
needs_node = pytest.mark.skipif(NODE is None, reason=f"avatar renderer not runnable: {_reason}")


def _hex(color):
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])


def _erode(m):
    p = np.pad(m, 1)
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def check_folder(folder: AvatarFolder, seeds, interior=0.93):
    """Invariants every rendered avatar folder must satisfy. ``interior``: the least share of a
    flat part's inner pixels (1 px away from its edge) that has the part's color."""
    recs = folder.records()
    assert [r["seed"] for r in recs] == sorted(seeds)
    assert folder.manifest["split_counts"] == {
        s: sum(split_of(x) == s for x in seeds) for s in ("train", "val", "test")}
    for r in recs:
        assert r["name"] == name_of(r["seed"]) and r["split"] == split_of(r["seed"])
        assert r["file"] == f"{r['split']}/{r['name']}.png"
        with Image.open(folder.image_path(r)) as im:
            assert im.mode == "RGB" and im.size == (folder.size, folder.size)
            img = np.asarray(im).astype(int)
        a = r["attributes"]
        expected = ALWAYS | ({"facial_hair"} if a["facialHair"] else set()) | (
            {"glasses"} if a["accessories"] else set())
        if "hair" not in r["parts"]:  # bald heads have no hair mask
            expected.discard("hair")
            assert not folder.load_mask(r, "hair").any()
        assert set(r["parts"]) == expected
        masks = {}
        for part in expected:
            with Image.open(folder.mask_path(r, part)) as m:
                assert m.mode == "L" and m.size == (folder.size, folder.size)
                arr = np.asarray(m)
            assert set(np.unique(arr)) <= {0, 255}, f"{r['name']} {part} is not binary"
            masks[part] = arr == 255
            assert masks[part].sum() == r["parts"][part] > 0, f"{r['name']} {part} is empty"
            assert (folder.load_mask(r, part) == masks[part]).all()
        # the parts agree with the picture and with each other
        # inside a flat-colored part (away from its anti-aliased edge) the picture has its color;
        # pixels of the background or skin color lie in those parts
        for part, key in (("background", "backgroundColor"), ("skin", "skinColor"),
                          ("clothing", "clothingColor")):
            has_color = np.abs(img - _hex(a[key])).max(-1) <= 2
            inner = _erode(masks[part])
            assert not inner.any() or has_color[inner].mean() > interior, (r["name"], part)
            if part != "clothing":  # headwear may share the clothing color
                assert masks[part][has_color].mean() > 0.99, (r["name"], part)
        for part in expected - {"background"}:
            if part != "face_region":
                assert not (masks[part] & masks["background"]).any(), part
        assert not (masks.get("hair", False) & ~masks["head"]).any()
        assert not (masks["skin"] & masks["clothing"]).any()
        assert not (masks["face"] & ~masks["face_region"]).any()
        if "glasses" in expected:
            assert not (masks["glasses"] & masks["skin"]).any()


# --------------------------------------------------------------------------- without Node
def test_split_and_names():
    assert [split_of(s) for s in range(10)] == ["train"] * 8 + ["val", "test"]
    assert split_of(1239) == "test" and split_of(12) == "train"
    assert name_of(7) == "seed000007"
    assert avatars._ranges([0, 1, 2, 3, 9, 19, 20]) == "0-3,9,19-20"
    assert avatars._ranges([5]) == "5"


def test_gallery_is_a_valid_avatar_folder():
    folder = AvatarFolder(gallery_dir())
    assert folder.size == 64 and len(folder) == 8
    check_folder(folder, GALLERY_SEEDS)
    assert all(r["split"] == "test" for r in folder.records())
    files = avatars.gallery_images()
    assert [p.name for p in files] == [f"{name_of(s)}.png" for s in GALLERY_SEEDS]
    assert sum(p.stat().st_size for p in gallery_dir().rglob("*") if p.is_file()) < 200_000
    # glasses and facial hair occur, and are all-False where absent
    r9, r79 = folder.record(9), folder.record("seed000079")
    assert folder.mask_path(r9, "glasses") is None
    assert not folder.load_mask(r9, "glasses").any()
    assert folder.load_mask(r79, "glasses").any() and folder.load_mask(r79, "facial_hair").any()
    with pytest.raises(InputError, match="unknown avatar part 'nose'"):
        folder.load_mask(r9, "nose")
    with pytest.raises(InputError, match="no avatar seed000001"):
        folder.record(1)
    with pytest.raises(InputError, match="unknown split"):
        folder.records("training")


def test_gallery_loads_as_a_training_folder():
    from stylemapgan.data.datasets import open_dataset

    ds = open_dataset(gallery_dir() / "test", 64)
    assert len(ds) == 8
    x = ds[0]
    assert x.shape == (3, 64, 64) and -1 <= x.min() < x.max() <= 1


def test_reader_errors(tmp_path):
    with pytest.raises(InputError, match="not an avatar dataset"):
        AvatarFolder(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(InputError, match="unreadable manifest"):
        AvatarFolder(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not a stylemapgan-avatars-1 manifest"):
        AvatarFolder(tmp_path)
    # a damaged mask names the file
    copy = tmp_path / "g"
    shutil.copytree(gallery_dir(), copy)
    folder = AvatarFolder(copy)
    r = folder.record(9)
    folder.mask_path(r, "hair").write_bytes(b"\x89PNG junk")
    with pytest.raises(InputError, match=r"seed000009\.png: unreadable mask"):
        folder.load_mask(r, "hair")
    Image.new("L", (32, 32)).save(folder.mask_path(r, "face"))
    with pytest.raises(InputError, match="mask is 32x32, expected 64x64"):
        folder.load_mask(r, "face")


def test_make_avatars_without_node_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(avatars.shutil, "which", lambda name: None)
    assert main(["make-avatars", "--out", str(tmp_path / "a"), "--count", "2"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot render avatars: Node.js (the `node` command) is not installed" in err
    assert "make-avatars:" not in err  # no progress bar before the check
    assert not (tmp_path / "a").exists()


def test_make_avatars_tool_location_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(avatars.TOOL_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="has no render.mjs"):
        avatars.tool_dir()
    (tmp_path / "render.mjs").write_text("")
    monkeypatch.setattr(avatars.shutil, "which", lambda name: "/usr/bin/node")
    assert avatars.node_status()[0] is None
    assert "npm ci --prefix" in avatars.node_status()[1]
    assert main(["make-avatars", "--out", str(tmp_path / "a"), "--seeds", "1-3"]) == 2
    assert "npm ci --prefix" in capsys.readouterr().err


def test_tool_dir_finds_the_renderer_of_this_checkout(monkeypatch):
    # An editable install from a checkout finds tools/avatars without TOOL_ENV (the renderer
    # tests below skipped silently while this looked one folder too low).
    monkeypatch.delenv(avatars.TOOL_ENV, raising=False)
    assert Path(avatars.__file__).resolve().is_relative_to(ROOT / "src"), "not a checkout install"
    assert avatars.tool_dir() == ROOT / "tools" / "avatars"


@pytest.mark.parametrize("argv", [["--size", "8"], ["--size", "1024"], ["--count", "0"],
                                  ["--start", "-1"], ["--start", "x"]])
def test_make_avatars_bad_arguments(tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        main(["make-avatars", "--out", str(tmp_path / "a"), *argv])
    assert exc.value.code == 2


def test_make_avatars_refuses_existing_files_before_work(tmp_path, capsys):
    (tmp_path / "a" / "train").mkdir(parents=True)
    (tmp_path / "a" / "train" / "seed000001.png").write_bytes(b"x")
    assert main(["make-avatars", "--out", str(tmp_path / "a"), "--seeds", "0-2"]) != 0
    assert "seed000001.png" in capsys.readouterr().err
    assert (tmp_path / "a" / "train" / "seed000001.png").read_bytes() == b"x"


# --------------------------------------------------------------------------- with Node
def _node(*args):
    tool = avatars.tool_dir() / "render.mjs"
    return subprocess.run([NODE, str(tool), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _files(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@needs_node
def test_render_matches_the_committed_gallery_and_is_deterministic(tmp_path):
    seeds = ",".join(map(str, GALLERY_SEEDS))
    for run in ("a", "b"):
        r = _node("--out", tmp_path / run, "--seeds", seeds)
        assert r.returncode == 0, r.stderr
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len(a) > 8 * 7
    # byte-identical to the gallery rendered when it was committed
    assert a == _files(gallery_dir())
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    mg = json.loads((gallery_dir() / "manifest.json").read_text())
    assert ma["images"] == mg["images"]


@needs_node
def test_render_cli_splits_masks_and_overwrite(tmp_path, capsys):
    out = tmp_path / "av"
    assert main(["make-avatars", "--out", str(out), "--start", "0", "--count", "12"]) == 0
    assert "train 10, val 1, test 1" in capsys.readouterr().out
    folder = AvatarFolder(out)
    check_folder(folder, range(12))
    assert sorted(p.name for p in (out / "val").iterdir()) == ["seed000008.png"]
    assert sorted(p.name for p in (out / "test").iterdir()) == ["seed000009.png"]
    first = (out / "train" / "seed000000.png").read_bytes()
    # adding seeds extends the manifest; existing files are refused without --overwrite
    assert main(["make-avatars", "--out", str(out), "--seeds", "12-13"]) == 0
    assert [r["seed"] for r in AvatarFolder(out).records()] == list(range(14))
    assert main(["make-avatars", "--out", str(out), "--seeds", "13-14"]) != 0
    assert "already exist" in capsys.readouterr().err
    assert main(["make-avatars", "--out", str(out), "--seeds", "0", "--overwrite"]) == 0
    assert (out / "train" / "seed000000.png").read_bytes() == first
    # other settings cannot be mixed into the folder
    assert main(["make-avatars", "--out", str(out), "--seeds", "20", "--size", "32"]) == 2
    assert "other settings" in capsys.readouterr().err


@needs_node
def test_render_other_size_and_no_masks(tmp_path):
    r = _node("--out", tmp_path / "s", "--size", 32, "--seeds", "3,8,9")
    assert r.returncode == 0, r.stderr
    check_folder(AvatarFolder(tmp_path / "s"), [3, 8, 9], interior=0.6)
    r = _node("--out", tmp_path / "n", "--size", 32, "--seeds", "3", "--no-masks")
    assert r.returncode == 0, r.stderr
    folder = AvatarFolder(tmp_path / "n")
    assert folder.parts == {} and not (tmp_path / "n" / "masks").exists()
    with pytest.raises(InputError, match="no parts"):
        folder.load_mask(folder.record(3), "hair")
    # the same seed renders the same image with and without masks
    assert (tmp_path / "n" / "train" / "seed000003.png").read_bytes() == \
        (tmp_path / "s" / "train" / "seed000003.png").read_bytes()
    for bad in (["--size", "8"], ["--seeds", "5-3"], ["--bogus"], ["--seeds", "1", "--count", "2"]):
        r = _node("--out", tmp_path / "x", *bad)
        assert r.returncode == 2 and r.stderr.startswith("error: "), bad
