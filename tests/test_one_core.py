"""One editing core: the web API, the command line, the Python API and the metrics give the same
pixels for the same inputs, and a record downloaded from the web editor replays byte for byte."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import smooth_photo
from stylemapgan.cli import main
from stylemapgan.editing import Editor, Region
from stylemapgan.editing.record import LEGACY_WEB_FORMAT, read_record
from stylemapgan.errors import InputError
from stylemapgan.formats.checkpoint import load_model
from stylemapgan.imaging.images import from_uint8, to_uint8
from stylemapgan.imaging.masks import as_tensor, mask_from_image
from stylemapgan.imaging.placement import load_image
from stylemapgan.metrics import edit_images
from stylemapgan.web.app import create_app
from stylemapgan.web.engine import EditEngine
from stylemapgan.web.settings import WebSettings

SETTINGS = WebSettings(max_upload_bytes=1 << 20, max_pixels=200_000, max_references=2,
                       max_steps=6, max_body_bytes=1 << 22)


def _brush_mask(side=96, seed=0):
    """A soft painted stroke at 3x the model's 32 px, as a canvas would send it (RGBA, white
    on transparent): anti-aliased edges give fractional alpha values."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    d = np.hypot(xx - 0.38 * side, yy - 0.55 * side)
    alpha = np.clip(0.27 * side - d, 0, 1)  # a disc with a one-pixel soft edge
    alpha = np.maximum(alpha, ((xx > 0.6 * side) & (xx < 0.72 * side) & (yy < 0.5 * side)) * 0.6)
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
    return rgba


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(png):
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _pixels(png_bytes):
    return np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"))


@pytest.fixture
def inputs(tmp_path):
    """A square source photo (96 px), a wide reference photo, a painted mask at the source's
    size (3x the model), as files and as the bytes the browser would send."""
    src, ref = smooth_photo(96, 96, 1), smooth_photo(90, 60, 2)
    (tmp_path / "src.png").write_bytes(_png(src))
    (tmp_path / "ref.png").write_bytes(_png(ref))
    mask_png = _png(_brush_mask())
    (tmp_path / "mask.png").write_bytes(mask_png)
    return tmp_path, mask_png


@pytest.fixture
def web(tiny_model_file):
    engine = EditEngine(load_model(tiny_model_file), SETTINGS, model_name="tiny",
                        model_path=str(tiny_model_file))
    with TestClient(create_app(engine)) as client:
        yield client


def _web_edit(client, folder, mask_png, *, dx=0, dy=0, space="wplus", steps=1):
    ids = []
    for name in ("src.png", "ref.png"):
        r = client.post("/api/images", files={"file": (name, (folder / name).read_bytes(), "image/png")})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    body = {"session": "s", "seq": 1, "original": ids[0], "references": [ids[1]],
            "regions": [{"reference": 0, "mask": _data_url(mask_png), "dx": dx, "dy": dy}],
            "space": space, "steps": steps}
    data = client.post("/api/edit", json=body).json()
    assert data["status"] == "done", data
    frames = [client.get(u).content for u in data["frames"]]
    record = client.get(data["record"]).json()
    return frames, record, data


def _cli(*argv):
    assert main(list(map(str, argv))) == 0


@pytest.mark.parametrize("space", ["wplus", "w"])
def test_local_edit_is_the_same_through_web_cli_python_and_metrics(inputs, web, tiny_model_file,
                                                                   space):
    folder, mask_png = inputs
    frames, record, data = _web_edit(web, folder, mask_png, space=space)
    assert data["method"] == f"local_edit_{space}"
    web_px = _pixels(frames[0])

    out = folder / "cli"
    _cli("edit", "local", folder / "src.png", folder / "ref.png", "--mask", folder / "mask.png",
         "--space", space, "--model", tiny_model_file, "--out", out, "--device", "cpu")
    cli_px = np.asarray(Image.open(out / "result.png").convert("RGB"))

    ed = Editor.load(tiny_model_file, "cpu")
    src_px, placement, _ = load_image(folder / "src.png", ed.size)
    ref_px, _, _ = load_image(folder / "ref.png", ed.size)
    mask = mask_from_image(folder / "mask.png", ed.size, placement)
    assert 0 < mask.mean() < 1 and ((mask > 0) & (mask < 1)).any()  # a soft mask
    w_src = ed.projection(from_uint8(src_px))
    w_ref = ed.projection(from_uint8(ref_px))
    api_px = to_uint8(ed.local_edit(w_src, w_ref, as_tensor(mask), space=space))[0]

    assert np.array_equal(web_px, cli_px)
    assert np.array_equal(api_px, cli_px)
    # And the result really is an edit: it differs from the reconstruction inside the mask.
    recon = to_uint8(ed.reconstruct(w_src))[0]
    assert np.abs(recon.astype(int) - cli_px).max() > 0


def test_transplant_is_the_same_through_web_cli_and_python(inputs, web, tiny_model_file):
    folder, mask_png = inputs
    # For a transplant the mask is on the reference: make the reference square like the mask.
    (folder / "ref.png").write_bytes(_png(smooth_photo(48, 48, 3)))
    frames, _, data = _web_edit(web, folder, mask_png, dx=5, dy=-3, steps=3)
    assert data["method"] == "transplant_wplus" and len(frames) == 3

    out = folder / "cli"
    _cli("edit", "transplant", folder / "src.png", "--ref", folder / "ref.png",
         "--region", "mask=" + str(folder / "mask.png"), "move=5,-3", "--units", "px",
         "--steps", 3, "--model", tiny_model_file, "--out", out, "--device", "cpu")
    for k, frame in enumerate(frames):
        cli_px = np.asarray(Image.open(out / f"frame_{k:03d}.png").convert("RGB"))
        assert np.array_equal(_pixels(frame), cli_px), k

    ed = Editor.load(tiny_model_file, "cpu")
    src_px, _, _ = load_image(folder / "src.png", ed.size)
    ref_px, ref_pl, _ = load_image(folder / "ref.png", ed.size)
    mask = mask_from_image(folder / "mask.png", ed.size, ref_pl)
    src, ref = ed.projection(from_uint8(src_px)), ed.projection(from_uint8(ref_px))
    api = to_uint8(ed.transplant(src, [ref], [Region(as_tensor(mask), dy=-3, dx=5)],
                                 alpha=torch.linspace(0, 1, 3)))
    for k, frame in enumerate(frames):
        assert np.array_equal(api[k], _pixels(frame)), k


def test_evaluate_local_editing_uses_the_same_blend(inputs, tiny_model_file):
    """evaluate's MSE_src/MSE_ref edit (metrics.edit_images on evaluate's triple loading) is the
    edit the CLI makes, pixel for pixel, for a mask that is hard at the model's size."""
    from stylemapgan.commands.evaluate import Triple, load_triple

    folder, _ = inputs
    hard = np.zeros((96, 96), dtype=np.uint8)
    hard[12:60, 30:75] = 255  # 3x3-aligned blocks: exactly 0/1 after area averaging
    (folder / "hard.png").write_bytes(_png(hard))
    out = folder / "cli"
    _cli("edit", "local", folder / "src.png", folder / "ref.png", "--mask", folder / "hard.png",
         "--model", tiny_model_file, "--out", out, "--device", "cpu")
    cli_px = np.asarray(Image.open(out / "result.png").convert("RGB"))

    model = load_model(tiny_model_file)
    src, ref, m = load_triple(Triple(folder / "src.png", folder / "ref.png", folder / "hard.png",
                                     "all"), 32)
    assert set(np.unique(m.numpy())) == {0.0, 1.0}
    edited = edit_images(model, src[None], ref[None], m[None])
    assert np.array_equal(to_uint8(edited)[0], cli_px)


@pytest.mark.parametrize("dx,steps,space", [(0, 1, "wplus"), (4, 3, "w")])
def test_web_record_replays_to_the_same_png_bytes(inputs, web, tiny_model_file, tmp_path, dx,
                                                  steps, space):
    folder, mask_png = inputs
    frames, record, _ = _web_edit(web, folder, mask_png, dx=dx, steps=steps, space=space)
    rec_path = tmp_path / "downloaded.json"
    rec_path.write_text(json.dumps(record))
    out = tmp_path / "again"
    _cli("edit", "replay", rec_path, "--out", out, "--strict")
    names = ["result.png"] if steps == 1 else [f"frame_{k:03d}.png" for k in range(steps)]
    for name, frame in zip(names, frames, strict=True):
        assert (out / name).read_bytes() == frame, name
    # The model can also be given explicitly (the recorded path may not exist elsewhere).
    record["model"]["path"] = str(tmp_path / "moved-away.safetensors")
    rec_path.write_text(json.dumps(record))
    _cli("edit", "replay", rec_path, "--model", tiny_model_file, "--out", tmp_path / "again2",
         "--strict")
    assert (tmp_path / "again2" / names[-1]).read_bytes() == frames[-1]


def test_replay_says_which_model_file_is_missing(inputs, web, tmp_path, capsys, monkeypatch):
    """`edit replay REC --model X` with no file X names X (not the recorded path); the embedded
    model's bare name means the embedded model; a record whose model is gone names it."""
    from stylemapgan.commands._common import model_file
    from stylemapgan.formats.checkpoint import default_model_path

    folder, mask_png = inputs
    _, record, _ = _web_edit(web, folder, mask_png)
    rec_path = tmp_path / "downloaded.json"
    rec_path.write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    assert main(["edit", "replay", str(rec_path), "--model", "missing.safetensors",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--model {tmp_path / 'missing.safetensors'}: no such file" in err
    assert record["model"]["path"] not in err
    # The embedded model's name, as `info` and records show it, is the embedded model...
    default = default_model_path()
    assert model_file(default.name) == str(default)
    # ...unless a file of that name is here.
    (tmp_path / default.name).write_bytes(b"x")
    assert model_file(default.name) == str(tmp_path / default.name)
    # The recorded model is gone and is not the embedded one: the record's model is named.
    record["model"]["path"] = str(tmp_path / "moved-away.safetensors")
    rec_path.write_text(json.dumps(record))
    assert main(["edit", "replay", str(rec_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "moved-away.safetensors" in err and "pass --model MODEL_FILE" in err


def test_tampered_or_legacy_web_records_are_refused(inputs, web, tiny_model_file, tmp_path, capsys):
    folder, mask_png = inputs
    _, record, _ = _web_edit(web, folder, mask_png)
    legacy = {"format": LEGACY_WEB_FORMAT, "format_version": 1, "regions": []}
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    with pytest.raises(InputError, match="older web editor"):
        read_record(tmp_path / "old.json")
    assert main(["edit", "replay", str(tmp_path / "old.json"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot be replayed" in capsys.readouterr().err
    # An embedded image that does not match its checksum.
    bad = json.loads(json.dumps(record))
    other = _data_url(_png(smooth_photo(32, 32, 9)))
    bad["inputs"][1]["image"] = other
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["edit", "replay", str(tmp_path / "bad.json"), "--out", str(tmp_path / "b")]) == 2
    assert "does not match its checksum" in capsys.readouterr().err


def test_cli_records_of_the_previous_format_still_replay(inputs, tiny_model_file, tmp_path):
    folder, _ = inputs
    out = folder / "cli"
    _cli("edit", "local", folder / "src.png", folder / "ref.png", "--mask", folder / "mask.png",
         "--model", tiny_model_file, "--out", out, "--device", "cpu")
    rec = json.loads((out / "record.json").read_text())
    assert rec["format"] == "stylemapgan-edit-record" and rec["version"] == 2
    assert rec["source"] == "cli" and rec["png_compress_level"] == 6
    # The version-1 layout: no source, no PNG level.
    for key in ("source", "png_compress_level"):
        rec.pop(key)
    rec["version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(rec))
    _cli("edit", "replay", tmp_path / "v1.json", "--out", tmp_path / "v1", "--strict")
    assert (tmp_path / "v1" / "result.png").read_bytes() == (out / "result.png").read_bytes()


def test_editor_fast_path_and_cache_are_the_editors(tiny_model):
    """The web engine keeps no projection cache or fast path of its own: both are the Editor's."""
    from stylemapgan.nn.runtime import RuntimeOptions

    engine = EditEngine(tiny_model, SETTINGS,
                        runtime=RuntimeOptions(precision="bfloat16", channels_last=True))
    assert engine.runner is engine.editor.runner is not None
    assert engine.projections is engine.editor.cache
    stored = engine.add_image(Image.fromarray(smooth_photo(40, 32, 4)), "x")
    assert engine.editor.cached(stored.id) is not None and engine.projection_count == 1
