"""Edit latency of the web editor: inside the server, and end to end through HTTP.

For each preset (random weights; the speed does not depend on them) at batch 1:

* server side: projecting an uploaded image (encoder + one generator pass for the
  reconstruction, PNG encoding), and one edit from cached projections (local W+ edit, local W
  edit, a moved region = transplantation), each including PNG encoding of the result. Timed on a
  worker thread, as the server runs its model work (on a busy CPU, OpenMP's spinning in the
  main thread can make the same call many times slower there);
* end to end: a real uvicorn server on 127.0.0.1 in a thread, an HTTP client uploading images
  and posting edits, each edit followed by fetching its PNG (what the page does).

Prints medians (and min) in milliseconds, the device and the thread count; for HTTP edits also
the median compute time the server reported in its responses.

    python benchmarks/edit_latency.py                                   # tiny-32 and official-256-light, CPU
    python benchmarks/edit_latency.py --presets official-256 --repeats 5 --device cuda
    python benchmarks/edit_latency.py --model celeba_hq.safetensors     # a real model file
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import socket
import statistics
import threading
import time

import numpy as np
import torch
from PIL import Image

from stylemapgan.config import get_preset
from stylemapgan.editing.regions import Region
from stylemapgan.formats.checkpoint import build_empty, load_model
from stylemapgan.metrics import time_calls
from stylemapgan.nn.networks import StyleMapGAN
from stylemapgan.utils import cpu_name, resolve_device
from stylemapgan.web.engine import EditEngine, EditSpec


def image(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def left_mask(size: int) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[:, : size * 3 // 8] = 1.0
    return m


def summary(times: list[float]) -> dict[str, float]:
    ms = [1000 * t for t in times]
    return {"median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2), "n": len(ms)}


def timed(fn, device, warmup: int, repeats: int) -> dict[str, float]:
    return summary(time_calls(fn, repeats=repeats, warmup=warmup, device=device))


def random_model(preset: str, device: torch.device) -> StyleMapGAN:
    config = get_preset(preset)
    torch.manual_seed(0)
    model = build_empty(lambda: StyleMapGAN(config))
    with torch.no_grad():  # random weights of a sensible scale; speed does not depend on them
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                p.normal_()
    return model.to(device).eval().requires_grad_(False)


def specs(engine: EditEngine, ids: list[str]) -> dict[str, EditSpec]:
    s = engine.size
    mask = left_mask(s)
    return {
        "local W+": EditSpec(ids[0], (ids[1],), (Region(mask),), "wplus"),
        "local W": EditSpec(ids[0], (ids[1],), (Region(mask),), "w"),
        "moved region (W+)": EditSpec(ids[0], (ids[1],), (Region(mask, dx=s // 4, dy=s // 8),), "wplus"),
    }


def on_worker_thread(fn):
    """Run ``fn()`` on a fresh thread and return its result (or raise its exception)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def server_side(engine: EditEngine, device, warmup: int, repeats: int) -> tuple[dict, list[str]]:
    s = engine.size
    seeds = iter(range(1000, 100000))
    ids = [engine.add_image(Image.fromarray(image(i, s)), f"{i}").id for i in (1, 2)]
    out = {"upload + projection": timed(
        lambda: engine.add_image(Image.fromarray(image(next(seeds), s)), "x"), device, warmup, repeats)}
    for name, spec in specs(engine, ids).items():
        out[f"edit: {name}"] = timed(lambda spec=spec: engine.edit(spec), device, warmup, repeats)
    proj = engine.projection(ids[0])
    with torch.inference_mode():
        out["generator pass alone"] = timed(
            lambda: engine.model.generator.synthesize(list(proj.styles)), device, warmup, repeats)
    return out, ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def through_http(engine: EditEngine, device, warmup: int, repeats: int) -> dict:
    import httpx
    import uvicorn

    from stylemapgan.web.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    s = engine.size
    try:
        with httpx.Client(base_url=base, timeout=120, trust_env=False) as client:
            for _ in range(200):
                try:
                    if client.get("/api/info").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            seeds = iter(range(200000, 300000))

            def upload() -> str:
                r = client.post("/api/images", files={"file": ("x.png", png_bytes(image(next(seeds), s)), "image/png")})
                r.raise_for_status()
                return r.json()["id"]

            out = {"upload + projection": timed(upload, device, warmup, repeats)}
            ids = [upload(), upload()]
            buf = io.BytesIO()
            Image.fromarray((left_mask(s) * 255).astype(np.uint8)).save(buf, format="PNG")
            mask = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            seq = iter(range(1, 10**9))
            compute: list[float] = []
            for name, space, dx in (("local W+", "wplus", 0), ("local W", "w", 0),
                                    ("moved region (W+)", "wplus", s // 4)):
                def edit(space=space, dx=dx) -> None:
                    body = {"session": "bench", "seq": next(seq), "original": ids[0], "references": [ids[1]],
                            "regions": [{"reference": 0, "mask": mask, "dx": dx, "dy": 0}], "space": space}
                    r = client.post("/api/edit", json=body)
                    r.raise_for_status()
                    data = r.json()
                    assert data["status"] == "done", data
                    compute.append(data["timing"]["compute_ms"] / 1000)
                    client.get(data["frames"][0]).raise_for_status()

                compute.clear()
                out[f"edit + fetch PNG: {name}"] = timed(edit, device, warmup, repeats)
                out[f"  (server-reported compute: {name})"] = summary(compute[warmup:])
    finally:
        server.should_exit = True
        thread.join(10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny-32,official-256-light")
    ap.add_argument("--model", help="time a model file instead of random presets")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per row (models under 128 px)")
    ap.add_argument("--repeats-big", type=int, default=3, help="timed runs per row (128 px and up)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"{cpu_name()}")
    results = {}
    targets = [("file " + args.model, None)] if args.model else [(p, p) for p in args.presets.split(",")]
    for label, preset in targets:
        model = load_model(args.model, device=device) if preset is None else random_model(preset, device)
        repeats = args.repeats if model.config.size < 128 else args.repeats_big
        warmup = args.warmup if model.config.size < 128 else min(args.warmup, 1)
        engine = EditEngine(model, model_name=label)
        server, _ = on_worker_thread(functools.partial(server_side, engine, device, warmup, repeats))
        http = through_http(EditEngine(model, model_name=label), device, warmup, repeats)
        results[label] = {"server": server, "http": http}
        print(f"\n{label} ({model.config.size}px, batch 1, {repeats} timed runs per row)")
        for group, rows in (("server side", server), ("end to end (HTTP)", http)):
            print(f"  {group}")
            for name, r in rows.items():
                print(f"    {name:<44} median {r['median_ms']:9.1f} ms   min {r['min_ms']:9.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
