"""The web editor's HTTP API, through FastAPI's test client, on the tiny model.

Edits are checked pixel for pixel against the editing library run directly; bad uploads must
get a 4xx with a message and leave the server serving.
"""

import base64
import io
import json
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTO
from stylemapgan.cli import main
from stylemapgan.editing.cache import ByteLRU
from stylemapgan.editing.operations import Region as LibRegion
from stylemapgan.editing.operations import local_edit_w, local_edit_wplus, steps, transplant
from stylemapgan.imaging.images import from_uint8, to_uint8
from stylemapgan.web.engine import EditEngine
from stylemapgan.web.queue import LatestWinsQueue
from stylemapgan.web.settings import WebSettings

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # starlette's test client prefers httpx2 (same API)
    warnings.filterwarnings("ignore", message="Using `httpx` with")
    from fastapi.testclient import TestClient

from stylemapgan.web.app import create_app
from stylemapgan.web.gallery import Gallery

SETTINGS = WebSettings(max_upload_bytes=64 * 1024, max_pixels=200_000, max_references=2,
                       max_steps=6, max_body_bytes=1 << 20)


# --------------------------------------------------------------------------- helpers
def smooth_image(seed, size=32, cells=4):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))


def encode(array, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width, height):
    """A tiny PNG file that claims ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def mask_url(mask):
    gray = (np.asarray(mask) * 255).round().astype(np.uint8)
    return "data:image/png;base64," + base64.b64encode(encode(gray)).decode()


def decode_png(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def upload(client, array, name="a.png", fmt="PNG"):
    return client.post("/api/images", files={"file": (name, encode(array, fmt), "image/png")})


@pytest.fixture
def engine(tiny_model):
    return EditEngine(tiny_model, SETTINGS, model_name="tiny")


@pytest.fixture
def client(engine):
    with TestClient(create_app(engine)) as c:
        yield c


def left_mask(cols=12):
    m = np.zeros((32, 32), np.float32)
    m[:, :cols] = 1.0
    return m


def edit(client, original, references, regions, seq=1, session="s", space="wplus", n=1):
    body = {"session": session, "seq": seq, "original": original, "references": references,
            "regions": regions, "space": space, "steps": n}
    return client.post("/api/edit", json=body)


# --------------------------------------------------------------------------- page and info
def test_page_and_static_files_are_served_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script src="/static/app.js"' in r.text and "http" not in r.text.split("<body>")[0]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/%2e%2e/app.py").status_code == 404
    info = client.get("/api/info").json()
    assert info["size"] == 32 and info["max_references"] == 2 and info["gallery"] is None
    assert client.get("/api/info").headers["cache-control"] == "no-store"


def test_the_page_uses_no_external_resources():
    from stylemapgan.web.app import STATIC_DIR

    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path.name
        assert "//cdn" not in text and "@import" not in text, path.name


# --------------------------------------------------------------------------- uploads
def test_upload_stores_model_resolution_pixels_and_projects_once(client, engine, tiny_model):
    a = smooth_image(1)
    r = upload(client, a)
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["width"] == rec["height"] == 32 and rec["name"] == "a.png"
    assert np.array_equal(decode_png(client.get(rec["url"]).content), a)
    # The reconstruction is G(E(x)) of the library.
    with torch.no_grad():
        expected = to_uint8(tiny_model.reconstruct(from_uint8(a)))[0].astype(int)
    got = decode_png(client.get(rec["reconstruction"]).content)
    assert np.abs(got - expected).max() <= 1
    # The same pixels in another format are the same image: no second projection.
    again = upload(client, a, "a.bmp", "BMP").json()
    assert again["id"] == rec["id"]
    assert engine.projection_count == 1
    edit(client, rec["id"], [rec["id"]], [])
    assert engine.projection_count == 1


def test_upload_of_another_size_is_center_cropped_and_resized(client):
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 20:60] = 200  # the central square is uniform
    rec = upload(client, wide).json()
    got = decode_png(client.get(rec["url"]).content)
    assert got.shape == (32, 32, 3)
    assert np.abs(got[:, 2:-2] - 200).max() <= 2  # Lanczos rings a little at the crop edges
    assert np.array_equal(got, got[:, ::-1])  # centered


def test_upload_names_are_only_displayed(client):
    rec = upload(client, smooth_image(2), name="..\\..\\etc/pass\u202ewd.png").json()
    assert rec["name"] == "passwd.png"
    assert client.get(f"/api/images/{rec['id']}.png").status_code == 200


@pytest.mark.parametrize("name,data,status,words", [
    ("notes.txt", b"this is not an image at all", 415, "not an image"),
    ("page.svg", b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', 415, "not an image"),
    ("empty.png", b"", 400, "empty"),
    ("bomb.png", png_header_only(100_000, 100_000), 413, "decompression bomb"),
    ("big.png", png_header_only(2000, 2000), 413, "2000x2000 pixels is more than the limit"),
    ("cut.png", encode(smooth_image(3))[:60], 422, "cut.png"),
    ("huge.png", b"\x89PNG" + bytes(70 * 1024), 413, "limit"),
], ids=["text", "svg", "empty", "bomb", "too-many-pixels", "truncated", "too-many-bytes"])
def test_bad_uploads_get_4xx_with_a_message_and_the_server_keeps_serving(client, name, data, status, words):
    r = client.post("/api/images", files={"file": (name, data, "image/png")})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail
    # Still serving: a good upload and an edit work.
    ok = upload(client, smooth_image(4))
    assert ok.status_code == 201
    assert edit(client, ok.json()["id"], [], []).json()["status"] == "done"


def test_upload_limit_also_holds_without_content_length(client):
    def chunks():
        for _ in range(100):
            yield b"x" * 4096

    r = client.post("/api/images", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = client.post("/api/edit", content=b"{" + b" " * (2 << 20) + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert upload(client, smooth_image(5)).status_code == 201


def test_upload_without_a_file_field_is_refused(client):
    r = client.post("/api/images", data={"other": "x"})
    assert r.status_code == 422


# --------------------------------------------------------------------------- edits
@pytest.fixture
def two_images(client, tiny_model):
    a, b = smooth_image(10), smooth_image(11)
    ida, idb = upload(client, a).json()["id"], upload(client, b).json()["id"]
    with torch.no_grad():
        wa, wb = tiny_model.project(from_uint8(a)), tiny_model.project(from_uint8(b))
    return ida, idb, wa, wb


def frames_of(client, response):
    data = response.json()
    assert data["status"] == "done", data
    return [decode_png(client.get(u).content) for u in data["frames"]], data


@pytest.mark.parametrize("space", ["wplus", "w"])
def test_aligned_edit_equals_the_library_local_edit_with_interpolation_steps(client, tiny_model, two_images, space):
    ida, idb, wa, wb = two_images
    mask = left_mask()
    frames, data = frames_of(client, edit(client, ida, [idb], [{"reference": 0, "mask": mask_url(mask)}],
                                          space=space, n=3))
    assert data["method"] == f"local_edit_{space}" and len(frames) == 3
    g = tiny_model.generator
    m = torch.from_numpy(mask)[None, None]
    with torch.no_grad():
        sa, sb = g.pyramid(wa), g.pyramid(wb)
        full = g.synthesize(local_edit_wplus(sa, sb, m)) if space == "wplus" else g(local_edit_w(wa, wb, m))
        recon = g.synthesize(sa)
        if space == "wplus":
            half = g.synthesize([torch.lerp(s, e, 0.5) for s, e in zip(sa, local_edit_wplus(sa, sb, m), strict=True)])
        else:
            half = g(torch.lerp(wa, local_edit_w(wa, wb, m), 0.5))
    for got, want in zip(frames, (recon, half, full), strict=True):
        assert np.abs(got - to_uint8(want)[0].astype(int)).max() <= 1
    # The edit changed the masked side.
    assert np.abs(frames[2] - frames[0])[:, :8].mean() > 3


@pytest.mark.parametrize("space", ["wplus", "w"])
def test_moved_regions_from_two_references_equal_the_library_transplant(client, tiny_model, two_images, space):
    ida, idb, wa, wb = two_images
    c = smooth_image(12)
    idc = upload(client, c).json()["id"]
    m1 = np.zeros((32, 32), np.float32)
    m1[4:12, 4:12] = 1
    m2 = np.zeros((32, 32), np.float32)
    m2[20:28, 2:10] = 0.5
    regions = [{"reference": 0, "mask": mask_url(m1), "dx": 12, "dy": 8},
               {"reference": 1, "mask": mask_url(m2), "dx": 16, "dy": -4}]
    frames, data = frames_of(client, edit(client, ida, [idb, idc], regions, space=space, n=2))
    assert data["method"] == f"transplant_{space}"
    g = tiny_model.generator
    with torch.no_grad():
        wc = tiny_model.project(from_uint8(c))
        regs = [LibRegion(torch.from_numpy(m1)[None, None], dy=8, dx=12, reference=0),
                LibRegion(torch.from_numpy(m2)[None, None], dy=-4, dx=16, reference=1)]
        if space == "wplus":
            refs = [torch.cat(p) for p in zip(g.pyramid(wb), g.pyramid(wc), strict=True)]
            want = g.synthesize(transplant(g.pyramid(wa), refs, regs, 32, alpha=steps(2)))
        else:
            want = g(transplant([wa], [torch.cat([wb, wc])], regs, 32, alpha=steps(2))[0])
    for k in range(2):
        assert np.abs(frames[k] - to_uint8(want)[k].astype(int)).max() <= 1


@pytest.mark.parametrize("space", ["wplus", "w"])
def test_scaled_rotated_mirrored_regions_equal_the_library_transplant(client, tiny_model, two_images, space):
    ida, idb, wa, wb = two_images
    m = np.zeros((32, 32), np.float32)
    m[4:14, 6:12] = 1
    moves = [{"dx": 10, "dy": 6, "scale": 1.5, "angle": 30.0, "flip": "h"},
             {"dx": 0, "dy": 0, "scale": 0.5, "angle": 0.0, "flip": "none"},
             {"dx": 8, "dy": 0, "scale": 1.0, "angle": 90.0, "flip": "v"}]
    g = tiny_model.generator
    for k, mv in enumerate(moves):
        frames, data = frames_of(client, edit(client, ida, [idb], [{"reference": 0, "mask": mask_url(m), **mv}],
                                              space=space, seq=10 + k))
        assert data["method"] == f"transplant_{space}"
        flip = "" if mv["flip"] == "none" else mv["flip"]
        reg = LibRegion(torch.from_numpy(m)[None, None], dy=mv["dy"], dx=mv["dx"], scale=mv["scale"],
                        angle=mv["angle"], flip=flip)
        with torch.no_grad():
            if space == "wplus":
                want = g.synthesize(transplant(g.pyramid(wa), g.pyramid(wb), [reg], 32))
            else:
                want = g(transplant([wa], [wb], [reg], 32)[0])
        assert np.abs(frames[0] - to_uint8(want)[0].astype(int)).max() <= 1
        record = client.get(data["record"]).json()
        (r,) = record["regions"]
        assert (r["scale"], r["angle"], r["flip"]) == (mv["scale"], mv["angle"], flip)
    # Two mirrors are no mirror: the plain move, exactly.
    plain = frames_of(client, edit(client, ida, [idb], [{"reference": 0, "mask": mask_url(m), "dx": 4}],
                                   space=space, seq=20))[0]
    twice = frames_of(client, edit(client, ida, [idb], [{"reference": 0, "mask": mask_url(m), "dx": 4,
                                                         "flip": "none", "scale": 1.0, "angle": 360.0}],
                                   space=space, seq=21))[0]
    assert np.array_equal(plain[0], twice[0])


@pytest.mark.parametrize("change, status, words", [
    ({"scale": 0.2}, 422, "scale"),
    ({"scale": 4.5}, 422, "scale"),
    ({"scale": float("inf")}, 422, "scale"),
    ({"angle": float("nan")}, 422, "angle"),
    ({"flip": "x"}, 422, "flip"),
    ({"flip": "hv"}, 422, "flip"),
    ({"dx": 30, "dy": 30, "scale": 0.5}, 400, "entirely off"),
])
def test_bad_region_transforms_get_4xx(client, two_images, change, status, words):
    ida, idb, _, _ = two_images
    body = {"session": "s", "seq": 1, "original": ida, "references": [idb], "space": "wplus",
            "steps": 1, "regions": [{"reference": 0, "mask": mask_url(left_mask()), **change}]}
    r = client.post("/api/edit", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in json.dumps(r.json()["detail"])


def test_no_region_gives_the_reconstruction_and_empty_masks_are_ignored(client, tiny_model, two_images):
    ida, idb, wa, _ = two_images
    empty = mask_url(np.zeros((32, 32)))
    frames, data = frames_of(client, edit(client, ida, [idb], [{"reference": 0, "mask": empty}], n=2))
    assert data["method"] == "reconstruction"
    with torch.no_grad():
        recon = to_uint8(tiny_model.generator(wa))[0].astype(int)
    for f in frames:
        assert np.abs(f - recon).max() <= 1


def test_masks_of_another_size_are_resized(client, tiny_model, two_images):
    ida, idb, wa, wb = two_images
    big = np.zeros((64, 64), np.float32)
    big[:, :24] = 1  # = left 12 columns at 32 px
    a = frames_of(client, edit(client, ida, [idb], [{"reference": 0, "mask": mask_url(big)}], seq=1))[0]
    b = frames_of(client, edit(client, ida, [idb], [{"reference": 0, "mask": mask_url(left_mask())}], seq=2))[0]
    assert np.abs(a[0] - b[0]).max() <= 1


def test_edit_record_is_downloadable_and_describes_the_edit(client, two_images):
    ida, idb, _, _ = two_images
    mask = left_mask(10)
    data = edit(client, ida, [idb], [{"reference": 0, "mask": mask_url(mask), "dx": 3, "dy": -2}],
                space="w", n=4).json()
    r = client.get(data["record"])
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    rec = r.json()
    # One record format for the CLI and the web (stylemapgan.editing.record).
    assert rec["format"] == "stylemapgan-edit-record" and rec["source"] == "web"
    p = rec["parameters"]
    assert p["space"] == "w" and p["steps"] == 4 and p["method"] == "transplant_w"
    assert p["alpha"] == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-6)
    assert [x["role"] for x in rec["inputs"]] == ["source", "reference 0"]
    assert rec["inputs"][0]["id"] == ida and rec["inputs"][1]["id"] == idb
    # The inputs travel inside the record, at model size, so the record replays on its own.
    embedded = Image.open(io.BytesIO(base64.b64decode(rec["inputs"][0]["image"].split(",", 1)[1])))
    assert embedded.size == (32, 32)
    assert len(rec["outputs"]) == 4 and rec["png_compress_level"] == 1
    assert rec["model"]["config"]["size"] == 32
    (region,) = rec["regions"]
    assert (region["dx"], region["dy"], region["reference"]) == (3, -2, 0)
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(region["mask"].split(",", 1)[1])))) / 255
    assert np.array_equal(sent, mask)
    json.dumps(rec)


@pytest.mark.parametrize("change,status,words", [
    ({"original": "0" * 32}, 404, "unknown image"),
    ({"references": ["f" * 32]}, 404, "unknown image"),
    ({"original": "../../etc/passwd"}, 422, ""),
    ({"regions": [{"reference": 1, "mask": "M"}]}, 400, "region 0"),
    ({"regions": [{"reference": 0, "mask": "data:image/png;base64,AAAA"}]}, 400, "not a readable PNG"),
    ({"regions": [{"reference": 0, "mask": "file:///etc/passwd"}]}, 400, "PNG data URL"),
    ({"steps": 7}, 400, "steps"),
    ({"space": "z"}, 422, ""),
    ({"session": "a b"}, 422, ""),
    ({"references": ["R", "R", "R"]}, 400, "at most 2 references"),
    ({"regions": [{"reference": 0, "mask": "M"}] * 9}, 400, "at most 8 regions"),
    ({"regions": [{"reference": 0, "mask": mask_url(np.zeros((2100, 8)))}]}, 413, "not a usable mask size"),
])
def test_bad_edit_requests_get_4xx(client, two_images, change, status, words):
    ida, idb, _, _ = two_images
    body = {"session": "s", "seq": 1, "original": ida, "references": [idb],
            "regions": [{"reference": 0, "mask": mask_url(left_mask())}], "space": "wplus", "steps": 1}
    body.update(change)
    body["references"] = [idb if r == "R" else r for r in body["references"]]
    body["regions"] = [{**r, "mask": mask_url(left_mask())} if r["mask"] == "M" else r for r in body["regions"]]
    r = client.post("/api/edit", json=body)
    assert r.status_code == status, r.text
    assert words in json.dumps(r.json()["detail"])
    assert edit(client, ida, [idb], [], seq=99, session="other").json()["status"] == "done"


@pytest.mark.parametrize("side", [(16_000, 16_000), (3000, 10), (10, 1_000_000)])
def test_a_huge_mask_is_refused_for_its_size_before_decoding(client, two_images, side):
    """A 16000x16000 mask PNG used to trip Pillow's decompression-bomb check first and be
    answered 400 "not a readable PNG image"; its header is read before Pillow sees it."""
    ida, idb, _, _ = two_images
    url = "data:image/png;base64," + base64.b64encode(png_header_only(*side)).decode()
    r = client.post("/api/edit", json={"session": "s", "seq": 1, "original": ida,
                                       "references": [idb], "space": "wplus", "steps": 1,
                                       "regions": [{"reference": 0, "mask": url}]})
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == (f"region 0 mask: {side[0]}x{side[1]} is not a usable mask size "
                                  "(at most 2048 pixels a side); send the mask at the image's size")


def test_decode_mask_reads_the_png_header_itself():
    from stylemapgan.web.imaging import UploadError, decode_mask, png_header_size

    data = png_header_only(16_000, 16_000)
    assert png_header_size(data) == (16_000, 16_000)
    assert png_header_size(b"GIF89a" + bytes(30)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a DecompressionBombWarning
        with pytest.raises(UploadError) as e:
            decode_mask("data:image/png;base64," + base64.b64encode(data).decode(), 32)
    assert e.value.status == 413 and "16000x16000" in str(e.value)


def test_unknown_results_and_frames_are_404(client, two_images):
    ida, idb, _, _ = two_images
    data = edit(client, ida, [idb], []).json()
    assert client.get(data["frames"][0]).status_code == 200
    assert client.get(data["frames"][0].replace("/0.png", "/5.png")).status_code == 404
    assert client.get("/api/results/AAAAAAAAAAAAAAAA/0.png").status_code == 404
    assert client.get("/api/results/..%2F..%2Fetc/0.png").status_code in (404, 422)


# --------------------------------------------------------------------------- newest wins
def test_edits_arriving_while_one_computes_replace_the_pending_one(client, engine, two_images):
    ida, idb, _, _ = two_images
    gate = threading.Event()
    started = threading.Event()
    calls = []
    real_edit = engine.edit

    def slow_edit(spec):
        calls.append(spec)
        started.set()
        assert gate.wait(30)
        return real_edit(spec)

    engine.edit = slow_edit
    responses = {}

    def send(seq):
        responses[seq] = edit(client, ida, [idb], [{"reference": 0, "mask": mask_url(left_mask(seq))}],
                              seq=seq).json()

    first = threading.Thread(target=send, args=(1,))
    first.start()
    assert started.wait(30)  # edit 1 is computing
    later = []
    for seq in (2, 3, 4):
        t = threading.Thread(target=send, args=(seq,))
        t.start()
        later.append(t)
        deadline = time.time() + 30
        while seq > 2 and (seq - 1) not in responses and time.time() < deadline:
            time.sleep(0.01)  # the previous pending edit is answered at once
    later[0].join(30)
    later[1].join(30)
    assert responses[2]["status"] == "superseded" and responses[2]["superseded_by"] == 3
    assert responses[3]["status"] == "superseded" and responses[3]["superseded_by"] == 4
    assert 1 not in responses  # still computing
    gate.set()
    first.join(30)
    later[2].join(30)
    assert responses[1]["status"] == "done" and responses[1]["newer_pending"] is True
    assert responses[4]["status"] == "done" and responses[4]["newer_pending"] is False
    assert len(calls) == 2  # only 1 and 4 were computed
    # A late arrival with an old number is dropped without work.
    send(3)
    assert responses[3]["status"] == "superseded" and len(calls) == 2
    # Other sessions are independent.
    assert edit(client, ida, [idb], [], seq=1, session="other").json()["status"] == "done"
    stats = client.get("/api/stats").json()["queue"]
    assert stats["superseded"] == 3 and stats["pending"] == 0


def test_queue_reports_failures_and_keeps_working():
    q = LatestWinsQueue()
    try:
        bad = q.submit("s", 1, lambda: 1 / 0)
        assert bad.wait(10) and bad.status == "failed" and isinstance(bad.error, ZeroDivisionError)
        good = q.submit("s", 2, lambda: 42)
        assert good.wait(10) and good.status == "done" and good.result == 42
    finally:
        q.close()


def test_queue_forgets_old_sessions_within_its_bound():
    q = LatestWinsQueue(max_sessions=3)
    try:
        for i in range(10):
            assert q.submit(f"s{i}", 1, lambda: None).wait(10)
        assert q.stats()["sessions"] == 3
    finally:
        q.close()


# --------------------------------------------------------------------------- memory bounds
def test_byte_lru_evicts_least_recently_used_within_budget():
    c = ByteLRU(10, len)
    c.put("a", b"xxxx")
    c.put("b", b"xxxx")
    assert c.get("a") == b"xxxx"  # a is now the most recent
    c.put("c", b"xxxx")
    assert "b" not in c and "a" in c and "c" in c and c.nbytes == 8
    assert c.put("huge", b"x" * 11) is False and "huge" not in c


def test_projection_cache_is_bounded_and_refills_on_demand(tiny_model):
    one = EditEngine(tiny_model, SETTINGS)
    probe = one.add_image(Image.fromarray(smooth_image(0)), "p")
    size = one.projections.stats()["bytes"]
    assert size > 0
    engine = EditEngine(tiny_model, WebSettings(projection_cache_bytes=2 * size + size // 2))
    ids = [engine.add_image(Image.fromarray(smooth_image(s)), f"{s}").id for s in range(4)]
    assert len(engine.projections) == 2 and engine.projections.nbytes <= 2.5 * size
    assert engine.projection_count == 4
    with TestClient(create_app(engine)) as client:
        data = edit(client, ids[0], [ids[1]], [{"reference": 0, "mask": mask_url(left_mask())}]).json()
        assert data["status"] == "done"
    assert engine.projection_count == 6  # both were evicted and projected again
    assert probe.id == ids[0]


# --------------------------------------------------------------------------- gallery
@pytest.fixture
def gallery_dir(tmp_path):
    root = tmp_path / "gallery"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(smooth_image(20, 48)).save(root / "one.png")
    Image.fromarray(smooth_image(21)).save(root / "sub" / "two.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / ".hidden.png").write_bytes(encode(smooth_image(22)))
    return root


def test_gallery_lists_opaque_ids_and_serves_thumbs_and_images(engine, gallery_dir):
    with TestClient(create_app(engine, Gallery(gallery_dir))) as client:
        assert client.get("/api/info").json()["gallery"] == 3
        listing = client.get("/api/gallery").json()
        names = [it["name"] for it in listing["items"]]
        assert names == ["broken.png", "one.png", "sub/two.jpg"]
        for it in listing["items"]:
            assert len(it["id"]) == 16 and all(ch in "0123456789abcdef" for ch in it["id"])
            assert str(gallery_dir) not in json.dumps(it)
        by_name = {it["name"]: it for it in listing["items"]}
        thumb = client.get(by_name["one.png"]["thumb"])
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (160, 160)
        rec = client.post(f"/api/gallery/{by_name['sub/two.jpg']['id']}").json()
        assert rec["source"] == "gallery" and rec["name"] == "two.jpg"
        assert client.get(rec["reconstruction"]).status_code == 200
        broken = client.post(f"/api/gallery/{by_name['broken.png']['id']}")
        assert broken.status_code == 422 and "broken.png" in broken.json()["detail"]
        assert client.post("/api/gallery/0123456789abcdef").status_code == 404
        assert client.post("/api/gallery/..%2Fone.png").status_code in (404, 422)
        assert client.get("/api/gallery/one.png/thumb.png").status_code == 422


def test_without_a_gallery_the_listing_is_empty(client):
    assert client.get("/api/gallery").json() == {"enabled": False, "truncated": False, "items": []}


# --------------------------------------------------------------------------- the command
def test_serve_help_and_default_model(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--gallery", "--host", "--port", "examples:"):
        assert flag in out
    assert "packaged" in out  # --model defaults to the embedded model


def test_serve_refuses_a_missing_gallery_and_bad_port(tiny_model_file, tmp_path, capsys):
    assert main(["serve", "--model", str(tiny_model_file), "--gallery", str(tmp_path / "nope")]) == 2
    assert "gallery" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(tiny_model_file), "--port", "70000"])
    assert "port" in capsys.readouterr().err


@pytest.mark.parametrize("host,warns", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                        ("0.0.0.0", True), ("192.168.1.5", True)])
def test_serve_binds_localhost_by_default_and_warns_otherwise(tiny_model_file, monkeypatch, capsys, host, warns):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert main(["serve", "--model", str(tiny_model_file), "--host", host, "--port", "8123",
                 "--device", "cpu"]) == 0
    assert seen["host"] == host and seen["port"] == 8123
    err = capsys.readouterr().err
    assert ("warning" in err) == warns


def test_serve_default_host_is_loopback(tiny_model_file, monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    assert main(["serve", "--model", str(tiny_model_file)]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000
    assert "warning" not in capsys.readouterr().err


def test_a_default_model_and_gallery_are_a_one_line_change(tiny_model_file, gallery_dir, monkeypatch, capsys):
    import uvicorn

    from stylemapgan.commands import serve

    monkeypatch.setattr(serve, "DEFAULT_MODEL", lambda: tiny_model_file)
    monkeypatch.setattr(serve, "DEFAULT_GALLERY", str(gallery_dir))
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert main(["serve", "--device", "cpu"]) == 0  # no --model needed any more
    assert seen["app"].state.engine.model_name == "tiny.safetensors"
    assert len(seen["app"].state.gallery) == 3
    assert "gallery: 3 image(s)" in capsys.readouterr().out


def test_fast_path_engine_stays_close_to_float32(tiny_model):
    """serve --fast: a bfloat16 channels-last copy of the networks; edits within ~PSNR 25 dB of
    the float32 engine on a random tiny model (trained models do better), and the record says so."""
    from stylemapgan.nn.runtime import RuntimeOptions, psnr

    fast = EditEngine(tiny_model, SETTINGS, model_name="tiny",
                      runtime=RuntimeOptions(precision="bfloat16", channels_last=True))
    exact = EditEngine(tiny_model, SETTINGS, model_name="tiny")
    assert fast.runner is not None and exact.runner is None
    with TestClient(create_app(fast)) as cf, TestClient(create_app(exact)) as ce:
        outs = []
        for c in (cf, ce):
            ida, idb = upload(c, smooth_image(10)).json()["id"], upload(c, smooth_image(11)).json()["id"]
            frames, data = frames_of(c, edit(c, ida, [idb], [{"reference": 0, "mask": mask_url(left_mask())}]))
            outs.append((frames[0], data))
    (f_fast, _), (f_exact, _) = outs
    q = psnr(torch.from_numpy(f_fast / 127.5 - 1), torch.from_numpy(f_exact / 127.5 - 1))
    assert q >= 25, q
    assert fast.info()["precision"] == "bfloat16, channels-last"
    assert exact.info()["precision"] == "float32"


# --------------------------------------------------------------------------- named regions
def test_gallery_avatars_have_named_regions_as_masks_at_model_size(engine):
    from stylemapgan.data.avatars import AvatarFolder, avatar_region_names
    from stylemapgan.data.avatars import gallery_dir as packaged_gallery

    folder = AvatarFolder(packaged_gallery())
    with TestClient(create_app(engine, Gallery(packaged_gallery() / "test"))) as client:
        items = {it["name"]: it["id"] for it in client.get("/api/gallery").json()["items"]}
        glasses = next(r for r in folder.records() if "glasses" in r["parts"])
        plain = next(r for r in folder.records() if "glasses" not in r["parts"])
        rec = client.post(f"/api/gallery/{items[Path(glasses['file']).name]}").json()
        listing = client.get(f"/api/images/{rec['id']}/regions").json()
        assert listing["regions"] == avatar_region_names(glasses)
        assert {"hair", "glasses", "face", "skin"} <= set(listing["regions"])
        for name in ("hair", "glasses"):
            got = client.get(listing["masks"][name])
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            mask = np.asarray(Image.open(io.BytesIO(got.content)))
            assert mask.shape == (32, 32) and mask.dtype == np.uint8
            # The 64 px part mask, averaged over 2x2 blocks: the 32 px square of the avatar.
            part = folder.regions(glasses, name)[name]
            want = part.reshape(32, 2, 32, 2).mean((1, 3))
            assert (mask[want == 1] >= 200).all() and (mask[want == 0] <= 55).all()
            assert 0 < (mask > 127).mean() < 0.9
        # An avatar without glasses: a 404 naming what it has; an upload has none at all.
        other = client.post(f"/api/gallery/{items[Path(plain['file']).name]}").json()
        r = client.get(f"/api/images/{other['id']}/regions/glasses.png")
        assert r.status_code == 404
        detail = r.json()["detail"]
        assert "\n" not in detail and "glasses" in detail and "hair" in detail
        up = upload(client, smooth_image(3)).json()
        assert client.get(f"/api/images/{up['id']}/regions").json()["regions"] == []
        r = client.get(f"/api/images/{up['id']}/regions/hair.png")
        assert r.status_code == 404 and "paint" in r.json()["detail"]
        assert client.get(f"/api/images/{'0' * 32}/regions").status_code == 404
        assert client.get(f"/api/images/{rec['id']}/regions/..%2Fx.png").status_code in (404, 422)
        assert client.get(f"/api/images/{rec['id']}/regions/Hair.png").status_code == 422


def test_a_face_picked_from_an_aligned_photo_has_its_regions_without_a_second_detection(tiny_model):
    pytest.importorskip("dlib", reason='needs the faces extra: pip install -e ".[faces]"')
    from stylemapgan.imaging import faces

    try:
        faces.predictor_path()
    except faces.FacesUnavailable as exc:
        pytest.skip(str(exc))
    from stylemapgan.imaging.face_regions import FACE_REGIONS

    engine = EditEngine(tiny_model, WebSettings(max_references=2, max_steps=4), align=True)
    photo_file = PHOTO
    with TestClient(create_app(engine)) as client:
        photo = client.post("/api/photos", files={"file": ("astronaut.jpg", photo_file.read_bytes(),
                                                           "image/jpeg")}).json()
        assert len(photo["faces"]) == 1

        def refuse(*_):
            raise AssertionError("faces detected a second time")

        engine._face_aligner().detect = refuse
        face = client.post(f"/api/photos/{photo['id']}/crop", json={"face": 0}).json()
        listing = client.get(f"/api/images/{face['id']}/regions").json()
        assert listing["regions"] == list(FACE_REGIONS)
        stored = engine.image(face["id"])
        lm = stored.placement.from_photo(stored.regions.landmarks)  # model-square coordinates
        cells = np.clip(lm.astype(int), 0, 31)

        def at(mask, idx):
            return mask[cells[idx, 1], cells[idx, 0]]

        mouth = np.asarray(Image.open(io.BytesIO(client.get(listing["masks"]["mouth"]).content)))
        assert mouth.shape == (32, 32)
        assert (at(mouth, np.arange(48, 68)) > 0).all()  # every mouth landmark inside (soft edge)
        assert (at(mouth, np.arange(36, 48)) == 0).all()  # no eye landmark
        assert (mouth > 127).sum() >= 6 and (mouth > 127).mean() < 0.2
        eyes = np.asarray(Image.open(io.BytesIO(client.get(listing["masks"]["eyes"]).content)))
        assert (at(eyes, np.arange(36, 48)) > 0).all() and (at(eyes, np.arange(48, 68)) == 0).all()
        # A square drawn around the face (not the aligned face) keeps the face's regions too.
        box = client.post(f"/api/photos/{photo['id']}/crop", json={"box": [60, 20, 160, 120]}).json()
        assert client.get(f"/api/images/{box['id']}/regions").json()["regions"] == list(FACE_REGIONS)
        # One far from the face has none.
        away = client.post(f"/api/photos/{photo['id']}/crop", json={"box": [0, 160, 90, 250]}).json()
        r = client.get(f"/api/images/{away['id']}/regions/mouth.png")
        assert r.status_code == 404 and "no named regions" in r.json()["detail"]
