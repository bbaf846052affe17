"""Memory of the web editor under concurrent large uploads (issue 23, item 5).

Builds one large PNG (by default 6300 x 6300 RGB, a smooth gradient: 0.13 MB on disk, 151 MB
decoded by Pillow at 4 bytes a pixel, under the 40-megapixel upload cap), then, inside one server process (the app
through FastAPI's test client, in this interpreter):

1. uploads a small image once (the model's first pass, the thread pool);
2. uploads the large PNG alone, and measures the peak resident memory above the start;
3. uploads it ``--uploads`` times at once from as many threads, and measures the peak above
   the start and what is still held afterwards (after handing freed memory back); ``--rounds``
   times, each against the start of the first (memory must not grow round by round).

Both routes: ``/api/images`` (cut to the model's square) and ``/api/photos`` (a full photo,
kept with its longer side at least ``WebSettings.photo_side``). Prints the numbers in MB with
the CPU model, and one JSON line last (what ``tests/test_security.py`` reads).

``--no-reduce`` decodes at full size (as before uploads were reduced while decoded) and
``--slots N`` changes how many uploads decode at once, to see what each part does.

    python benchmarks/upload_memory.py                        # 8 x 6300 x 6300, both routes
    python benchmarks/upload_memory.py --no-reduce --slots 8  # the old behaviour, for comparison
    python benchmarks/upload_memory.py --side 4000 --routes images --uploads 4

Linux only (reads /proc/self/status and resets the peak through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
import warnings

import numpy as np
from PIL import Image


def mem_mb(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM (the peak resident set) to the current one


def large_png(side: int) -> bytes:
    """A smooth RGB gradient: small as a file, ``side**2 * 3`` bytes decoded."""
    ramp = (np.arange(side, dtype=np.uint32) * 255 // max(1, side - 1)).astype(np.uint8)
    rgb = np.empty((side, side, 3), np.uint8)
    rgb[..., 0] = ramp[None, :]
    rgb[..., 1] = ramp[:, None]
    rgb[..., 2] = 128
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=6300, help="side of the square PNG (pixels)")
    p.add_argument("--uploads", type=int, default=8, help="concurrent uploads")
    p.add_argument("--routes", default="images,photos", help="images, photos or both")
    p.add_argument("--preset", default="tiny-32", help="model preset (random weights)")
    p.add_argument("--slots", type=int, default=None,
                   help="uploads decoded at once (default: the server's DECODE_SLOTS)")
    p.add_argument("--no-reduce", action="store_true",
                   help="decode uploads at full size (the behaviour before reduction)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of concurrent uploads")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from stylemapgan.config import get_preset
    from stylemapgan.nn.networks import StyleMapGAN
    from stylemapgan.utils import cpu_name
    from stylemapgan.web import app as web_app
    from stylemapgan.web import imaging as web_imaging
    from stylemapgan.web import photos as web_photos
    from stylemapgan.web.engine import EditEngine

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with")
        from fastapi.testclient import TestClient

    if args.no_reduce:  # the routes read uploads without a size to reduce to
        web_app.square_keep = lambda size: None
        web_photos.photo_keep = lambda size, side: None
    slots = args.slots or web_imaging.DECODE_SLOTS
    web_imaging._decode_slots = threading.BoundedSemaphore(slots)

    torch.manual_seed(0)
    model = StyleMapGAN(get_preset(args.preset)).eval()
    engine = EditEngine(model, model_name=args.preset)
    data = large_png(args.side)
    small = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(small, format="PNG")

    print(f"CPU: {cpu_name()}; torch threads {args.threads}; model {args.preset} "
          f"({engine.size} px); PNG {args.side}x{args.side} RGB, {len(data) / 1e6:.2f} MB on disk, "
          f"{args.side ** 2 * 4 / 2 ** 20:.0f} MB decoded (Pillow: 4 bytes a pixel); {slots} "
          "decode slot(s); "
          f"{'no reduction' if args.no_reduce else 'reduced while decoding'}")
    results: dict = {"cpu": cpu_name(), "side": args.side, "uploads": args.uploads,
                     "slots": slots, "reduce": not args.no_reduce,
                     "decoded_mb": args.side ** 2 * 4 / 2 ** 20, "routes": {}}
    failures: list[str] = []
    with TestClient(web_app.create_app(engine), base_url="http://127.0.0.1:8000") as client:
        def upload(route: str, body: bytes, i: int) -> None:
            r = client.post(f"/api/{route}", files={"file": (f"{i}.png", body, "image/png")})
            if r.status_code != 201:
                failures.append(f"{route} {i}: {r.status_code} {r.text[:200]}")
            else:
                results.setdefault("kept", {})[route] = [r.json()["width"], r.json()["height"]]

        def measured(run) -> tuple[float, float, float, float]:
            web_imaging._trim_heap()
            start = mem_mb("VmRSS")
            reset_peak()
            t0 = time.perf_counter()
            run()
            wall = time.perf_counter() - t0
            peak = mem_mb("VmHWM") - start
            web_imaging._trim_heap()
            return start, peak, mem_mb("VmRSS") - start, wall

        for route in [r.strip() for r in args.routes.split(",") if r.strip()]:
            upload(route, small.getvalue(), -1)  # warm up
            _, one, _, one_s = measured(lambda route=route: upload(route, data, -2))

            def concurrent(route=route) -> None:
                threads = [threading.Thread(target=upload, args=(route, data, i))
                           for i in range(args.uploads)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            rounds = []
            for _ in range(args.rounds):
                start, peak, after, wall = measured(concurrent)
                if rounds:  # against the start of the first round
                    shift = start - rounds[0]["start_mb"]
                    peak, after = peak + shift, after + shift
                    start = rounds[0]["start_mb"]
                rounds.append({"start_mb": round(start, 1), "peak_mb": round(peak, 1),
                               "after_mb": round(after, 1), "wall_s": round(wall, 2)})
            results["routes"][route] = {"one_peak_mb": round(one, 1), "one_s": round(one_s, 2),
                                        **rounds[0], "peak_mb": max(r["peak_mb"] for r in rounds),
                                        "after_mb": rounds[-1]["after_mb"], "rounds": rounds}
            kept = "x".join(map(str, results.get("kept", {}).get(route, [])))
            print(f"/api/{route}: one upload {one:7.1f} MB peak ({one_s:.2f} s); RSS at start "
                  f"{rounds[0]['start_mb']:.0f} MB; kept {kept}")
            for i, r in enumerate(rounds):
                print(f"  round {i + 1}: {args.uploads} at once {r['peak_mb']:7.1f} MB peak, "
                      f"{r['after_mb']:6.1f} MB held after ({r['wall_s']:.2f} s)")
    if failures:
        print("failed uploads:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
