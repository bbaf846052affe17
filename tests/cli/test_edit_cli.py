"""`stylemapgan project`, `stylemapgan edit ...` and `stylemapgan direction` on real image files
of several formats, sizes and modes, through the command line entry point."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTO, assert_close_to_scale
from stylemapgan.cli import main
from stylemapgan.editing.editor import Editor
from stylemapgan.formats.stylemaps import load_stylemap
from stylemapgan.imaging.images import from_uint8, to_uint8
from stylemapgan.imaging.placement import load_image


def _noise(h, w, seed, channels=3):
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    # Smooth-ish content (not pure noise), so JPEG/WebP round trips stay close.
    small = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), *shape[2:]), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(_noise(40, 60, 0)).save(d / "a.png")  # landscape
    Image.fromarray(_noise(70, 50, 1)).save(d / "b.jpg", quality=92)  # portrait JPEG
    Image.fromarray(_noise(33, 33, 2)).save(d / "c.webp", lossless=True)
    Image.fromarray(_noise(40, 40, 3)).save(d / "d.bmp")
    rgba = np.dstack([_noise(32, 48, 4), np.full((32, 48), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "e.png")
    Image.fromarray(_noise(50, 32, 5, channels=1), "L").save(d / "f.png")  # grayscale
    Image.fromarray(_noise(36, 36, 6, channels=1).astype(np.uint16) * 257).save(d / "g.png")
    Image.fromarray(_noise(30, 90, 7)).convert("P").save(d / "h.gif")  # palette, 3:1
    return d


@pytest.fixture(scope="module")
def extras(tmp_path_factory):
    d = tmp_path_factory.mktemp("extras")
    labels = np.zeros((40, 60), np.uint8)  # a label map for a.png (CelebAMask-HQ ids)
    labels[:14] = 13  # hair
    labels[28:, 20:40] = 11  # mouth
    Image.fromarray(labels).save(d / "a_seg.png")
    stroke = np.zeros((20, 30, 4), np.uint8)  # a brush stroke on a transparent layer, half size
    stroke[5:12, 10:25] = 255
    Image.fromarray(stroke, "RGBA").save(d / "a_stroke.png")
    (d / "junk.png").write_bytes(b"definitely not a PNG")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(d / "zero_mask.png")  # a.png size
    return d


def _run(args, capsys):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _error(err):
    """The one error line of a failed command (progress bars may share stderr)."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _png(path):
    return np.asarray(Image.open(path).convert("RGB"))


# --------------------------------------------------------------------------- project
def test_project_a_folder_of_mixed_images(tmp_path, photos, tiny_model_file, capsys):
    out = tmp_path / "proj"
    rc, stdout, _ = _run(["project", photos, "--model", tiny_model_file, "--out", out,
                          "--save-input", "--batch-size", "3"], capsys)
    assert rc == 0 and "projected 8 image(s)" in stdout
    names = "abcdefgh"
    for n in names:
        assert (out / f"{n}.stylemap.safetensors").is_file()
        assert _png(out / f"{n}.png").shape == (32, 32, 3)
        assert _png(out / f"{n}.input.png").shape == (32, 32, 3)
    record = json.loads((out / "project.json").read_text())
    assert [e["name"] for e in record["images"]] == list(names)
    # The saved stylemap is the encoder's output for the fitted photo; its reconstruction
    # is NAME.png, and the metadata says where the square came from.
    ed = Editor.load(tiny_model_file, "cpu")
    pixels, placement, _ = load_image(photos / "b.jpg", 32)
    saved = load_stylemap(out / "b.stylemap.safetensors", ed.config)
    assert_close_to_scale(saved.w, ed.project(from_uint8(pixels)), 1e-5, "saved stylemap")
    assert saved.placement == placement and saved.source.endswith("b.jpg")
    assert np.abs(to_uint8(ed.render(saved.w))[0].astype(int) - _png(out / "b.png")).max() <= 1
    assert np.array_equal(_png(out / "b.input.png"), pixels)
    # Nothing is replaced without --overwrite.
    rc, _, err = _run(["project", photos / "a.png", "--model", tiny_model_file, "--out", out], capsys)
    assert rc == 1 and "--overwrite" in err


def test_project_names_and_fit(tmp_path, tiny_model_file, capsys):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_noise(40, 80, 1)).save(d / "x.png")
    Image.fromarray(_noise(40, 80, 2)).save(d / "x.jpg")
    out = tmp_path / "out"
    rc, _, _ = _run(["project", d / "x.png", d / "x.jpg", "--model", tiny_model_file, "--out", out,
                     "--fit", "pad", "--box", "0,0,60,40", "--no-reconstruction"], capsys)
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "project.json", "x_jpg.stylemap.safetensors", "x_png.stylemap.safetensors"]
    pl = load_stylemap(out / "x_png.stylemap.safetensors").placement
    assert pl.fit == "pad" and pl.region == (0, 0, 60, 40) and pl.square == (0, -10, 60, 50)


def test_project_refine_lowers_the_error(tmp_path, photos, tiny_model_file, capsys):
    out = tmp_path / "refined"
    rc, stdout, _ = _run(["project", photos / "a.png", photos / "d.bmp", "--model", tiny_model_file,
                          "--out", out, "--refine", "8", "--lr", "0.1", "--lpips-weight", "0"],
                         capsys)
    assert rc == 0 and "8 refine steps" in stdout
    for e in json.loads((out / "project.json").read_text())["images"]:
        assert e["method"] == "encoder+refine" and e["mse"] < e["encoder_mse"]
    saved = load_stylemap(out / "a.stylemap.safetensors")
    assert saved.projection["steps"] == 8 and saved.projection["lpips_weight"] == 0


def test_project_refine_with_lpips_needs_the_weights(tmp_path, photos, tiny_model_file, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("STYLEMAPGAN_HOME", str(tmp_path / "empty_home"))
    rc, _, err = _run(["project", photos / "a.png", "--model", tiny_model_file, "--out",
                       tmp_path / "o", "--refine", "3"], capsys)
    assert rc == 2 and "stylemapgan weights fetch" in _error(err) and "--lpips-weight 0" in _error(err)


def test_project_bad_files(tmp_path, photos, extras, tiny_model_file, capsys):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "ok.png").write_bytes((photos / "a.png").read_bytes())
    (d / "zz_bad.png").write_bytes((extras / "junk.png").read_bytes())
    rc, _, err = _run(["project", d, "--model", tiny_model_file, "--out", tmp_path / "o1"], capsys)
    assert rc == 2 and "zz_bad.png: not an image" in _error(err)
    rc, stdout, _ = _run(["project", d, "--model", tiny_model_file, "--out", tmp_path / "o2",
                          "--skip-bad"], capsys)
    assert rc == 0 and "1 skipped" in stdout
    record = json.loads((tmp_path / "o2" / "project.json").read_text())
    assert record["skipped"][0]["path"].endswith("zz_bad.png")
    rc, _, err = _run(["project", tmp_path / "nothing_here", "--model", tiny_model_file,
                       "--out", tmp_path / "o3"], capsys)
    assert rc == 2 and "no such file or folder" in err


# --------------------------------------------------------------------------- edits
@pytest.fixture(scope="module")
def stylemaps(tmp_path_factory, photos, tiny_model_file):
    out = tmp_path_factory.mktemp("sm")
    assert main(["project", str(photos / "a.png"), str(photos / "b.jpg"), str(photos / "c.webp"),
                 "--model", str(tiny_model_file), "--out", str(out)]) == 0
    return out


def test_local_edit_with_every_kind_of_mask(tmp_path, photos, extras, tiny_model_file, capsys):
    base = ["edit", "local", photos / "a.png", photos / "b.jpg", "--model", tiny_model_file]
    masks = {
        "labels": ["--labels", extras / "a_seg.png", "--parts", "hair,mouth"],
        "stroke": ["--mask", extras / "a_stroke.png"],
        "box": ["--mask-box", "1,1,5,4", "--feather", "2", "--paste-area", "mask"],
        "boxpx": ["--mask-box", "4,4,20,16", "--units", "px", "--space", "w", "--mask-mode", "max"],
    }
    results = {}
    for name, flags in masks.items():
        out = tmp_path / name
        rc, stdout, err = _run([*base, *flags, "--out", out, "--paste-back"], capsys)
        assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["grid.png", "pasted.png", "record.json",
                                                          "result.png"]
        assert _png(out / "grid.png").shape == (32, 4 * 32 + 3 * 2, 3)  # source, ref, mask, result
        assert _png(out / "pasted.png").shape == (40, 60, 3)
        results[name] = _png(out / "result.png")
    # Each mask edits something, and differently.
    rc, _, _ = _run(["edit", "reconstruct", photos / "a.png", "--model", tiny_model_file,
                     "--out", tmp_path / "rec", "--paste-back"], capsys)
    recon = _png(tmp_path / "rec" / "result.png")
    for name, img in results.items():
        assert np.abs(img.astype(int) - recon).max() > 10, name
    # The paste-back changes the photo only around the mask: far pixels keep their values.
    photo = _png(photos / "a.png")
    pasted = _png(tmp_path / "box" / "pasted.png")
    # Cells (1..5, 1..4) are photo pixels x 15..35, y 5..20 (the crop is x 10..50); grown by
    # the feather (2 px) and blurred (3 sigma = 3 px): rows from 26 on keep their values.
    assert np.array_equal(pasted[:, :10], photo[:, :10]) and np.array_equal(pasted[:, 50:], photo[:, 50:])
    assert np.array_equal(pasted[26:], photo[26:]) and not np.array_equal(pasted[:26], photo[:26])
    # --paste-area footprint reaches as far as the edit can: the mask grown by the receptive
    # field (all of the tiny model's 32 px square), never outside the crop.
    out = tmp_path / "footprint"
    rc, _, err = _run([*base, "--mask-box", "1,1,5,4", "--feather", "2", "--out", out,
                       "--paste-back", "--paste-area", "footprint"], capsys)
    assert rc == 0, err
    grown = _png(out / "pasted.png")
    assert np.array_equal(grown[:, :10], photo[:, :10]) and np.array_equal(grown[:, 50:], photo[:, 50:])
    assert not np.array_equal(grown[30:, 10:50], photo[30:, 10:50])
    # The default is the mask's area (grown by the feather): what the user masked, not the
    # whole footprint (issue 21: a mouth mask changed the whole face).
    out = tmp_path / "default"
    rc, _, err = _run([*base, "--mask-box", "1,1,5,4", "--feather", "2", "--out", out,
                       "--paste-back"], capsys)
    assert rc == 0, err
    default = _png(out / "pasted.png")
    assert np.array_equal(default, pasted)
    n_mask = int((np.abs(default.astype(int) - photo).max(-1) > 0).sum())
    n_footprint = int((np.abs(grown.astype(int) - photo).max(-1) > 0).sum())
    print(f"paste-back changed {n_mask} photo pixels (mask), {n_footprint} (footprint)")
    assert 0 < n_mask < n_footprint


def test_zero_and_full_masks_give_source_and_reference(tmp_path, photos, extras, tiny_model_file,
                                                       capsys):
    common = ["--model", tiny_model_file]
    _run(["edit", "reconstruct", photos / "a.png", *common, "--out", tmp_path / "ra"], capsys)
    _run(["edit", "reconstruct", photos / "b.jpg", *common, "--out", tmp_path / "rb"], capsys)
    rc, stdout, _ = _run(["edit", "local", photos / "a.png", photos / "b.jpg", *common, "--mask",
                          extras / "zero_mask.png", "--out", tmp_path / "zero"], capsys)
    assert rc == 0 and "selects nothing" in stdout
    rc, _, _ = _run(["edit", "local", photos / "a.png", photos / "b.jpg", *common, "--mask",
                     extras / "zero_mask.png", "--invert-mask", "--out", tmp_path / "one"], capsys)
    assert rc == 0
    assert np.array_equal(_png(tmp_path / "zero" / "result.png"), _png(tmp_path / "ra" / "result.png"))
    assert np.array_equal(_png(tmp_path / "one" / "result.png"), _png(tmp_path / "rb" / "result.png"))


def test_saved_stylemaps_work_like_images(tmp_path, photos, extras, stylemaps, tiny_model_file,
                                          capsys):
    flags = ["--labels", extras / "a_seg.png", "--parts", "hair", "--steps", "3",
             "--model", tiny_model_file]
    rc, _, _ = _run(["edit", "local", photos / "a.png", photos / "b.jpg", *flags, "--out",
                     tmp_path / "img"], capsys)
    assert rc == 0
    rc, _, err = _run(["edit", "local", stylemaps / "a.stylemap.safetensors",
                       stylemaps / "b.stylemap.safetensors", *flags, "--out", tmp_path / "sm"], capsys)
    assert rc == 0, err  # the label map (photo size) is placed with the saved placement
    for i in range(3):
        a = _png(tmp_path / "img" / f"frame_{i:03d}.png").astype(int)
        b = _png(tmp_path / "sm" / f"frame_{i:03d}.png").astype(int)
        assert np.abs(a - b).max() <= 1
    with Image.open(tmp_path / "sm" / "animation.gif") as gif:
        assert gif.n_frames == 4  # 3 frames, forward and back
    rc, _, err = _run(["edit", "local", stylemaps / "a.stylemap.safetensors", photos / "b.jpg",
                       *flags, "--out", tmp_path / "x", "--paste-back"], capsys)
    assert rc == 2 and "needs the source photo" in err


def test_interpolate_mix_transplant_direction(tmp_path, photos, stylemaps, tiny_model_file, capsys):
    m = ["--model", tiny_model_file]
    rc, _, _ = _run(["edit", "interpolate", photos / "a.png", stylemaps / "b.stylemap.safetensors",
                     "--steps", "5", "--space", "wplus", *m, "--out", tmp_path / "lerp"], capsys)
    assert rc == 0
    frames = [_png(tmp_path / "lerp" / f"frame_{i:03d}.png") for i in range(5)]
    assert np.abs(frames[-1].astype(int) - _png(stylemaps / "b.png")).max() <= 1
    assert np.abs(frames[0].astype(int) - _png(stylemaps / "a.png")).max() <= 1
    assert _png(tmp_path / "lerp" / "grid.png").shape == (32, 7 * 32 + 6 * 2, 3)

    rc, _, _ = _run(["edit", "mix", photos / "a.png", photos / "b.jpg", "--layers", "fine", *m,
                     "--out", tmp_path / "mix"], capsys)
    assert rc == 0 and (tmp_path / "mix" / "result.png").is_file()

    rc, _, err = _run(["edit", "transplant", photos / "a.png", "--ref", photos / "b.jpg", "--ref",
                       stylemaps / "c.stylemap.safetensors", "--region", "box=1,1,3,3", "move=2,1",
                       "--region", "ref=1", "box=8,8,16,16", "units=px", "to=0,16", "--steps", "3",
                       *m, "--out", tmp_path / "tp", "--paste-back"], capsys)
    assert rc == 0, err
    t0 = _png(tmp_path / "tp" / "frame_000.png").astype(int)
    assert np.abs(t0 - _png(stylemaps / "a.png")).max() <= 1  # step 0 is the original
    assert np.abs(_png(tmp_path / "tp" / "frame_002.png").astype(int) - t0).max() > 10
    rec = json.loads((tmp_path / "tp" / "record.json").read_text())
    assert [f["role"] for f in rec["inputs"]] == ["source", "reference 0", "reference 1"]

    # A direction learned from examples, then applied globally and inside a box.
    rc, _, err = _run(["direction", "--positive", photos / "a.png", "--negative", photos,
                       *m, "--out", tmp_path / "d.safetensors"], capsys)
    assert rc == 2 and "a.png is labeled both positive and negative" in err
    rc, stdout, _ = _run(["direction", "--positive", photos / "a.png", photos / "b.jpg",
                          stylemaps / "c.stylemap.safetensors", "--negative", photos / "d.bmp",
                          photos / "e.png", photos / "f.png", *m, "--out", tmp_path / "d.safetensors"],
                         capsys)
    assert rc == 0 and "training accuracy 1.000" in stdout
    rc, _, _ = _run(["edit", "direction", photos / "a.png", "--direction", tmp_path / "d.safetensors",
                     "--strength", "6", "--steps", "3", "--mask-box", "0,0,4,8", *m, "--out",
                     tmp_path / "dir"], capsys)
    assert rc == 0
    f0, f2 = (_png(tmp_path / "dir" / f"frame_{i:03d}.png").astype(int) for i in (0, 2))
    assert np.abs(f0 - _png(stylemaps / "a.png")).max() <= 1  # strength 0: the reconstruction
    assert np.abs(f2[:, :8] - f0[:, :8]).mean() > 2 * np.abs(f2[:, 24:] - f0[:, 24:]).mean()


def test_direction_from_a_csv(tmp_path, photos, tiny_model_file, capsys):
    csv = tmp_path / "labels.csv"
    rel = [p.name for p in sorted(photos.iterdir())]
    (tmp_path / "imgs").symlink_to(photos)
    csv.write_text("path,label\n" + "".join(f"imgs/{n},{'yes' if i % 2 else 'no'}\n"
                                            for i, n in enumerate(rel)))
    rc, stdout, err = _run(["direction", "--csv", csv, "--model", tiny_model_file, "--out",
                            tmp_path / "d.safetensors", "--method", "logistic", "--C", "0.5"], capsys)
    assert rc == 0, err
    assert "4 positive and 4 negative" in stdout and "held-out accuracy" in stdout
    csv.write_text("imgs/a.png,maybe\n")
    rc, _, err = _run(["direction", "--csv", csv, "--model", tiny_model_file, "--out",
                       tmp_path / "e.safetensors"], capsys)
    assert rc == 2 and "labels.csv:1" in err


# --------------------------------------------------------------------------- records
def test_replay_reproduces_the_edit_and_checks_inputs(tmp_path, photos, extras, tiny_model_file,
                                                      capsys):
    src, ref = tmp_path / "src.png", tmp_path / "ref.jpg"
    src.write_bytes((photos / "a.png").read_bytes())
    ref.write_bytes((photos / "b.jpg").read_bytes())
    out = tmp_path / "edit"
    rc, _, _ = _run(["edit", "local", src, ref, "--labels", extras / "a_seg.png", "--parts", "mouth",
                     "--steps", "2", "--model", tiny_model_file, "--out", out], capsys)
    assert rc == 0
    rec = json.loads((out / "record.json").read_text())
    assert rec["operation"] == "local" and rec["model"]["sha256"]
    assert {f["role"] for f in rec["inputs"]} == {"source", "reference", "mask"}
    assert str(src) in rec["command"] and "--parts mouth" in rec["command"]
    assert rec["parameters"]["parts"] == "mouth" and rec["parameters"]["steps"] == 2
    assert sorted(o["path"] for o in rec["outputs"]) == ["animation.gif", "frame_000.png",
                                                         "frame_001.png", "grid.png"]
    rc, stdout, _ = _run(["edit", "replay", out / "record.json", "--out", tmp_path / "again"], capsys)
    assert rc == 0 and "all 4 output(s) are identical" in stdout
    for o in rec["outputs"]:
        assert (tmp_path / "again" / o["path"]).read_bytes() == (out / o["path"]).read_bytes()
    # A changed input is refused (or, with --force, run and reported as different).
    Image.fromarray(_noise(40, 60, 99)).save(src)
    rc, _, err = _run(["edit", "replay", out / "record.json", "--out", tmp_path / "x"], capsys)
    assert rc == 2 and "src.png changed" in err
    rc, stdout, _ = _run(["edit", "replay", out / "record.json", "--out", tmp_path / "y",
                          "--force", "--strict"], capsys)
    assert rc == 1 and "different" in stdout
    (tmp_path / "bad.json").write_text("{}")
    rc, _, err = _run(["edit", "replay", tmp_path / "bad.json", "--out", tmp_path / "z"], capsys)
    assert rc == 2 and "not an edit record" in err


def test_fast_is_recorded_and_replayed_as_recorded(tmp_path, photos, tiny_model_file, capsys,
                                                    monkeypatch):
    """`edit --fast` runs the fast path `serve --fast` picks for the device; the record names
    it (argv, parameters and the resolved options), and a replay runs with the recorded
    options, not with what --fast would pick on the replaying machine. `project --fast` notes
    it in project.json."""
    from stylemapgan.nn.runtime import RuntimeOptions

    fastest = RuntimeOptions.fastest(__import__("torch").device("cpu"))
    assert fastest != RuntimeOptions()
    common = [photos / "a.png", photos / "b.jpg", "--mask-box", "2,2,6,6", "--model",
              tiny_model_file, "--device", "cpu"]
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    assert _run(["edit", "local", *common, "--out", plain], capsys)[0] == 0
    rc, stdout, _ = _run(["edit", "local", *common, "--fast", "--out", fast], capsys)
    assert rc == 0
    rec = json.loads((fast / "record.json").read_text())
    assert "--fast" in rec["argv"] and rec["parameters"]["fast"] is True
    assert RuntimeOptions(**rec["model"]["runtime"]) == fastest
    assert "runtime" not in json.loads((plain / "record.json").read_text())["model"]
    a = np.asarray(Image.open(plain / "result.png")).astype(int)
    b = np.asarray(Image.open(fast / "result.png")).astype(int)
    assert np.abs(a - b).mean() < 1.0  # the same picture, up to the fast path's rounding
    # The replay uses the recorded options, whatever --fast means where it runs.
    seen = []
    init = Editor.__init__

    def spy(self, model, **kw):
        seen.append(kw.get("runtime"))
        init(self, model, **kw)

    monkeypatch.setattr(Editor, "__init__", spy)
    monkeypatch.setattr(RuntimeOptions, "fastest", classmethod(lambda cls, d: cls()))
    rc, stdout, _ = _run(["edit", "replay", fast / "record.json", "--out", tmp_path / "again",
                          "--strict"], capsys)
    assert rc == 0 and "identical" in stdout and seen == [fastest]
    monkeypatch.undo()
    # project --fast: the options are in project.json and in each stylemap's metadata.
    out = tmp_path / "proj"
    assert _run(["project", photos / "a.png", "--fast", "--model", tiny_model_file,
                 "--device", "cpu", "--out", out], capsys)[0] == 0
    record = json.loads((out / "project.json").read_text())
    assert record["parameters"]["fast"] is True
    assert record["parameters"]["runtime"] == fastest.describe()
    assert load_stylemap(out / "a.stylemap.safetensors").projection["runtime"] == fastest.describe()


def test_every_command_that_runs_the_networks_has_fast(capsys):
    for cmd in (["edit", "local"], ["edit", "mix"], ["edit", "interpolate"], ["edit", "transplant"],
                ["edit", "direction"], ["edit", "reconstruct"], ["project"], ["demo"],
                ["direction"], ["generate"], ["serve"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--fast" in text and "PSNR" in text and "48 dB" in text, cmd


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("flags", "message"), [
    (["--mask", "{extras}/a_seg.png", "--mask-box", "0,0,1,1"], "only one of"),
    ([], "needs a mask"),
    (["--labels", "{extras}/a_seg.png"], "--labels needs --parts"),
    (["--labels", "{extras}/a_seg.png", "--parts", "beard"], "unknown part 'beard'"),
    (["--mask", "{extras}/junk.png"], "junk.png: not an image"),
    (["--mask", "{extras}/missing.png"], "missing.png: no such file"),
    (["--mask-box", "0,0,9,9"], "not inside the 8x8 stylemap"),
    (["--mask-box", "0,0,1"], "four numbers"),
    (["--mask-box", "6,4,2,7"], r"^error: --mask-box '6,4,2,7': RIGHT must be > LEFT"),
    (["--mask", "{photos}/b.jpg"], r"mask is 50x70 but .*a.png is 60x40"),
    (["--mask-box", "0,0,1,1", "--source-box", "0,0,100,10"], "not inside the 60x40 image"),
])
def test_local_edit_errors_are_one_line(tmp_path, photos, extras, tiny_model_file, capsys,
                                        flags, message):
    flags = [f.format(extras=extras, photos=photos) for f in flags]
    rc, _, err = _run(["edit", "local", photos / "a.png", photos / "b.jpg", *flags, "--model",
                       tiny_model_file, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and re.search(message, _error(err)), err
    assert not (tmp_path / "o" / "record.json").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["transplant", "{a}", "--ref", "{b}", "--region", "box=1,1,2,2", "ref=2"], "ref=2, but 1 reference"),
    (["transplant", "{a}", "--ref", "{b}", "--region", "colour=red"], "unknown key 'colour'"),
    (["transplant", "{a}", "--ref", "{b}", "--region", "move=1,1"], "exactly one of box="),
    (["transplant", "{a}", "--ref", "{b}", "--region", "box=1,1,2,2", "move=9,0"], "leaves the"),
    (["mix", "{a}", "{b}", "--layers", "0:99,x"], "bad layer"),
    (["mix", "{a}", "{b}", "--layers", "40"], "out of range"),
    (["mix", "{a}", "{b}", "--layers", "1:99"], "out of range"),  # not cut to 1:N
    (["transplant", "{a}", "--ref", "{b}", "--region", "box=3,1,2,2"], "region 0: box="),
    (["reconstruct", "{model}"], "is a model file"),
    (["reconstruct", "{photos}"], "is a folder"),
    (["direction", "{a}", "--direction", "{model}"], "not a direction file"),
])
def test_other_edit_errors(tmp_path, photos, tiny_model_file, capsys, args, message):
    args = [a.format(a=photos / "a.png", b=photos / "b.jpg", model=tiny_model_file, photos=photos)
            for a in args]
    rc, _, err = _run(["edit", *args, "--model", tiny_model_file, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and message in _error(err), err


def test_help_has_examples(capsys):
    for cmd in (["project"], ["direction"], ["edit"], ["edit", "local"], ["edit", "transplant"],
                ["edit", "replay"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_project_error_map_and_the_outside_warning(tmp_path, capsys):
    """The default model's file records its usual reconstruction error; a photo far above it
    (a real photo for the avatar model) gets a warning naming it, avatars do not."""

    from stylemapgan.data.avatars import gallery_dir

    photo = PHOTO
    avatar = sorted((gallery_dir() / "test").glob("*.png"))[0]
    out = tmp_path / "p"
    assert main(["project", str(photo), str(avatar), "--error-map", "--device", "cpu",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    warnings = [ln for ln in printed.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "astronaut-256.jpg" in warnings[0] and "--refine" in warnings[0]
    err = np.asarray(Image.open(out / "astronaut-256.error.png"))
    recon = np.asarray(Image.open(out / "astronaut-256.png").convert("RGB")).astype(float)
    assert err.shape == (64, 64) and err.dtype == np.uint8 and err.mean() > 10
    assert np.asarray(Image.open(out / f"{avatar.stem}.error.png")).mean() < err.mean()
    assert recon.shape == (64, 64, 3)
