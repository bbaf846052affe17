"""Take docs/editor.png: the web editor in headless Chromium (Debian's /usr/bin/chromium).

    python docs/editor_screenshot.py [--out docs/editor.png] [--model FILE]

Serves the embedded default model (or ``--model``) with the avatar gallery shipped in the
package, then does a real edit as a user would: picks an original and a reference, paints a
region over the reference's hair, drags the region on the original to transplant it a little
lower, runs three steps of the interpolation and takes the page.
"""

from __future__ import annotations

import argparse
import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylemapgan.data.avatars import gallery_dir
from stylemapgan.formats.checkpoint import default_model_path, load_model
from stylemapgan.web.app import create_app
from stylemapgan.web.engine import EditEngine
from stylemapgan.web.gallery import Gallery

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/editor.png")
    ap.add_argument("--model", default=None, help="model file (default: the embedded model)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    torch.manual_seed(0)
    path = Path(args.model) if args.model else default_model_path()
    model = load_model(path)
    engine = EditEngine(model, model_name=path.name)
    gallery = Gallery(gallery_dir() / "test")
    size = engine.size
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, gallery), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(Path(tmp) / "profile"), executable_path=args.chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 600})
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("body[data-ready=true]")
        thumbs = page.locator("#gallery button.thumb")
        thumbs.nth(0).click()
        page.wait_for_selector("#library .card.original", timeout=60_000)
        thumbs.nth(2).click()
        page.wait_for_selector("#library .card.reference", timeout=60_000)
        box = page.locator("#ref-canvas").bounding_box()
        k = box["width"] / size

        def at(x, y):
            return box["x"] + x * k, box["y"] + y * k

        page.locator("#brush-size").fill(str(size // 8))
        page.mouse.move(*at(size * 0.3, size * 0.12))
        page.mouse.down()
        for y in np.linspace(0.12, 0.3, 4):  # a zigzag over the hair
            page.mouse.move(*at(size * 0.7, size * y), steps=4)
            page.mouse.move(*at(size * 0.3, size * (y + 0.06)), steps=4)
        page.mouse.up()
        ob = page.locator("#orig-canvas").bounding_box()
        page.mouse.move(ob["x"] + 0.5 * ob["width"], ob["y"] + 0.2 * ob["height"])
        page.mouse.down()
        page.mouse.move(ob["x"] + 0.5 * ob["width"], ob["y"] + 0.26 * ob["height"], steps=4)
        page.mouse.up()
        page.locator("#steps").fill("3")
        page.locator("#steps").dispatch_event("change")
        page.wait_for_function("() => document.querySelector('#progress').dataset.state === 'idle'"
                               " && document.querySelector('#step-row').hidden === false", timeout=120_000)
        time.sleep(0.5)
        shot = page.screenshot()
        ctx.close()
    server.should_exit = True
    thread.join(10)
    img = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
