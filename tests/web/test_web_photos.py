"""Full photos in the web editor's engine: faces found once per upload, a face or a square cut
from the photo, edits pasted back into the full photo with every other pixel unchanged."""

import io

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTO, smooth_photo
from stylemapgan.editing.regions import Region
from stylemapgan.errors import InputError
from stylemapgan.web.engine import EditEngine, EditSpec
from stylemapgan.web.settings import WebSettings

FIXTURE = PHOTO
SETTINGS = WebSettings(max_references=2, max_steps=4)


def _png(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def wide_photo():
    return Image.fromarray(smooth_photo(180, 120, seed=0, cells=(6, 9)))


def test_a_drawn_square_is_cut_edited_and_pasted_back(tiny_model, wide_photo):
    engine = EditEngine(tiny_model, SETTINGS)
    photo = engine.add_photo(wide_photo, "wide.jpg")
    assert photo.describe()["faces"] == [] and photo.pixels.shape == (120, 180, 3)
    src = engine.crop_photo(photo.id, box=(40, 10, 136, 106))
    ref = engine.add_image(Image.fromarray(np.asarray(wide_photo)[:96, :96]), "ref")
    assert src.photo == photo.id and src.placement.square == (40, 10, 136, 106)
    mask = np.zeros((32, 32), np.float32)
    mask[4:12, 4:12] = 1
    res = engine.edit(EditSpec(src.id, (ref.id,), (Region(mask),)))
    assert "full" in res.urls()
    full = _png(engine.full_png(res.id, 0))
    base = np.asarray(wide_photo)
    assert full.shape == base.shape
    changed = np.abs(full.astype(int) - base).max(-1) > 0
    # Changed pixels lie inside the square, near the painted corner grown by the receptive field
    # and the feather; everything else is the photo's own pixels, exactly.
    grown = res.paste_mask > 0
    assert changed.any() and grown.sum() < grown.size
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 40 - 4 and ys.min() >= 10 - 4 and xs.max() < 136 and ys.max() < 106
    print(f"paste-back: {int(changed.sum())} of {changed.size} photo pixels changed")
    # An edit whose region is empty gives the photo back byte for byte.
    empty = engine.edit(EditSpec(src.id, (ref.id,), (Region(np.zeros((32, 32), np.float32)),)))
    assert np.array_equal(_png(engine.full_png(empty.id, 0)), base)


def test_uploads_at_model_size_have_no_full_photo(tiny_model):
    engine = EditEngine(tiny_model, SETTINGS)
    a = engine.add_image(Image.new("RGB", (32, 32), (120, 40, 40)), "a")
    res = engine.edit(EditSpec(a.id))
    assert "full" not in res.urls()
    with pytest.raises(InputError, match="nothing to paste"):
        engine.full_png(res.id, 0)


def test_faces_are_found_once_and_a_face_is_cut_aligned(tiny_model):
    pytest.importorskip("dlib", reason='needs the faces extra: pip install -e ".[faces]"')
    engine = EditEngine(tiny_model, SETTINGS, align=True)
    img = Image.open(FIXTURE).convert("RGB")
    photo = engine.add_photo(img, "astronaut.jpg")
    (face,) = photo.describe()["faces"]
    assert face["box"] == [88, 41, 132, 84]
    assert engine.add_photo(img, "again.jpg") is photo  # detected once per content
    crop = engine.crop_photo(photo.id, face=0)
    assert crop.placement.fit == "aligned"
    with pytest.raises(InputError, match="no face 3"):
        engine.crop_photo(photo.id, face=3)
    mask = np.zeros((32, 32), np.float32)
    mask[18:26, 10:22] = 1  # about the mouth
    res = engine.edit(EditSpec(crop.id, (crop.id,), (Region(mask, dx=2),)))
    full = _png(engine.full_png(res.id, 0))
    base = np.asarray(img)
    changed = np.abs(full.astype(int) - base).max(-1) > 0
    assert full.shape == base.shape and changed.any()
    # Every changed pixel maps back inside the aligned square (give or take the feather) and
    # inside the region the edit can reach.
    ys, xs = np.nonzero(changed)
    inside = crop.placement.from_photo(np.stack([xs + 0.5, ys + 0.5], 1))
    assert inside.min() > -3 and inside.max() < 35
    cells = np.clip(inside.astype(int), 0, 31)
    assert (res.paste_mask[cells[:, 1], cells[:, 0]] > 0).mean() > 0.9
    print(f"aligned paste-back: {int(changed.sum())} of {changed.size} photo pixels changed")


def test_the_error_overlay_is_an_rgba_map(tiny_model):
    engine = EditEngine(tiny_model, SETTINGS)
    a = engine.add_image(Image.new("RGB", (32, 32), (200, 30, 30)), "a")
    err = np.asarray(Image.open(io.BytesIO(engine.error_png(a.id))))
    assert err.shape == (32, 32, 4) and (err[..., 0] == 255).all() and err[..., 3].max() > 0


def test_photo_routes_upload_crop_edit_and_full_photo(tiny_model, wide_photo):
    from fastapi.testclient import TestClient

    from stylemapgan.web.app import create_app

    engine = EditEngine(tiny_model, SETTINGS)
    buf = io.BytesIO()
    wide_photo.save(buf, format="PNG")
    with TestClient(create_app(engine)) as client:
        r = client.post("/api/photos", files={"file": ("wide.png", buf.getvalue(), "image/png")})
        assert r.status_code == 201, r.text
        photo = r.json()
        assert (photo["width"], photo["height"], photo["faces"]) == (180, 120, [])
        preview = client.get(photo["preview"])
        assert preview.status_code == 200 and _png(preview.content).shape == (120, 180, 3)
        bad = client.post(f"/api/photos/{photo['id']}/crop", json={})
        assert bad.status_code == 400 and "face" in bad.json()["detail"]
        outside = client.post(f"/api/photos/{photo['id']}/crop", json={"box": [100, 0, 300, 100]})
        assert outside.status_code == 400 and "not inside" in outside.json()["detail"]
        src = client.post(f"/api/photos/{photo['id']}/crop", json={"box": [40, 10, 136, 106]}).json()
        assert src["photo"] == photo["id"]
        assert _png(client.get(src["error"]).content).shape == (32, 32, 3)  # RGBA read as RGB
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, 4:12] = 255
        mbuf = io.BytesIO()
        Image.fromarray(mask).save(mbuf, format="PNG")
        import base64

        url = "data:image/png;base64," + base64.b64encode(mbuf.getvalue()).decode()
        data = client.post("/api/edit", json={
            "session": "s", "seq": 1, "original": src["id"], "references": [src["id"]],
            "regions": [{"reference": 0, "mask": url, "dx": 6, "dy": 0}]}).json()
        assert data["status"] == "done" and len(data["full"]) == 1
        full = _png(client.get(data["full"][0]).content)
        assert full.shape == (120, 180, 3)
        assert client.get(data["full"][0].replace("/0/", "/3/")).status_code == 404
        assert client.get("/api/photos/" + "0" * 32 + "/preview.png").status_code == 404
