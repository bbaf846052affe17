"""Named regions of faces (from the 68 landmarks) and of avatars (from their part masks), and
the `stylemapgan regions` command."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import PHOTO, faces_or_skip
from stylemapgan.errors import InputError
from stylemapgan.imaging import face_regions as fr

FIXTURE = PHOTO
MOUTH = list(range(48, 68))
EYES = list(range(36, 48))
#: Which landmarks each region must hold.
HOLDS = {"left_eye": range(36, 42), "right_eye": range(42, 48), "eyes": EYES,
         "brows": range(17, 27), "nose": range(27, 36), "mouth": MOUTH, "lips": MOUTH,
         "features": range(17, 68), "features_hull": range(17, 68), "face": range(0, 68)}


def _aligner():
    return faces_or_skip().FaceAligner()


@pytest.fixture(scope="module")
def aligner():
    return _aligner()


def _at(mask, points):
    """Mask values at the pixels holding ``points`` (x, y)."""
    h, w = mask.shape
    xs = np.clip(np.floor(points[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.floor(points[:, 1]).astype(int), 0, h - 1)
    return mask[ys, xs]


def _synthetic_landmarks():
    """68 points of a face-like layout on a 200 px canvas (no dlib needed)."""
    lm = np.zeros((68, 2))
    t = np.linspace(np.pi, 0, 17)
    lm[0:17] = np.stack([100 + 60 * np.cos(t), 90 + 80 * np.sin(t)], 1)   # jaw, left to right
    lm[17:22] = np.stack([np.linspace(55, 90, 5), [72, 68, 66, 67, 70]], 1)
    lm[22:27] = np.stack([np.linspace(110, 145, 5), [70, 67, 66, 68, 72]], 1)
    lm[27:31] = np.stack([[100] * 4, np.linspace(82, 110, 4)], 1)
    lm[31:36] = np.stack([np.linspace(90, 110, 5), [118, 120, 121, 120, 118]], 1)
    for k, cx in ((36, 72), (42, 128)):
        a = np.linspace(np.pi, -np.pi, 7)[:6]
        lm[k:k + 6] = np.stack([cx - 12 * np.cos(a), 85 - 5 * np.sin(a)], 1)
    a = np.linspace(np.pi, -np.pi, 13)[:12]
    lm[48:60] = np.stack([100 - 22 * np.cos(a), 140 - 10 * np.sin(a)], 1)
    a = np.linspace(np.pi, -np.pi, 9)[:8]
    lm[60:68] = np.stack([100 - 15 * np.cos(a), 140 - 4 * np.sin(a)], 1)
    return lm


def test_regions_hold_their_landmarks_and_not_the_others():
    lm = _synthetic_landmarks()
    masks = fr.face_region_masks(lm, 200)
    assert list(masks) == list(fr.FACE_REGIONS)
    for name, idx in HOLDS.items():
        assert (_at(masks[name], lm[list(idx)]) >= 0.5).all(), name  # pixel centres: <= 0.71 px off
    assert (_at(masks["mouth"], lm[EYES]) == 0).all()
    assert (_at(masks["eyes"], lm[MOUTH]) == 0).all()
    # skin: 1 around the features, its soft edge reaching into them (every region's edge
    # lies outside it), 0 deep inside
    centres = np.array([lm[36:42].mean(0), lm[42:48].mean(0), lm[48:60].mean(0)])
    assert (_at(masks["skin"], centres) < 0.5).all() and _at(masks["skin"], centres)[2] == 0
    assert (_at(masks["skin"], lm[[2, 8, 14]]) >= 0.5).all() and _at(masks["skin"], lm[[30]])[0] == 1
    assert (_at(masks["background"], lm) == 0).all()
    assert masks["background"][0, 0] == 1 and masks["background"][0, -1] == 1
    # lips: the mouth without its opening
    assert _at(masks["lips"], np.array([[100.0, 140.0]]))[0] < 1 <= _at(masks["mouth"], np.array([[100.0, 140.0]]))[0]
    for m in masks.values():
        assert m.dtype == np.float32 and m.shape == (200, 200) and m.min() >= 0 and m.max() <= 1


def test_grow_and_soft_edges():
    lm = _synthetic_landmarks()
    base = fr.face_region_masks(lm, 200, "mouth")["mouth"]
    grown = fr.face_region_masks(lm, 200, "mouth", grow=6)["mouth"]
    shrunk = fr.face_region_masks(lm, 200, "mouth", grow=-3)["mouth"]
    assert (grown >= base).all() and (shrunk <= base).all()
    assert (grown == 1).sum() > (base == 1).sum() > (shrunk == 1).sum() > 0
    # The edge is soft: values strictly between 0 and 1 around the region.
    assert ((base > 0) & (base < 1)).sum() > 0
    hard = fr.face_region_masks(lm, 200, "mouth", soft=0.01)["mouth"]
    assert ((hard > 0) & (hard < 1)).sum() < ((base > 0) & (base < 1)).sum()
    # A canvas of another (non-square) size draws the same region where it lies.
    wide = fr.face_region_masks(lm, (300, 200), "mouth")["mouth"]
    assert np.array_equal(wide[:, :200], base) and not wide[:, 200:].any()


def test_large_photos_interpolate_distances_closely():
    lm = _synthetic_landmarks() * 6  # eye distance 336 px: soft edge 34 px, sampled every 8
    masks = fr.face_region_masks(lm, 1200, "mouth,skin,eyes")
    for name, idx in (("mouth", MOUTH), ("eyes", EYES)):
        assert (_at(masks[name], lm[idx]) >= 0.9).all(), name
    g = fr.FaceGeometry(lm)
    recipes, parts = fr._recipes(g), fr._parts(g)
    soft = 0.1 * g.eye_distance
    for name in ("mouth", "skin"):
        exact = fr._window_distance(recipes[name][0], parts, 300, 900, 600, 1000, 1)
        coarse = fr._window_distance(recipes[name][0], parts, 300, 900, 600, 1000, int(soft // 4))
        dm = np.abs(np.clip(1 - exact / soft, 0, 1) - np.clip(1 - coarse / soft, 0, 1))
        assert dm.max() < 0.15 and dm.mean() < 1e-3, (name, dm.max(), dm.mean())
        assert np.abs(masks[name][600:1000, 300:900] - np.clip(1 - exact / soft, 0, 1)).max() < 0.15


@pytest.mark.parametrize("bad, match", [
    (dict(names="chin"), r"^a face has no region 'chin'; it has: left_eye, right_eye, eyes"),
    (dict(names="eyes,"), None),
    (dict(grow=float("nan")), r"grow nan px"),
    (dict(soft=0.0), r"soft edge must be a positive"),
])
def test_bad_names_and_values_are_one_line_errors(bad, match):
    lm = _synthetic_landmarks()
    if match is None:
        assert list(fr.face_region_masks(lm, 64, **bad)) == ["eyes"]
        return
    with pytest.raises(InputError, match=match) as exc:
        fr.face_region_masks(lm, 64, **bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match=r"68 finite landmarks"):
        fr.face_region_masks(lm[:60], 64)


def test_union_names_the_image_and_what_it_has():
    masks = fr.face_region_masks(_synthetic_landmarks(), 200, "eyes,brows,mouth")
    u = fr.union(masks, "eyes,brows")
    assert np.array_equal(u, np.maximum(masks["eyes"], masks["brows"]))
    with pytest.raises(InputError, match=r"^me\.jpg has no region 'nose'; it has: eyes, brows, mouth$"):
        fr.union(masks, "nose", "me.jpg")


def test_label_map_reads_back_as_a_label_map(tmp_path):
    from stylemapgan.imaging.masks import mask_from_labels

    lm = _synthetic_landmarks()
    labels = fr.label_map(lm, 200)
    assert set(np.unique(labels)) <= set(fr.LABEL_IDS.values())
    assert _at(labels, lm[36:42]).tolist() == [fr.LABEL_IDS["left_eye"]] * 6
    assert labels[0, 0] == fr.LABEL_IDS["background"]
    img = Image.fromarray(labels, "P")
    img.putpalette(fr.label_palette())
    img.save(tmp_path / "l.png")
    mouth = mask_from_labels(tmp_path / "l.png", "mouth", 200)
    assert (_at(mouth, lm[MOUTH]) > 0).all() and not _at(mouth, lm[EYES]).any()


# --------------------------------------------------------------------------- avatars
def test_avatar_regions_use_the_face_names():
    from stylemapgan.data.avatars import AVATAR_REGIONS, avatar_of_image, gallery_dir

    folder, r79 = avatar_of_image(gallery_dir() / "test" / "seed000079.png")
    masks = folder.regions(r79)
    assert list(masks) == list(AVATAR_REGIONS)  # this one has glasses and a beard
    part = {p: folder.load_mask(r79, p) for p in r79["parts"]}
    assert np.array_equal(masks["features"] > 0, part["face"])  # the dataset's "face" part
    assert np.array_equal(masks["face"] > 0, part["head"] & ~part["hair"])
    assert np.array_equal(masks["skin"] + masks["neck"], part["skin"].astype(np.float32))
    shared = set(AVATAR_REGIONS) & set(fr.FACE_REGIONS)
    assert shared == {"background", "face", "skin", "features", "features_hull"}
    grown = folder.regions(r79, "features_hull", grow=2)["features_hull"]
    assert grown.sum() > masks["features_hull"].sum() and (grown >= masks["features_hull"]).all()
    _, r9 = avatar_of_image(gallery_dir() / "test" / "seed000009.png")
    with pytest.raises(InputError, match=r"seed000009\.png has no region 'glasses'; it has: "
                                         r"background, face, skin, .*hair, clothing$"):
        folder.regions(r9, "glasses")
    assert avatar_of_image(FIXTURE) is None


def test_image_regions_in_the_models_square(tmp_path, aligner):
    """The one door an edit uses: avatars' part regions, photos' face regions, in the square
    of the image's placement, grown in the image's pixels."""
    from stylemapgan.data.avatars import AvatarFolder, gallery_dir
    from stylemapgan.data.regions import available_regions, image_regions, region_mask

    avatar = gallery_dir() / "test" / "seed000079.png"
    folder = AvatarFolder(gallery_dir())
    own = folder.regions(folder.record(79), "hair,glasses")
    at64 = image_regions(avatar, 64, None, "hair,glasses")
    assert all(np.array_equal(at64[k], own[k]) for k in own)
    at32 = image_regions(avatar, 32, None, "hair")["hair"]  # area-averaged into a 32 px model
    assert at32.shape == (32, 32) and at32.mean() > 0 and abs(at32.mean() - own["hair"].mean()) < 1e-5
    assert "glasses" in available_regions(avatar)
    assert "glasses" not in available_regions(gallery_dir() / "test" / "seed000009.png")
    with pytest.raises(InputError, match=r"seed000009\.png has no region 'mouth'; it has: background"):
        image_regions(gallery_dir() / "test" / "seed000009.png", 64, None, "mouth")

    photo = np.asarray(Image.open(FIXTURE).convert("RGB"))
    ((face, pl),) = aligner.align(photo, 64)
    sq = image_regions(FIXTURE, 64, pl, "mouth,eyes", landmarks=face.landmarks)
    assert np.array_equal(sq["mouth"], fr.aligned_face_regions(face.landmarks, pl, "mouth")["mouth"])
    lm_sq = pl.from_photo(face.landmarks)
    assert (_at(sq["mouth"], lm_sq[MOUTH]) >= 0.5).all() and not _at(sq["mouth"], lm_sq[EYES]).any()
    # grow is in photo pixels: the aligned square shows the photo at ~1.9 photo px per pixel
    photo_px = float(np.sqrt(abs(np.linalg.det(pl.matrix()[:, :2]))))
    grown = image_regions(FIXTURE, 64, pl, "mouth", grow=6, landmarks=face.landmarks)["mouth"]
    assert np.array_equal(grown, fr.face_region_masks(lm_sq, 64, "mouth", grow=6 / photo_px)["mouth"])
    assert grown.sum() > sq["mouth"].sum()
    # without landmarks the largest face is found; a union of names
    found = region_mask(FIXTURE, "mouth,eyes", 64, pl, aligner=aligner)
    assert np.array_equal(found, np.maximum(sq["mouth"], sq["eyes"]))
    Image.fromarray(photo[150:, :]).save(tmp_path / "landscape.png")
    with pytest.raises(InputError, match=r"landscape\.png: no face found, so it has no named regions"):
        image_regions(tmp_path / "landscape.png", 64, None, "mouth", aligner=aligner)
    with pytest.raises(InputError, match=r"astronaut-256\.jpg has no region 'hair'; it has: left_eye"):
        image_regions(FIXTURE, 64, pl, "hair", landmarks=face.landmarks)


# --------------------------------------------------------------------------- the command
def _variants(photo):
    return {
        "original": photo,
        "rotated 15": photo.rotate(15, resample=Image.Resampling.BICUBIC, expand=True),
        "rotated -12": photo.rotate(-12, resample=Image.Resampling.BICUBIC, expand=True),
        "scaled 1.5": photo.resize((384, 384), Image.Resampling.LANCZOS),
        "scaled 0.8": photo.resize((205, 205), Image.Resampling.LANCZOS),
        "mirrored": ImageOps.mirror(photo),
    }


def _stylemapgan():
    import sys

    beside = Path(sys.executable).parent / "stylemapgan"  # the venv's, when it is not on PATH
    exe = shutil.which("stylemapgan") or (str(beside) if beside.is_file() else None)
    assert exe, "the console script is not installed"
    return exe


def test_regions_command_masks_hold_the_landmarks_on_transformed_photos(tmp_path, aligner):
    photo = Image.open(FIXTURE).convert("RGB")
    names = []
    for name, img in _variants(photo).items():
        stem = name.replace(" ", "_")
        img.save(tmp_path / f"{stem}.png")
        names.append(stem)
    out = tmp_path / "r"
    r = subprocess.run([_stylemapgan(), "regions", *(str(tmp_path / f"{n}.png") for n in names),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for stem in names:
        img = Image.open(tmp_path / f"{stem}.png")
        (face,) = aligner.detect(np.asarray(img))
        lm = face.landmarks
        for region in fr.FACE_REGIONS:
            with Image.open(out / f"{stem}.{region}.png") as m:
                assert m.mode == "L" and m.size == img.size
        mouth = np.asarray(Image.open(out / f"{stem}.mouth.png")) / 255.0
        assert (_at(mouth, lm[MOUTH]) >= 0.5).all(), stem
        assert (_at(mouth, lm[EYES]) == 0).all(), stem
        eyes = np.asarray(Image.open(out / f"{stem}.eyes.png")) / 255.0
        assert (_at(eyes, lm[EYES]) >= 0.5).all() and (_at(eyes, lm[MOUTH]) == 0).all(), stem
        with Image.open(out / f"{stem}.labels.png") as lab:
            assert lab.mode == "P" and lab.size == img.size
    assert "original.png: 12 region(s)" in r.stdout


def test_regions_command_grow_subset_and_errors(tmp_path, aligner, capsys):
    from stylemapgan.cli import main

    out = tmp_path / "r"
    assert main(["regions", str(FIXTURE), "--out", str(out), "--regions", "mouth,eyes",
                 "--region-grow", "5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut-256.eyes.png", "astronaut-256.labels.png", "astronaut-256.mouth.png"]
    grown = np.asarray(Image.open(out / "astronaut-256.mouth.png"))
    assert main(["regions", str(FIXTURE), "--out", str(tmp_path / "s"), "--regions", "mouth"]) == 0
    plain = np.asarray(Image.open(tmp_path / "s" / "astronaut-256.mouth.png"))
    assert (grown >= plain).all() and (grown == 255).sum() > (plain == 255).sum()
    # Existing outputs are kept unless --overwrite.
    assert main(["regions", str(FIXTURE), "--out", str(out), "--regions", "mouth"]) == 1
    capsys.readouterr()
    # A photo without a face, and a region no face has: one line each.
    Image.open(FIXTURE).crop((0, 150, 256, 256)).save(tmp_path / "landscape.png")
    assert main(["regions", str(tmp_path / "landscape.png"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'landscape.png'}: no face found;") and err.count("\n") == 1
    assert main(["regions", str(FIXTURE), "--out", str(tmp_path / "y"), "--regions", "hair"]) == 2
    err = capsys.readouterr().err
    assert "has no region 'hair'; it has: left_eye" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_written_mouth_mask_edits_only_around_the_mouth(tmp_path, aligner, tiny_model_file,
                                                         capsys):
    """regions -> edit local --align --mask NAME.mouth.png --paste-back --paste-area mask: only
    photo pixels near the mouth change (what `edit local --region mouth` is to do), and the
    label map works as --labels with --parts mouth."""
    from stylemapgan.cli import main

    assert main(["regions", str(FIXTURE), "--out", str(tmp_path / "r")]) == 0
    photo = np.asarray(Image.open(FIXTURE).convert("RGB")).astype(int)
    ImageOps.mirror(Image.open(FIXTURE)).rotate(8).save(tmp_path / "other.png")
    (face,) = aligner.detect(photo.astype(np.uint8))
    mouth_c = face.landmarks[48:68].mean(0)
    for name, how in (("mask", ["--mask", str(tmp_path / "r" / "astronaut-256.mouth.png")]),
                      ("labels", ["--labels", str(tmp_path / "r" / "astronaut-256.labels.png"),
                                  "--parts", "mouth"])):
        d = tmp_path / name
        assert main(["edit", "local", str(FIXTURE), str(tmp_path / "other.png"), *how,
                     "--align", "--paste-back", "--paste-area", "mask", "--feather", "2",
                     "--model", str(tiny_model_file), "--device", "cpu", "--out", str(d)]) == 0
        pasted = np.asarray(Image.open(d / "pasted.png")).astype(int)
        changed = np.abs(pasted - photo).max(-1) > 0
        ys, xs = np.nonzero(changed)
        assert changed.sum() > 20, name
        # within the mouth's box grown by the feather and the 32 px crop's pixel (~4 photo px)
        dist = np.hypot(xs + 0.5 - mouth_c[0], ys + 0.5 - mouth_c[1])
        assert dist.max() < 30, (name, dist.max())
        print(f"{name}: {int(changed.sum())} photo pixels changed, all within "
              f"{dist.max():.1f} px of the mouth's centre")


def test_regions_command_on_a_gallery_avatar(tmp_path, capsys):
    from stylemapgan.cli import main
    from stylemapgan.data.avatars import AvatarFolder, gallery_dir

    avatar = gallery_dir() / "test" / "seed000079.png"
    assert main(["regions", str(avatar), "--out", str(tmp_path / "r"), "--regions", "hair,face"]) == 0
    hair = np.asarray(Image.open(tmp_path / "r" / "seed000079.hair.png"))
    folder = AvatarFolder(gallery_dir())
    assert np.array_equal(hair == 255, folder.load_mask(folder.record(79), "hair"))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["seed000079.face.png",
                                                                  "seed000079.hair.png"]


def test_write_region_masks_reports_each_image_and_prints_nothing(tmp_path, capsys):
    """The library call behind `stylemapgan regions` (an avatar: no face extra needed)."""
    from stylemapgan.data.avatars import gallery_dir
    from stylemapgan.data.regions import RegionFiles, write_region_masks

    avatar = gallery_dir() / "test" / "seed000079.png"
    heard = []
    done = write_region_masks([avatar, avatar], tmp_path / "r", names="hair,face",
                              on_written=heard.append)
    assert done == tuple(heard) == (RegionFiles(avatar, "seed000079", ("hair", "face"), False),
                                    RegionFiles(avatar, "seed000079-2", ("hair", "face"), False))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "seed000079-2.face.png", "seed000079-2.hair.png", "seed000079.face.png",
        "seed000079.hair.png"]
    assert capsys.readouterr().out == ""
    with pytest.raises(InputError, match="whole pixels"):
        write_region_masks([avatar], tmp_path / "s", grow=0.5)
    with pytest.raises(FileExistsError):
        write_region_masks([avatar], tmp_path / "r", names="hair")


def test_regions_help_has_an_example(capsys):
    from stylemapgan.cli import main

    with pytest.raises(SystemExit):
        main(["regions", "--help"])
    out = capsys.readouterr().out
    assert "stylemapgan regions astronaut.jpg --out r" in out and "--region-grow PX" in out
    from stylemapgan.commands import regions
    from stylemapgan.data.avatars import AVATAR_REGIONS

    assert ", ".join(fr.FACE_REGIONS) == regions.FACE_NAMES
    assert ", ".join(AVATAR_REGIONS) == regions.AVATAR_NAMES
    flat = " ".join(out.split())
    assert f"Face regions: {regions.FACE_NAMES} (" in flat
    assert f"gives its part masks instead: {regions.AVATAR_NAMES}." in flat
