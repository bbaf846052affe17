"""Face detection and FFHQ alignment on a real photo (the faces extra; skipped without it)."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import PHOTO, faces_or_skip
from stylemapgan.imaging.placement import Placement, fit_rgb

FIXTURE = PHOTO
SIZE = 64
#: Where the FFHQ recipe puts the eye centres: a quarter of the side apart, centred, level.
EYES = np.array([[0.375, 0.479], [0.625, 0.479]])


def _faces():
    return faces_or_skip()


@pytest.fixture(scope="module")
def aligner():
    return _faces().FaceAligner()


@pytest.fixture(scope="module")
def photo():
    return Image.open(FIXTURE).convert("RGB")


def _align_one(aligner, img):
    from stylemapgan.imaging.faces import aligned_points

    ((face, pl),) = aligner.align(np.asarray(img), SIZE)
    return face, pl, aligned_points(pl, face.landmarks), fit_rgb(img, pl)


def _variants(photo):
    canvas = Image.new("RGB", (360, 300), (40, 40, 40))
    canvas.paste(photo, (80, 30))
    return {
        "rotated 15": photo.rotate(15, resample=Image.Resampling.BICUBIC, expand=True),
        "rotated -12": photo.rotate(-12, resample=Image.Resampling.BICUBIC, expand=True,
                                    fillcolor=(90, 90, 90)),
        "scaled 1.5": photo.resize((384, 384), Image.Resampling.LANCZOS),
        "scaled 0.8": photo.resize((205, 205), Image.Resampling.LANCZOS),
        "shifted": canvas,
        "grayscale": photo.convert("L").convert("RGB"),
    }


def test_aligned_landmarks_land_on_the_template_for_transformed_photos(aligner, photo):
    _, pl, points, crop = _align_one(aligner, photo)
    assert pl.fit == "aligned" and pl.size == SIZE
    assert np.abs(points[:2] - EYES).max() < 0.02, points
    base = points
    report = {}
    for name, img in _variants(photo).items():
        _, _, pts, other = _align_one(aligner, img)
        assert np.abs(pts[:2] - EYES).max() < 0.02, (name, pts)
        assert np.abs(pts - base).max() < 0.02, (name, pts, base)
        ref = crop
        if name == "grayscale":
            ref = np.asarray(Image.fromarray(crop).convert("L").convert("RGB"))
        mse = float((((other.astype(float) - ref.astype(float)) / 127.5) ** 2).mean())
        report[name] = mse
        assert mse < 0.02, (name, mse)  # the same crop, up to resampling and the JPEG
    print("aligned-crop MSE vs the original's ([-1, 1] scale):",
          {k: round(v, 4) for k, v in report.items()})


def test_mirrored_photo_gives_the_mirrored_crop(aligner, photo):
    _, _, _, crop = _align_one(aligner, photo)
    _, _, pts, mirrored = _align_one(aligner, ImageOps.mirror(photo))
    assert np.abs(pts[:2] - EYES).max() < 0.02
    mse = float((((mirrored[:, ::-1].astype(float) - crop.astype(float)) / 127.5) ** 2).mean())
    assert mse < 0.05, mse  # landmarks are not exactly mirror-symmetric


def test_two_faces_give_two_crops_and_selection_works(aligner, photo):
    from stylemapgan.imaging.faces import select_faces

    two = Image.new("RGB", (512, 256))
    two.paste(photo, (0, 0))
    two.paste(photo.resize((230, 230), Image.Resampling.LANCZOS), (270, 13))
    found = aligner.align(np.asarray(two), SIZE, "all")
    assert len(found) == 2
    (a, pa), (b, pb) = found
    assert a.area >= b.area and a.box[0] < 256 <= b.box[0]  # largest first
    assert pa.to_photo([[32, 32]])[0][0] < 256 < pb.to_photo([[32, 32]])[0][0]
    faces = aligner.detect(np.asarray(two))
    assert select_faces(faces, "1")[0].box == b.box and select_faces(faces, "largest")[0].box == a.box
    with pytest.raises(Exception, match="has 2 face"):
        select_faces(faces, "5")


def test_a_photo_without_a_face_fails_clearly(aligner, photo):
    from stylemapgan.imaging.faces import NoFaceError

    landscape = photo.crop((0, 150, 256, 256)).resize((300, 124))
    with pytest.raises(NoFaceError, match=r"^landscape\.jpg: no face found$"):
        aligner.align(np.asarray(landscape), SIZE, name="landscape.jpg")
    # The caller's advice (options its command has) ends the message.
    with pytest.raises(NoFaceError, match=r"^landscape\.jpg: no face found; use --this$"):
        aligner.align(np.asarray(landscape), SIZE, name="landscape.jpg", hint="use --this")


def test_the_badge_is_not_a_face(aligner):
    """dlib's detector also fires weakly on the mission patch of the full-size photo; the
    score threshold keeps only the face."""
    big = Image.open(FIXTURE).convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)
    assert len(aligner.detect(np.asarray(big))) == 1


def test_the_aligned_placement_round_trips_through_a_record(aligner, photo):
    _, pl, _, _ = _align_one(aligner, photo)
    again = Placement.from_dict(pl.to_dict())
    assert again == pl and again.fit == "aligned"
    assert np.array_equal(fit_rgb(photo, again), fit_rgb(photo, pl))


def test_without_the_extra_the_error_names_the_install_command(monkeypatch):
    import sys

    from stylemapgan.imaging import faces

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    with pytest.raises(faces.FacesUnavailable, match=r'pip install "stylemapgan\[faces\]"'):
        faces.FaceAligner()


# --------------------------------------------------------------------------- stylemapgan align
def test_align_command_writes_crops_and_their_transforms(tmp_path, photo, capsys):
    import json

    from stylemapgan.cli import main

    _faces()
    two = Image.new("RGB", (512, 256), (30, 30, 30))
    two.paste(photo, (0, 0))
    two.paste(photo.resize((230, 230), Image.Resampling.LANCZOS), (270, 13))
    two.save(tmp_path / "two.jpg", quality=95)
    photo.crop((0, 150, 256, 256)).save(tmp_path / "landscape.png")
    out = tmp_path / "aligned"
    assert main(["align", str(FIXTURE), str(tmp_path / "two.jpg"), "--out", str(out),
                 "--face", "all", "--size", "48"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["align.json", "astronaut-256_face0.json", "astronaut-256_face0.png",
                     "two_face0.json", "two_face0.png", "two_face1.json", "two_face1.png"]
    entry = json.loads((out / "two_face1.json").read_text())
    pl = Placement.from_dict(entry["placement"])
    assert pl.fit == "aligned" and pl.size == 48 and entry["photo_size"] == [512, 256]
    crop = np.asarray(Image.open(out / "two_face1.png"))
    assert crop.shape == (48, 48, 3)
    assert np.array_equal(crop, fit_rgb(Image.open(tmp_path / "two.jpg").convert("RGB"), pl))
    assert pl.to_photo([[24, 24]])[0][0] > 256  # the second face is on the right
    # A photo without a face stops the run, naming it, unless --skip-bad.
    assert main(["align", str(tmp_path / "landscape.png"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "landscape.png: no face found" in err and "--skip-bad" in err
    assert main(["align", str(tmp_path / "landscape.png"), str(FIXTURE), "--skip-bad",
                 "--out", str(tmp_path / "y")]) == 0
    printed = capsys.readouterr().out
    # Under --skip-bad the photo is skipped: no advice to pass the option already given.
    assert "landscape.png: no face found" in printed and "--skip-bad" not in printed
    summary = json.loads((tmp_path / "y" / "align.json").read_text())
    assert [f["crop"] for f in summary["faces"]] == ["astronaut-256.png"]
    assert "landscape.png" in summary["skipped"][0]["path"]
    # Nothing is overwritten without being asked, and a photo that fails leaves nothing behind.
    assert main(["align", str(FIXTURE), "--out", str(tmp_path / "y")]) == 1
    z = tmp_path / "z"
    assert main(["align", str(FIXTURE), str(tmp_path / "landscape.png"), "--out", str(z)]) == 2
    assert not z.exists() or sorted(p.name for p in z.iterdir()) == []


def test_align_photos_returns_each_face_and_prints_nothing(tmp_path, photo, capsys):
    """The library call behind `stylemapgan align`: skips reported to a callback, the folder
    held while written, the results returned."""
    import contextlib
    import json

    from stylemapgan.imaging.alignment import align_photos

    _faces()
    photo.crop((0, 150, 256, 256)).save(tmp_path / "landscape.png")
    held, skipped = [], []

    @contextlib.contextmanager
    def hold(folder):
        held.append(folder)
        yield

    done = align_photos([tmp_path / "landscape.png", FIXTURE], tmp_path / "a", size=32,
                        skip_bad=True, hold_folder=hold, on_skip=skipped.append)
    assert held == [tmp_path / "a"] and done.size == 32 and done.photos == 1
    assert [s.path.name for s in skipped] == ["landscape.png"] and done.skipped == tuple(skipped)
    assert skipped[0].reason.endswith("no face found")
    (face,) = done.faces
    assert face.crop == tmp_path / "a" / "astronaut-256.png" and face.crop.is_file()
    assert json.loads(face.record.read_text()) == face.entry
    assert face.entry["face_index"] == 0 and face.entry["source"] == str(FIXTURE)
    assert set(done.seconds) == {"read", "detect", "crop"}
    assert capsys.readouterr().out == ""
    with pytest.raises(FileExistsError, match="align.json"):
        align_photos([FIXTURE], tmp_path / "a", size=32)


def test_edit_with_align_pastes_back_into_the_full_photo(tmp_path, tiny_model_file):
    import json

    from stylemapgan.cli import main
    from stylemapgan.formats.stylemaps import load_stylemap

    _faces()
    photo = np.asarray(Image.open(FIXTURE).convert("RGB")).astype(int)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "empty.png")
    common = ["--model", str(tiny_model_file), "--device", "cpu", "--align", "--paste-back"]
    # An empty mask: the full photo comes back pixel for pixel.
    out = tmp_path / "empty"
    assert main(["edit", "local", str(FIXTURE), str(FIXTURE), "--mask", str(tmp_path / "empty.png"),
                 "--out", str(out), *common]) == 0
    assert np.array_equal(np.asarray(Image.open(out / "pasted.png")).astype(int), photo)
    record = json.loads((out / "record.json").read_text())
    src = record["inputs"][0]
    assert src["placement"]["fit"] == "aligned" and len(src["sha256"]) == 64
    # A local edit changes only pixels of the aligned square that the grown mask reaches.
    ImageOps.mirror(Image.open(FIXTURE)).rotate(8).save(tmp_path / "other.png")
    for mode in ("replace", "residual"):
        d = tmp_path / mode
        assert main(["edit", "local", str(FIXTURE), str(tmp_path / "other.png"),
                     "--mask-box", "2,5,6,7", "--paste-mode", mode, "--feather", "2",
                     "--out", str(d), *common]) == 0
        pasted = np.asarray(Image.open(d / "pasted.png")).astype(int)
        assert pasted.shape == photo.shape
        changed = np.abs(pasted - photo).max(-1) > 0
        ys, xs = np.nonzero(changed)
        # Only pixels of the aligned square change (the tiny test model's receptive field
        # covers most of its 32 px square), nothing outside it.
        pl = Placement.from_dict(json.loads((d / "record.json").read_text())["inputs"][0]["placement"])
        inside = pl.from_photo(np.stack([xs + 0.5, ys + 0.5], 1))
        assert changed.any() and inside.min() > -3 and inside.max() < 35
        print(f"{mode} paste-back: {int(changed.sum())} of {changed.size} photo pixels changed")
    # Project with --align keeps the placement and the photo's checksum in the stylemap file.
    proj = tmp_path / "proj"
    assert main(["project", str(FIXTURE), "--align", "--model", str(tiny_model_file),
                 "--device", "cpu", "--out", str(proj)]) == 0
    saved = load_stylemap(next(proj.glob("*.stylemap.safetensors")))
    assert saved.placement.fit == "aligned" and saved.source_sha256 and len(saved.source_sha256) == 64
    # Without a mask the whole aligned square goes back, and nothing outside it changes.
    assert main(["edit", "reconstruct", str(FIXTURE), "--align", "--paste-back", "--model",
                 str(tiny_model_file), "--device", "cpu", "--out", str(tmp_path / "rec")]) == 0
    rec = np.asarray(Image.open(tmp_path / "rec" / "pasted.png")).astype(int)
    changed = np.abs(rec - photo).max(-1) > 0
    ys, xs = np.nonzero(changed)
    assert changed.any() and xs.min() > 40 and xs.max() < 185 and ys.max() < 140
    print(f"reconstruct --align --paste-back: {int(changed.sum())} of {changed.size} pixels changed")


def test_edit_align_is_for_the_source_and_align_ref_for_references(tmp_path, tiny_model_file,
                                                                   capsys):
    """--align aligns the source only, so a reference without a face (a cartoon, a landscape)
    can be used with an aligned photo; --align-ref aligns the references too. A photo without a
    face is named with advice that uses only options `edit` has."""
    import json

    from stylemapgan.cli import main

    _faces()
    Image.open(FIXTURE).convert("RGB").crop((0, 150, 256, 256)).save(tmp_path / "landscape.png")
    common = ["--mask-box", "2,5,6,7", "--model", str(tiny_model_file), "--device", "cpu"]
    out = tmp_path / "ok"
    assert main(["edit", "local", str(FIXTURE), str(tmp_path / "landscape.png"), "--align",
                 "--out", str(out), *common]) == 0
    src, ref = json.loads((out / "record.json").read_text())["inputs"]
    assert src["placement"]["fit"] == "aligned" and ref["placement"]["fit"] == "crop"
    # --align-ref: the reference is aligned too, and one without a face is refused.
    assert main(["edit", "local", str(FIXTURE), str(FIXTURE), "--align", "--align-ref",
                 "--out", str(tmp_path / "both"), *common]) == 0
    src, ref = json.loads((tmp_path / "both" / "record.json").read_text())["inputs"]
    assert src["placement"]["fit"] == ref["placement"]["fit"] == "aligned"
    # A record of an earlier release (--align aligned the references too, there was no
    # --align-ref) replays as it was made.
    old = json.loads((tmp_path / "both" / "record.json").read_text())
    old["argv"] = [w for w in old["argv"] if w != "--align-ref"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["edit", "replay", str(tmp_path / "old.json"), "--out", str(tmp_path / "again"),
                 "--strict"]) == 0
    capsys.readouterr()
    assert main(["edit", "local", str(FIXTURE), str(tmp_path / "landscape.png"), "--align",
                 "--align-ref", "--out", str(tmp_path / "no"), *common]) == 2
    err = capsys.readouterr().err
    assert "landscape.png: no face found" in err and "--align-ref" in err
    # A source without a face: advice with --source-box, never --box or --skip-bad.
    assert main(["edit", "local", str(tmp_path / "landscape.png"), str(FIXTURE), "--align",
                 "--out", str(tmp_path / "no2"), *common]) == 2
    err = capsys.readouterr().err
    assert "landscape.png: no face found" in err and "--source-box" in err
    assert "--box" not in err.replace("--source-box", "") and "--skip-bad" not in err
    # interpolate has no --source-box: it is not advised there.
    assert main(["edit", "interpolate", str(tmp_path / "landscape.png"), str(FIXTURE), "--align",
                 "--steps", "2", "--model", str(tiny_model_file), "--device", "cpu",
                 "--out", str(tmp_path / "no3")]) == 2
    err = capsys.readouterr().err
    assert "no face found" in err and "--source-box" not in err and "--skip-bad" not in err


def test_exif_rotated_photo_is_aligned_and_pasted_back_upright(tmp_path, tiny_model_file):
    """A phone photo stored sideways with an EXIF orientation tag: faces are found in the
    upright picture and the pasted photo comes back upright at its displayed size."""
    from stylemapgan.cli import main

    _faces()
    upright = Image.open(FIXTURE).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise = upright
    sideways.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    out = tmp_path / "rec"
    assert main(["edit", "reconstruct", str(tmp_path / "phone.jpg"), "--align", "--paste-back",
                 "--model", str(tiny_model_file), "--device", "cpu", "--out", str(out)]) == 0
    pasted = np.asarray(Image.open(out / "pasted.png")).astype(int)
    base = np.asarray(upright).astype(int)
    assert pasted.shape == base.shape
    far = np.ones(base.shape[:2], bool)
    far[0:140, 40:185] = False  # around the face
    assert np.abs(pasted[far] - base[far]).mean() < 3  # upright: matches the upright photo


def test_paste_back_keeps_the_photos_mode(tmp_path, tiny_model_file):
    """A grayscale photo comes back grayscale, a photo with transparency keeps its alpha."""
    from stylemapgan.cli import main

    _faces()
    upright = Image.open(FIXTURE).convert("RGB")
    upright.convert("L").save(tmp_path / "gray.png")
    rgba = upright.convert("RGBA")
    alpha = np.full((256, 256), 255, np.uint8)
    alpha[:, :20] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "cut.png")
    for name, mode in (("gray.png", "L"), ("cut.png", "RGBA")):
        out = tmp_path / name.split(".")[0]
        assert main(["edit", "reconstruct", str(tmp_path / name), "--align", "--paste-back",
                     "--model", str(tiny_model_file), "--device", "cpu", "--out", str(out)]) == 0
        pasted = Image.open(out / "pasted.png")
        assert pasted.mode == mode and pasted.size == (256, 256)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cut" / "pasted.png"))[..., 3], alpha)
