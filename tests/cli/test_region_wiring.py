"""Issue 25 wired through: transplants whose regions are scaled, rotated and mirrored (CLI words,
Python API, records and replays) and ``edit local --region NAME`` from a photo's named
regions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTO, faces_or_skip
from stylemapgan.cli import main
from stylemapgan.editing.editor import Editor
from stylemapgan.editing.regions import Region
from stylemapgan.imaging.images import from_uint8, to_uint8
from stylemapgan.imaging.masks import mask_from_box
from stylemapgan.imaging.placement import load_image

FIXTURE = PHOTO


def _smooth(seed, size=32):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    Image.fromarray(_smooth(0)).save(d / "a.png")
    Image.fromarray(_smooth(1)).save(d / "b.png")
    return d / "a.png", d / "b.png"


def _run(args, capsys):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_and_python_api_give_the_same_pixels_for_a_scaled_rotated_mirrored_transplant(
        tmp_path, pair, tiny_model_file, capsys):
    a, b = pair
    common = ["--model", tiny_model_file, "--device", "cpu"]
    words = ["box=1,2,4,6", "scale=1.5", "angle=30", "flip=h", "move=1,0"]
    rc, out, err = _run(["edit", "transplant", a, "--ref", b, "--region", *words,
                         "--out", tmp_path / "tp", *common], capsys)
    assert rc == 0, err
    cli = _png(tmp_path / "tp" / "result.png")

    ed = Editor.load(tiny_model_file, "cpu")
    size, cells = ed.size, ed.config.stylemap_size
    imgs = [load_image(p, size)[0] for p in (a, b)]
    w = ed.project(from_uint8(np.stack(imgs)))
    box = torch.from_numpy(mask_from_box("1,2,4,6", size, stylemap_size=cells))
    region = Region(box, dx=size // cells, dy=0, scale=1.5, angle=30, flip="h")
    api = to_uint8(ed.transplant(w[:1], w[1:], [region]))[0]
    assert np.array_equal(api, cli)
    # The transform matters: the same region only moved gives other pixels.
    moved = to_uint8(ed.transplant(w[:1], w[1:], [Region(box, dx=size // cells)]))[0]
    assert np.abs(moved.astype(int) - api.astype(int)).max() > 0

    # The record keeps the words and what each region became; the replay gives the same bytes.
    record = json.loads((tmp_path / "tp" / "record.json").read_text())
    assert all(word in record["argv"] for word in words)
    (placed,) = record["parameters"]["placed_regions"]
    assert placed["transform"]["scale"] == 1.5 and placed["transform"]["angle"] == 30
    assert placed["transform"]["flip"] == "h"
    assert placed["transform"]["move"] == [size // cells, 0]
    assert record["parameters"]["mask_mode"] == "area"
    rc, out, err = _run(["edit", "replay", tmp_path / "tp" / "record.json", "--out",
                         tmp_path / "again", "--strict"], capsys)
    assert rc == 0 and "identical" in out, out + err
    assert np.array_equal(_png(tmp_path / "again" / "result.png"), cli)


def test_identity_words_and_old_records_give_todays_transplant(tmp_path, pair, tiny_model_file,
                                                               capsys):
    """scale=1 angle=360 is no transform: the bytes of a plain move. A record made before the
    transform words (no --mask-mode in its argv) still replays to its bytes."""
    a, b = pair
    common = ["--model", tiny_model_file, "--device", "cpu"]
    assert _run(["edit", "transplant", a, "--ref", b, "--region", "box=1,2,4,6", "move=1,0",
                 "--out", tmp_path / "plain", *common], capsys)[0] == 0
    assert _run(["edit", "transplant", a, "--ref", b, "--region", "box=1,2,4,6", "move=1,0",
                 "scale=1", "angle=360", "--out", tmp_path / "ident", *common], capsys)[0] == 0
    assert np.array_equal(_png(tmp_path / "plain" / "result.png"),
                          _png(tmp_path / "ident" / "result.png"))
    path = tmp_path / "plain" / "record.json"
    record = json.loads(path.read_text())
    i = record["argv"].index("--mask-mode")
    del record["argv"][i: i + 2]  # as records were written before --mask-mode
    del record["parameters"]["placed_regions"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(record))
    rc, out, err = _run(["edit", "replay", old, "--out", tmp_path / "old_again", "--strict"],
                        capsys)
    assert rc == 0 and "identical" in out, out + err


def test_a_mirrored_region_with_nearest_warps_lands_mirrored(tmp_path, pair, tiny_model_file,
                                                             capsys):
    """--mask-mode max: a mirrored whole-cell box copies cells (no resampling), so where it
    lands is the box itself, and to= puts its top-left corner where asked."""
    a, b = pair
    rc, out, err = _run(["edit", "transplant", a, "--ref", b, "--region", "box=1,2,4,6",
                         "flip=h", "to=4,1", "--mask-mode", "max", "--model", tiny_model_file,
                         "--device", "cpu", "--out", tmp_path / "m"], capsys)
    assert rc == 0, err
    record = json.loads((tmp_path / "m" / "record.json").read_text())
    (placed,) = record["parameters"]["placed_regions"]
    size = 32
    cell = size // 8
    # The box's top-left (1, 2) cells goes to (4, 1): a move of (3, -1) cells.
    assert placed["transform"]["move"] == [3 * cell, -1 * cell]
    box = torch.from_numpy(mask_from_box("1,2,4,6", size))
    region = Region(box, dx=3 * cell, dy=-cell, flip="h")
    placed_mask = region.placed_mask(size, size, "max")[0, 0].numpy()
    ys, xs = np.nonzero(placed_mask > 0)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (4 * cell, cell, 7 * cell, 5 * cell)
    assert np.array_equal(placed_mask, region.placed_mask(size, size)[0, 0].numpy())
    assert np.array_equal(placed_mask[cell: 5 * cell, 4 * cell: 7 * cell], np.ones((16, 12)))


@pytest.mark.parametrize("words, message", [
    (["scale=0"], "scale must be > 0"),
    (["scale=-1"], "scale must be > 0"),
    (["scale=nan"], "finite"),
    (["angle=inf"], "finite"),
    (["scale=5"], "out of range"),
    (["flip=x"], "flip must be h, v or hv"),
    (["scale=abc"], "must be a number"),
])
def test_bad_transform_words_are_one_line_errors(tmp_path, pair, tiny_model_file, capsys, words,
                                                 message):
    a, b = pair
    rc, out, err = _run(["edit", "transplant", a, "--ref", b, "--region", "box=1,2,4,6", *words,
                         "--model", tiny_model_file, "--device", "cpu", "--out", tmp_path / "x"],
                        capsys)
    assert rc == 2 and message in err and "region 0" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x" / "result.png").exists()


def test_a_region_moved_entirely_off_the_image_is_an_error(tmp_path, pair, tiny_model_file,
                                                           capsys):
    a, b = pair
    rc, out, err = _run(["edit", "transplant", a, "--ref", b, "--region", "box=6,6,8,8",
                         "scale=0.25", "move=7.5,0", "--model", tiny_model_file, "--device",
                         "cpu", "--out", tmp_path / "x"], capsys)
    assert rc == 2 and "entirely off" in err and len(err.strip().splitlines()) == 1, err


def test_region_describe_and_web_records_carry_the_transform():
    """A web record's region keeps scale/angle/flip (only when not a pure move, so records of
    moves read as before) and a bad one is named by its field."""
    from stylemapgan.editing.record import check_record
    from stylemapgan.errors import InputError

    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:5, 2:5] = 1
    assert "scale" not in Region(m, dx=4).describe()
    d = Region(m, dx=4, scale=2, angle=15, flip="vh").describe()
    assert (d["scale"], d["angle"], d["flip"]) == (2.0, 15.0, "hv")
    record = {"version": 1, "source": "web", "operation": "paint",
              "model": {"name": "m"}, "parameters": {"space": "wplus", "steps": 1},
              "inputs": [{"image": "data:,"}, {"image": "data:,"}],
              "regions": [{**d, "scale": 0}], "outputs": []}
    with pytest.raises(InputError, match=r"regions\[0\]"):
        check_record(record, "r.json")
    record["regions"] = [d]
    check_record(record, "r.json")


# --------------------------------------------------------------------------- named regions
def _faces():
    return faces_or_skip()


def test_local_region_mouth_pastes_back_only_around_the_mouth(tmp_path, tiny_model_file, capsys):
    faces = _faces()
    photo = np.asarray(Image.open(FIXTURE).convert("RGB")).astype(int)
    other = tmp_path / "other.png"
    Image.open(FIXTURE).convert("RGB").rotate(12).save(other)
    common = ["--model", tiny_model_file, "--device", "cpu", "--align", "--paste-back"]
    rc, out, err = _run(["edit", "local", FIXTURE, other, "--region", "mouth", "--feather", "2",
                         "--out", tmp_path / "mouth", *common], capsys)
    assert rc == 0, err
    pasted = _png(tmp_path / "mouth" / "pasted.png").astype(int)
    changed = np.abs(pasted - photo).max(-1) > 0
    ys, xs = np.nonzero(changed)
    (face,) = faces.FaceAligner().detect(np.asarray(Image.open(FIXTURE).convert("RGB")))[:1]
    mouth = face.landmarks[48:68]
    (mx0, my0), (mx1, my1) = mouth.min(0), mouth.max(0)
    margin = 0.6 * (mx1 - mx0)  # soft edge, the aligned square's pixels, the feather
    print(f"--region mouth: {int(changed.sum())} photo pixels changed in x {xs.min()}..{xs.max()}, "
          f"y {ys.min()}..{ys.max()}; mouth landmarks x {mx0:.0f}..{mx1:.0f}, y {my0:.0f}..{my1:.0f}")
    assert changed.sum() > 50
    assert xs.min() >= mx0 - margin and xs.max() <= mx1 + margin
    assert ys.min() >= my0 - margin and ys.max() <= my1 + margin
    # The eyes are far outside: a whole-square paste-back changes many more pixels.
    eyes = face.landmarks[36:48]
    assert not changed[int(eyes[:, 1].min()): int(eyes[:, 1].max()) + 1,
                       int(eyes[:, 0].min()): int(eyes[:, 0].max()) + 1].any()
    # The record keeps the names (and grow); the replay gives the same bytes.
    record = json.loads((tmp_path / "mouth" / "record.json").read_text())
    assert record["parameters"]["region"] == "mouth"
    assert "--region" in record["argv"] and "mouth" in record["argv"]
    rc, out, err = _run(["edit", "replay", tmp_path / "mouth" / "record.json", "--out",
                         tmp_path / "again", "--strict"], capsys)
    assert rc == 0 and "identical" in out, out + err
    # Grown regions select more.
    rc, out, err = _run(["edit", "local", FIXTURE, other, "--region", "mouth", "--region-grow", "12",
                         "--feather", "2", "--out", tmp_path / "grown", *common], capsys)
    assert rc == 0, err
    grown = np.abs(_png(tmp_path / "grown" / "pasted.png").astype(int) - photo).max(-1) > 0
    assert grown.sum() > changed.sum()


def test_local_region_errors_name_the_image_and_its_regions(tmp_path, pair, tiny_model_file,
                                                            capsys):
    _faces()
    common = ["--model", tiny_model_file, "--device", "cpu", "--out", tmp_path / "x"]
    rc, out, err = _run(["edit", "local", FIXTURE, FIXTURE, "--align", "--region", "wings",
                         *common], capsys)
    assert rc == 2 and "wings" in err and str(FIXTURE) in err and "mouth" in err
    assert len(err.strip().splitlines()) == 1
    a, _ = pair  # noise: no face
    rc, out, err = _run(["edit", "local", a, a, "--region", "mouth", *common], capsys)
    assert rc == 2 and "no face" in err and str(a) in err
    rc, out, err = _run(["edit", "local", a, a, "--region", "mouth", "--mask-box", "1,1,2,2",
                         *common], capsys)
    assert rc == 2 and "only one of" in err
    rc, out, err = _run(["edit", "local", a, a, "--region-grow", "3", "--mask-box", "1,1,2,2",
                         *common], capsys)
    assert rc == 2 and "--region-grow applies to --region" in err


def test_local_region_of_a_gallery_avatar_is_its_part_mask(tmp_path, tiny_model_file, capsys):
    """An avatar's --region hair is its hair part mask: the same pixels as that mask given as a
    file; a region the avatar lacks is a one-line error listing the ones it has."""
    from stylemapgan.data.avatars import AvatarFolder, gallery_dir

    a, b = gallery_dir() / "test" / "seed000079.png", gallery_dir() / "test" / "seed000009.png"
    folder = AvatarFolder(gallery_dir())
    hair = folder.load_mask(folder.record(79), "hair")
    Image.fromarray((hair * 255).astype(np.uint8)).save(tmp_path / "hair.png")
    common = ["--model", tiny_model_file, "--device", "cpu"]
    assert _run(["edit", "local", a, b, "--region", "hair", "--out", tmp_path / "named",
                 *common], capsys)[0] == 0
    assert _run(["edit", "local", a, b, "--mask", tmp_path / "hair.png", "--out",
                 tmp_path / "file", *common], capsys)[0] == 0
    named = _png(tmp_path / "named" / "result.png")
    assert np.array_equal(named, _png(tmp_path / "file" / "result.png"))
    assert _run(["edit", "reconstruct", a, "--out", tmp_path / "rec", *common], capsys)[0] == 0
    assert not np.array_equal(named, _png(tmp_path / "rec" / "result.png"))
    rc, out, err = _run(["edit", "local", b, a, "--region", "glasses", "--out", tmp_path / "x",
                         *common], capsys)
    assert rc == 2 and "seed000009.png has no region 'glasses'" in err and "hair" in err
    assert len(err.strip().splitlines()) == 1


def test_a_web_record_with_a_transformed_region_replays_the_same_frames(tiny_model_file):
    """Region.describe() (what the web editor's records keep) carries the transform, and
    replaying such a record runs the same edit: the same frames as Editor.paint."""
    from stylemapgan.editing.record import new_record
    from stylemapgan.imaging.images import png_data_url

    ed = Editor.load(tiny_model_file, "cpu")
    imgs = [_smooth(0), _smooth(1)]
    m = np.zeros((32, 32), np.float32)
    m[8:20, 4:14] = 1
    region = Region(m, dx=6, dy=-2, scale=1.25, angle=-30, flip="v")
    projections = [ed.projection(from_uint8(im)) for im in imgs]
    made = ed.paint(projections[0], projections[1:], [region], steps=2)
    assert made.method == "transplant_wplus"
    record = new_record(source="web", operation="transplant", model={"name": "tiny"},
                        device="cpu", inputs=[{"role": r, "image": png_data_url(im)}
                                              for r, im in zip(("source", "reference 0"), imgs,
                                                               strict=True)],
                        parameters={"space": "wplus", "steps": 2, "mask_mode": "area"},
                        outputs=[], png_compress_level=1, regions=[region.describe()])
    record = json.loads(json.dumps(record))  # as read from the file
    assert record["regions"][0]["angle"] == -30 and record["regions"][0]["flip"] == "v"
    again = Editor.load(tiny_model_file, "cpu").replay_web_record(record)
    assert np.array_equal(again.frames, made.frames)
    # Without its transform the same record is a plain move: other pixels.
    for key in ("scale", "angle", "flip"):
        del record["regions"][0][key]
    plain = Editor.load(tiny_model_file, "cpu").replay_web_record(record)
    assert not np.array_equal(plain.frames, made.frames)


def test_direction_inside_a_named_region_is_the_direction_inside_its_mask(tmp_path, tiny_model_file,
                                                                         capsys):
    """``edit direction --region hair`` on a gallery avatar moves only the hair's cells: the same
    pixels as its hair mask given as a file, and other pixels than the direction everywhere."""
    from stylemapgan.data.avatars import AvatarFolder, gallery_dir
    from stylemapgan.editing.directions import Direction, save_direction
    from stylemapgan.formats.checkpoint import load_model

    a = gallery_dir() / "test" / "seed000079.png"
    folder = AvatarFolder(gallery_dir())
    hair = folder.load_mask(folder.record(79), "hair")
    Image.fromarray((hair * 255).astype(np.uint8)).save(tmp_path / "hair.png")
    shape = load_model(tiny_model_file).config.stylemap_shape
    v = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    save_direction(Direction(v / v.norm()), tmp_path / "d.safetensors")
    common = ["--direction", tmp_path / "d.safetensors", "--strength", "20", "--model",
              tiny_model_file, "--device", "cpu"]
    runs = {"named": ["--region", "hair"], "file": ["--mask", tmp_path / "hair.png"], "all": []}
    for name, words in runs.items():
        rc, out, err = _run(["edit", "direction", a, *words, "--out", tmp_path / name, *common],
                            capsys)
        assert rc == 0, err
    named = _png(tmp_path / "named" / "result.png")
    assert np.array_equal(named, _png(tmp_path / "file" / "result.png"))
    assert not np.array_equal(named, _png(tmp_path / "all" / "result.png"))
    record = json.loads((tmp_path / "named" / "record.json").read_text())
    assert record["parameters"]["region"] == "hair"
    rc, out, err = _run(["edit", "replay", tmp_path / "named" / "record.json", "--out",
                         tmp_path / "again", "--strict"], capsys)
    assert rc == 0 and "identical" in out, out + err
