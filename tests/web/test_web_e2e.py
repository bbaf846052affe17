"""End to end: the real `stylemapgan serve` process, driven in headless Chromium by Playwright.

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python package (no browser
download: Playwright drives the system Chromium). Skipped with a reason when either is missing,
except under CI=true, where they must be present (.ci/run installs chromium, the dev extra
installs playwright).
"""

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTO
from stylemapgan.editing.operations import Region, local_edit_wplus, transplant
from stylemapgan.formats.checkpoint import load_model
from stylemapgan.imaging.images import from_uint8, to_uint8

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Far outside the mask (more than FAR_PX pixels from any painted pixel: the 8x8 stylemap cells
# are 4 px, so a cell that shares no pixel with the mask plus the synthesis convolutions' reach)
# the result must match the reconstruction up to what layer normalization's per-image
# statistics carry across the whole image: mean |difference| <= FAR_MEAN_TOL and 90% of the
# values within FAR_P90_TOL, in 8-bit levels. Inside the mask the mean difference must be at
# least INSIDE_MIN and at least 3 times the far one.
FAR_PX = 12
FAR_MEAN_TOL = 8.0
FAR_P90_TOL = 20.0
INSIDE_MIN = 5.0


def _browser_or_skip():
    problems = []
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        problems.append("chromium is not installed (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is missing (pip install playwright)")
    if problems:
        reason = "; ".join(problems)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        pytest.skip(reason)
    return CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tiny_model_file, tmp, extra=(), gallery=None):
    """`stylemapgan serve` (with a one-image gallery, or ``gallery``) in a subprocess on a free
    port; yields its base URL."""
    if gallery is None:
        gallery = tmp / "gallery"
        gallery.mkdir(exist_ok=True)
        Image.fromarray(_smooth(9)).save(gallery / "gallery-one.png")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    url = f"http://127.0.0.1:{port}"
    with open(tmp / "server.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "stylemapgan.cli", "serve", "--model",
                                 str(tiny_model_file), "--gallery", str(gallery),
                                 "--port", str(port), "--device", "cpu", *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 90
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
            while True:
                try:
                    with direct.open(f"{url}/api/info", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    pytest.fail(f"the server did not start:\n{log.read()}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="module")
def server(tiny_model_file, tmp_path_factory):
    yield from _serve(tiny_model_file, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def align_server(tiny_model_file, tmp_path_factory):
    """The editor with face alignment (serve --align): needs the faces extra."""
    pytest.importorskip("dlib", reason='needs the faces extra: pip install -e ".[faces]"')
    yield from _serve(tiny_model_file, tmp_path_factory.mktemp("serve-align"), ["--align"])


@pytest.fixture(scope="module")
def avatar_server(tiny_model_file, tmp_path_factory):
    """The editor with the packaged avatar gallery (whose avatars have named regions)."""
    from stylemapgan.data.avatars import gallery_dir

    yield from _serve(tiny_model_file, tmp_path_factory.mktemp("serve-avatars"),
                      gallery=gallery_dir() / "test")


def _smooth(seed, size=32, cells=4):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))


def _far_from(mask, distance):
    """Pixels more than ``distance`` pixels (Chebyshev) from every pixel where mask > 0."""
    hit = np.pad(mask > 0, distance)
    win = np.lib.stride_tricks.sliding_window_view(hit, (2 * distance + 1, 2 * distance + 1))
    return ~win.any(axis=(-1, -2))


def _open_browser(p, executable, tmp_path):
    return p.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 800}, accept_downloads=True)


@contextlib.contextmanager
def _editor_page(url, tmp_path):
    """The editor at ``url`` open and ready in headless Chromium (skips without a browser); on
    a normal exit, no JavaScript error may have been thrown on the page."""
    executable = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = _open_browser(p, executable, tmp_path)
        try:
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            yield page
            assert not errors, errors
        finally:
            context.close()


def _write_pngs(folder, **arrays):
    """Each array saved as ``folder/NAME.png``; their paths, in order."""
    paths = []
    for name, arr in arrays.items():
        Image.fromarray(arr).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


def _stroke(page, canvas, start, *moves):
    """Press at ``start`` on the canvas ``canvas`` (a selector), move through ``moves`` ((x, y,
    steps) each) and release; coordinates in the 32 px model's pixels."""
    box = page.locator(canvas).bounding_box()
    k = box["width"] / 32
    page.mouse.move(box["x"] + start[0] * k, box["y"] + start[1] * k)
    page.mouse.down()
    for x, y, steps in moves:
        page.mouse.move(box["x"] + x * k, box["y"] + y * k, steps=steps)
    page.mouse.up()


def _gallery_reference(page):
    """Take the first gallery avatar as the reference (by opaque id) and wait for its card."""
    page.click("#gallery button.thumb")
    page.wait_for_selector("#library .card.reference", timeout=30_000)


def _wait_idle(page, condition="true"):
    page.wait_for_function(
        "() => document.querySelector('#progress').dataset.state === 'idle'"
        f" && document.querySelector('#result-canvas').dataset.result && ({condition})",
        timeout=60_000)


def _decode_mask(region):
    """The mask as the page painted it (the record keeps the canvas PNG): its opacity."""
    img = Image.open(io.BytesIO(base64.b64decode(region["mask"].split(",", 1)[1])))
    plane = img.getchannel("A") if "A" in img.getbands() else img.convert("L")
    return np.asarray(plane, dtype=np.float32) / 255


def test_paint_a_region_in_the_browser_and_get_the_edit(server, tmp_path, tiny_model_file):
    original, reference = _smooth(7), _smooth(8)
    files = _write_pngs(tmp_path, original=original, reference=reference)

    with _editor_page(server, tmp_path) as page:
        assert "tiny.safetensors" in page.locator("#model-info").text_content()
        # Record every state the progress indicator goes through.
        page.evaluate("""() => {
            window.progressStates = [];
            const el = document.querySelector('#progress');
            new MutationObserver(() => window.progressStates.push(el.dataset.state + (el.hidden ? '' : '+shown')))
                .observe(el, {attributes: true});
        }""")

        # Upload both: the first becomes the original, the second the reference.
        page.set_input_files("#upload", files)
        page.wait_for_selector("#library .card.original", timeout=30_000)
        page.wait_for_selector("#library .card.reference", timeout=30_000)
        assert page.locator("#library .card").count() == 2

        # Paint a vertical band over the left part of the reference (32 px image).
        page.locator("#brush-size").fill("4")
        _stroke(page, "#ref-canvas", (6, 2), (6, 30, 8), (9, 30, 2), (9, 2, 8))

        # Wait for the newest edit's result and the idle indicator.
        _wait_idle(page)
        page.wait_for_selector("#download-png:not(.disabled)")
        states = page.evaluate("() => window.progressStates")
        assert "busy+shown" in states and states[-1] == "idle", states
        status = page.locator("#status").text_content()
        assert "local edit wplus" in status, status

        with page.expect_download() as png_download:
            page.click("#download-png")
        result = np.asarray(Image.open(png_download.value.path()).convert("RGB")).astype(int)
        with page.expect_download() as json_download:
            page.click("#download-json")
        record = json.loads(Path(json_download.value.path()).read_text())

        # Undo removes the stroke: the next result is the plain reconstruction.
        page.click("#undo")
        _wait_idle(page, "document.querySelector('#status').textContent.includes('reconstruction')")

    assert record["format"] == "stylemapgan-edit-record" and record["parameters"]["space"] == "wplus"
    (region,) = record["regions"]
    mask = _decode_mask(region)
    assert mask.shape == (32, 32)
    painted = mask > 0.5
    assert painted[:, 6:9].mean() > 0.8 and not (mask[:, 16:] > 0).any()

    model = load_model(tiny_model_file)
    g = model.generator
    with torch.no_grad():
        sa, sb = g.pyramid(model.project(from_uint8(original))), g.pyramid(model.project(from_uint8(reference)))
        recon = to_uint8(g.synthesize(sa))[0].astype(int)
        expected = to_uint8(g.synthesize(local_edit_wplus(sa, sb, torch.from_numpy(mask)[None, None])))[0]
    # Exactly what the library computes for the painted mask (PNG round trip: <= 1 level).
    assert np.abs(result - expected.astype(int)).max() <= 1

    diff = np.abs(result - recon).mean(axis=-1)
    inside = diff[painted].mean()
    far = _far_from(mask, FAR_PX)
    assert far.sum() >= 32 * 8  # a band of columns on the right
    far_mean, far_p90 = diff[far].mean(), np.percentile(diff[far], 90)
    print(f"inside mean |diff| {inside:.1f}, far mean {far_mean:.2f}, far p90 {far_p90:.1f} (8-bit levels)")
    assert inside >= INSIDE_MIN and inside >= 3 * far_mean
    assert far_mean <= FAR_MEAN_TOL and far_p90 <= FAR_P90_TOL


def test_box_from_the_gallery_moved_in_w_with_steps_undo_and_redo(server, tmp_path, tiny_model_file):
    original = _smooth(17)
    files = _write_pngs(tmp_path, original=original)
    with _editor_page(server, tmp_path) as page:
        page.set_input_files("#upload", files)
        page.wait_for_selector("#library .card.original", timeout=30_000)
        # The reference comes from the server's gallery (by opaque id).
        _gallery_reference(page)

        page.check('input[name="tool"][value="box"]')
        _stroke(page, "#ref-canvas", (4, 4), (14, 14, 4))
        # Drag the region on the original 12 px right and 8 px down.
        _stroke(page, "#orig-canvas", (9, 9), (21, 17, 6))
        page.check('input[name="space"][value="w"]')
        page.locator("#steps").fill("3")
        page.locator("#steps").dispatch_event("change")
        _wait_idle(page, "!document.querySelector('#step-row').hidden"
                         " && document.querySelector('#status').textContent.includes('(transplant w)')")

        with page.expect_download() as json_download:
            page.click("#download-json")
        record = json.loads(Path(json_download.value.path()).read_text())
        with page.expect_download() as last:
            page.click("#download-png")
        last_frame = np.asarray(Image.open(last.value.path()).convert("RGB")).astype(int)
        page.locator("#step-slider").fill("0")
        assert page.locator("#step-label").text_content() == "t = 0.00"
        with page.expect_download() as first:
            page.click("#download-png")
        first_frame = np.asarray(Image.open(first.value.path()).convert("RGB")).astype(int)

        # Undo the steps change (the slider goes away), redo it (it comes back).
        page.click("#undo")
        _wait_idle(page, "document.querySelector('#step-row').hidden")
        page.click("#redo")
        _wait_idle(page, "!document.querySelector('#step-row').hidden")

    p = record["parameters"]
    assert p["method"] == "transplant_w" and p["steps"] == 3 and p["space"] == "w"
    assert record["inputs"][1]["role"] == "reference 0"
    assert record["inputs"][1]["name"] == "gallery-one.png"
    (region,) = record["regions"]
    assert abs(region["dx"] - 12) <= 1 and abs(region["dy"] - 8) <= 1
    mask = _decode_mask(region)
    assert (mask[5:13, 5:13] == 1).all() and mask[16:].max() == 0 and mask[:, 16:].max() == 0

    model = load_model(tiny_model_file)
    g = model.generator
    with torch.no_grad():
        wa = model.project(from_uint8(original))
        wb = model.project(from_uint8(_smooth(9)))
        reg = Region(torch.from_numpy(mask)[None, None], dy=region["dy"], dx=region["dx"])
        want = to_uint8(g(transplant([wa], [wb], [reg], 32, alpha=1.0)[0]))[0].astype(int)
        recon = to_uint8(g(wa))[0].astype(int)
    assert np.abs(last_frame - want).max() <= 1
    assert np.abs(first_frame - recon).max() <= 1  # t = 0 is the reconstruction
    assert np.abs(last_frame - recon).mean() > 1


def test_a_face_is_picked_from_a_photo_edited_and_pasted_back_into_it(align_server, tmp_path):
    """A real photo (the public-domain astronaut): the server finds the face, the user picks
    it, paints a region on a reference, and gets the whole photo back with only the region's
    footprint changed."""
    photo_path = PHOTO
    photo = np.asarray(Image.open(photo_path).convert("RGB")).astype(int)
    with _editor_page(align_server, tmp_path) as page:
        page.set_input_files("#upload", [str(photo_path)])
        # The picker shows the photo with the detected face; pick it.
        page.wait_for_selector("#picker[open] button.face-choice", timeout=60_000)
        assert page.locator("button.face-choice").count() == 1
        page.click("button.face-choice")
        page.wait_for_selector("#library .card.original", timeout=30_000)
        # A reference from the gallery (model size: no picker).
        _gallery_reference(page)
        page.locator("#brush-size").fill("4")
        _stroke(page, "#ref-canvas", (10, 18), (22, 18, 8), (22, 22, 2))
        _wait_idle(page, "document.querySelector('#status').textContent.includes('local edit')")
        page.wait_for_selector("#download-full:not(.disabled)")
        page.check("#show-full")
        page.wait_for_selector("#full-view:not([hidden])")
        with page.expect_download() as full_download:
            page.click("#download-full")
        full = np.asarray(Image.open(full_download.value.path()).convert("RGB")).astype(int)
        page.check("#show-error")  # the error overlay draws without errors
        page.wait_for_timeout(300)

    assert full.shape == photo.shape
    changed = np.abs(full - photo).max(-1) > 0
    ys, xs = np.nonzero(changed)
    # The face is at (88..132, 41..84) in the photo: the edit stays in and around it.
    assert changed.sum() > 50
    assert xs.min() > 88 - 30 and xs.max() < 132 + 30 and ys.min() > 41 - 40 and ys.max() < 84 + 40
    far = np.ones_like(changed)
    far[0:130, 40:180] = False
    assert not changed[far].any()  # the rest of the photo is exactly the photo
    print(f"full photo: {int(changed.sum())} of {changed.size} pixels changed")


def test_a_square_photo_larger_than_the_model_opens_the_picker(server, tmp_path):
    """Without alignment, a square photo larger than the model (here 64 px for a 32 px model)
    is not squashed straight into the model's square: the picker opens, the user takes a
    square, and the edit can be viewed pasted back into the whole photo. A square image at the
    model's size still goes straight in (the gallery reference below)."""
    photo = _smooth(11, size=64)
    Image.fromarray(photo).save(tmp_path / "square64.png")
    with _editor_page(server, tmp_path) as page:
        page.set_input_files("#upload", [str(tmp_path / "square64.png")])
        page.wait_for_selector("#picker[open]", timeout=30_000)
        assert page.locator("button.face-choice").count() == 0  # no detector without --align
        page.click("#picker-square")  # the centre square: the whole photo
        page.wait_for_selector("#library .card.original", timeout=30_000)
        _gallery_reference(page)
        assert not page.locator("#picker[open]").count()
        page.locator("#brush-size").fill("4")
        _stroke(page, "#ref-canvas", (8, 16), (20, 16, 6))
        _wait_idle(page, "document.querySelector('#status').textContent.includes('local edit')")
        page.wait_for_selector("#download-full:not(.disabled)")
        page.check("#show-full")
        page.wait_for_selector("#full-view:not([hidden])")
        with page.expect_download() as full_download:
            page.click("#download-full")
        full = np.asarray(Image.open(full_download.value.path()).convert("RGB"))
    assert full.shape == (64, 64, 3)  # the photo at its own size, not the model's 32 px


# --------------------------------------------------------------------------- named regions
def _fill_region_erase_and_download(page, name, erase_from, erase_to):
    """Choose the region ``name`` in the menu, wait for its edit, erase a stroke (model pixels)
    with a 2 px eraser, wait again; returns the edit record and the result."""
    page.wait_for_selector("#region-menu[data-ready=true]:not([disabled])", timeout=30_000)
    options = page.locator("#region-menu option").evaluate_all("os => os.map(o => o.value)")
    assert name in options, options
    page.select_option("#region-menu", name)
    _wait_idle(page, "document.querySelector('#status').textContent.includes('local edit')")
    page.check('input[name="tool"][value="eraser"]')
    page.locator("#brush-size").fill("2")
    _stroke(page, "#ref-canvas", erase_from, (*erase_to, 8))
    _wait_idle(page, "document.querySelector('#status').textContent.includes('local edit')")
    with page.expect_download() as json_download:
        page.click("#download-json")
    record = json.loads(Path(json_download.value.path()).read_text())
    with page.expect_download() as png_download:
        page.click("#download-png")
    result = np.asarray(Image.open(png_download.value.path()).convert("RGB")).astype(int)
    return record, result


def _record_image(record, i):
    data = base64.b64decode(record["inputs"][i]["image"].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _expected_local_edit(tiny_model_file, record, mask):
    model = load_model(tiny_model_file)
    g = model.generator
    with torch.no_grad():
        sa = g.pyramid(model.project(from_uint8(_record_image(record, 0))))
        sb = g.pyramid(model.project(from_uint8(_record_image(record, 1))))
        return to_uint8(g.synthesize(local_edit_wplus(sa, sb, torch.from_numpy(mask)[None, None])))[0]


def _region_from_server(url, record, name):
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"{url}/api/images/{record['inputs'][1]['id']}/regions/{name}.png", timeout=10) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())), dtype=np.float32) / 255


def test_a_named_region_of_a_gallery_avatar_is_filled_refined_and_edited(avatar_server, tmp_path,
                                                                        tiny_model_file):
    """Choose "face" on an avatar from the gallery: the region fills the reference's mask as if
    painted, the eraser takes a stroke out of it, and the edit uses exactly that mask."""
    files = _write_pngs(tmp_path, original=_smooth(27))
    with _editor_page(avatar_server, tmp_path) as page:
        # An upload has no named regions; the menu offers none.
        page.set_input_files("#upload", files)
        page.wait_for_selector("#library .card.original", timeout=30_000)
        page.click("#library .card.original .as-reference")
        page.wait_for_selector("#region-menu[data-ready=true][disabled]", timeout=30_000)
        page.click("#ref-tabs button:has-text('remove')")
        _gallery_reference(page)
        # Erase a horizontal stroke through the face at row 15 (pixel centres at +0.5).
        record, result = _fill_region_erase_and_download(page, "face", (0, 15.5), (31.5, 15.5))

    (region,) = record["regions"]
    mask = _decode_mask(region)
    face = _region_from_server(avatar_server, record, "face")
    assert face[15].max() == 1  # the stroke crosses the face
    assert (mask[15] == 0).all()  # and took that row out
    keep = np.ones((32, 32), bool)
    keep[13:18] = False
    assert np.abs(mask[keep] - face[keep]).max() <= 1 / 255 + 1e-6  # the rest is the region
    assert 0.05 < (mask > 0.5).mean() < 0.9
    expected = _expected_local_edit(tiny_model_file, record, mask)
    assert np.abs(result - expected.astype(int)).max() <= 1


def test_a_named_region_of_an_aligned_photo_is_filled_refined_and_edited(align_server, tmp_path,
                                                                        tiny_model_file):
    """Choose "mouth" on a face picked from the astronaut photo (alignment on), erase a stroke
    through it, and get the edit of exactly that mask."""
    photo_path = PHOTO
    files = _write_pngs(tmp_path, original=_smooth(37))
    with _editor_page(align_server, tmp_path) as page:
        page.set_input_files("#upload", files)
        page.wait_for_selector("#picker[open]", timeout=30_000)
        page.click("#picker-square")
        page.wait_for_selector("#library .card.original", timeout=30_000)
        page.set_input_files("#upload", [str(photo_path)])
        page.wait_for_selector("#picker[open] button.face-choice", timeout=60_000)
        page.click("button.face-choice")
        page.wait_for_selector("#library .card.reference", timeout=30_000)
        page.wait_for_selector("#region-menu[data-ready=true]:not([disabled])", timeout=30_000)
        names = page.locator("#region-menu option").evaluate_all("os => os.map(o => o.value)")
        assert {"mouth", "eyes", "nose", "skin"} <= set(names)
        # The aligned face puts the mouth about 3/4 down the middle: erase the middle column.
        record, result = _fill_region_erase_and_download(page, "mouth", (15.5, 18), (15.5, 30))

    (region,) = record["regions"]
    mask = _decode_mask(region)
    mouth = _region_from_server(align_server, record, "mouth")
    assert mouth[18:30, 15].max() == 1  # the stroke crosses the mouth
    assert (mask[18:30, 15] == 0).all()  # and took the mouth's middle out
    keep = np.ones((32, 32), bool)
    keep[:, 13:19] = False
    assert np.abs(mask[keep] - mouth[keep]).max() <= 1 / 255 + 1e-6
    assert (mask[keep] > 0.5).sum() >= 4  # the mouth's sides are still there
    expected = _expected_local_edit(tiny_model_file, record, mask)
    assert np.abs(result - expected.astype(int)).max() <= 1


def test_a_region_is_mirrored_rotated_scaled_and_moved_with_its_handles(server, tmp_path, tiny_model_file):
    """Box a region on the reference, mirror it (the button), rotate it by its blue handle,
    shrink it by its white one and drag it: the edit is the library's transplant of that
    transform, to the level."""
    original, reference = _smooth(47), _smooth(48)
    files = _write_pngs(tmp_path, original=original, reference=reference)
    with _editor_page(server, tmp_path) as page:
        page.set_input_files("#upload", files)
        page.wait_for_selector("#library .card.reference", timeout=30_000)
        page.check('input[name="tool"][value="box"]')
        _stroke(page, "#ref-canvas", (4, 4), (14, 14, 4))
        page.click("#mirror")

        def drag(a, b):
            _stroke(page, "#orig-canvas", a, (*b, 6))

        # The box 4..14 has its centre at (9, 9); the rotation handle lies 3.2 px above its
        # top edge, (9, 0.8). Turn it 45 degrees clockwise: to the upper right.
        drag((9, 0.8), (9 + 5.8, 9 - 5.8))
        # Mirrored and turned, the box's lower right corner (the scale handle) is at
        # (9 - 7.07, 9); pull it in to 4.5 px from the centre (scale 0.64).
        drag((9 - 7.07, 9), (4.5, 9))
        drag((9, 9), (17, 13))  # and move it 8 px right, 4 down
        _wait_idle(page, "document.querySelector('#status').textContent.includes('(transplant wplus)')")
        with page.expect_download() as json_download:
            page.click("#download-json")
        record = json.loads(Path(json_download.value.path()).read_text())
        with page.expect_download() as png_download:
            page.click("#download-png")
        result = np.asarray(Image.open(png_download.value.path()).convert("RGB")).astype(int)
        # Reset puts it back: a local edit again.
        page.click("#reset-offset")
        _wait_idle(page, "document.querySelector('#status').textContent.includes('(local edit wplus)')")

    (region,) = record["regions"]
    assert region["flip"] == "h"
    assert abs(region["angle"] + 45) <= 3 and abs(region["scale"] - 0.64) <= 0.05
    assert abs(region["dx"] - 8) <= 1 and abs(region["dy"] - 4) <= 1
    mask = _decode_mask(region)
    assert (mask[4:14, 4:14] == 1).all() and mask.sum() == 100
    model = load_model(tiny_model_file)
    g = model.generator
    with torch.no_grad():
        sa = g.pyramid(model.project(from_uint8(original)))
        sb = g.pyramid(model.project(from_uint8(reference)))
        reg = Region(torch.from_numpy(mask)[None, None], dy=region["dy"], dx=region["dx"],
                     scale=region["scale"], angle=region["angle"], flip=region["flip"])
        want = to_uint8(g.synthesize(transplant(sa, sb, [reg], 32)))[0].astype(int)
        recon = to_uint8(g.synthesize(sa))[0].astype(int)
    assert np.abs(result - want).max() <= 1
    assert np.abs(result - recon).mean() > 1
