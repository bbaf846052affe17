"""The device check behind ``tools/gpu_check.sh``: GPU tests, inference and training timings,
one summary. Runs from the source tree (the shell script puts ``src`` on PYTHONPATH), so a
machine with PyTorch, numpy, Pillow, safetensors, tqdm and tensorboard but without this
package's web and LMDB dependencies can run it.

Steps (each one's output is kept in ``--out``; a failed step does not stop the later ones):

1. environment: torch, the device, its name and precision support;
2. ``tests/tools/test_gpu.py`` (the ``gpu`` tests) on the device, with their fast-path PSNRs;
3. ``benchmarks/inference.py``: projection + generation at batch 1 and 32 (the paper's
   256 px configuration and the default model) in float32 and the fast paths;
4. ``benchmarks/train_throughput.py`` at the default model's configuration;
5. ``stylemapgan train`` on a folder of images for a short run, resumed once, then
   ``stylemapgan export`` of the result.

``--quick`` shrinks every step to the tiny 32 px preset and a few iterations (the CPU run of
the test suite); the full check is sized (estimated, not yet run on a GPU) to finish in about five minutes on one recent GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Check:
    def __init__(self, out: Path, python: str) -> None:
        self.out, self.python = out, python
        self.steps: list[dict] = []

    def run(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
            timeout: float = 600) -> dict:
        """Run one command, its output teed to ``out/<name>.log``; record how it went."""
        log = self.out / f"{name}.log"
        print(f"\n=== {name}: {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        with log.open("w", encoding="utf-8") as f:
            proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            # A hung step is killed after ``timeout`` s, so the later steps and the summary run.
            watchdog = threading.Timer(timeout, proc.kill)
            watchdog.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stdout.write(line)
                    f.write(line)
                rc = proc.wait()
            finally:
                timed_out = not watchdog.is_alive()
                watchdog.cancel()
        if timed_out:
            rc = 124
            print(f"=== {name}: killed after {timeout:.0f} s", flush=True)
        step = {"name": name, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
                "log": str(log)}
        self.steps.append(step)
        print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {step['seconds']} s",
              flush=True)
        return step

    def py(self, name: str, script: str, *args: str, **kw) -> dict:
        return self.run(name, [self.python, script, *args], **kw)


def _environment(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "device": device, "cuda_available": torch.cuda.is_available()}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but torch sees no CUDA device "
                             f"(torch {torch.__version__}); use --device cpu")
        info.update(name=torch.cuda.get_device_name(device),
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    bf16=torch.cuda.is_bf16_supported(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    memory_gib=round(torch.cuda.get_device_properties(device).total_memory
                                     / 2**30, 1))
    else:
        from stylemapgan.utils import cpu_name

        info.update(name=cpu_name(), threads=torch.get_num_threads())
    return info


def _write_images(folder: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        # Smooth colour fields, not white noise: something a model can learn a little of.
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(base).resize((size, size), Image.BILINEAR).save(folder / f"{i:03d}.png")


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _junit(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, a few iterations (what the test suite runs on the CPU)")
    p.add_argument("--out", default=None,
                   help="folder for logs and JSON results (default: $OUT/gpu_check when OUT is "
                        "set, else gpu_check_out/); must be empty or new")
    args = p.parse_args(argv)
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        p.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    out = Path(args.out or (Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT")
                            else "gpu_check_out"))
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file; give a new folder")
    if out.exists() and any(out.iterdir()):
        p.error(f"--out {out} is not empty; give a new folder (nothing there is overwritten)")
    t_start = time.perf_counter()
    env = _environment(args.device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "environment.json").write_text(json.dumps(env, indent=2), encoding="utf-8")
    print("environment:", json.dumps(env))
    check = Check(out, sys.executable)
    cuda = args.device.startswith("cuda")

    # 2. The gpu tests, on the device (their CPU run skips the CUDA-only cases).
    check.run("gpu_tests", [sys.executable, "-m", "pytest", "tests/tools/test_gpu.py", "-m", "gpu", "-q",
                            "-s", "-p", "no:cacheprovider", "--junitxml", str(out / "gpu_tests.xml")],
              env={"STYLEMAPGAN_GPU_TEST_DEVICE": args.device})

    # 3. Inference: float32 against the fast path, batch 1 and 32.
    fast = (["--precision", "float16" if cuda else "float32", "--channels-last"])
    default_model = str(ROOT / "src/stylemapgan/assets/models/avatars64.safetensors")
    if args.quick:
        runs = [("tiny-32", ["--preset", "tiny-32"], 1, fast), ("tiny-32", ["--preset", "tiny-32"],
                                                               4, fast)]
        reps = ["--repeats", "2", "--warmup", "1"]
    else:
        runs = [("official-256", ["--preset", "official-256"], 1, fast),
                ("official-256", ["--preset", "official-256"], 32, fast),
                ("avatars64", ["--model", default_model], 1, fast),
                ("avatars64", ["--model", default_model], 32, fast)]
        if cuda:
            runs.append(("official-256", ["--preset", "official-256"], 1, [*fast, "--cuda-graphs"]))
        reps = ["--repeats", "20", "--warmup", "5"]
    inference = []
    for i, (label, model_args, batch, opts) in enumerate(runs):
        path = out / f"inference_{i}.json"
        step = check.py(f"inference_{i}", "benchmarks/inference.py", *model_args, "--batch",
                        str(batch), "--device", args.device, *opts, *reps, "--no-peak",
                        "--compare", "--json", str(path))
        inference.append((label, batch, " ".join(opts), step, path))

    # 4. Training throughput at the default model's configuration.
    if args.quick:
        tp = ["--preset", "tiny-32", "--batch", "4", "--iters", "2", "--perceptual", "random:tiny"]
    else:
        tp = ["--preset", "small-64", "--set", "channel_cap=64", "--batch", "16", "--iters", "32",
              "--warmup", "3", "--perceptual", "random:alex"]
    throughput = check.py("train_throughput", "benchmarks/train_throughput.py", *tp, "--compare",
                          "--device", args.device, "--json")

    # 5. A short training run through the command line, resumed once, exported.
    data = out / "images"
    size = 32 if args.quick else 64
    _write_images(data, 24 if args.quick else 64, size)
    iters = 4 if args.quick else 200
    model_sets = (["--preset", "tiny-32"] if args.quick else
                  ["--preset", "small-64", "--set", "channel_cap=64"])
    common = ["--set", "workers=0", "--set", "val_images=8", "--set", "log_every=2",
              "--set", "image_every=0", "--set", "val_every=0",
              "--set", f"perceptual={'random:tiny' if args.quick else 'random:alex'}",
              "--set", f"batch_size={4 if args.quick else 16}", "--device", args.device]
    cli = [sys.executable, "-m", "stylemapgan.cli"]
    check.run("train", [*cli, "train", "--data", str(data), *model_sets, *common,
                        "--set", f"iterations={iters // 2}", "--set", f"checkpoint_every={iters // 2}",
                        "--outdir", str(out / "runs"), "--name", "check"])
    run_dirs = sorted((out / "runs").glob("*check*"))
    if run_dirs:
        check.run("train_resume", [*cli, "train", "--resume", str(run_dirs[0]),
                                   "--set", f"iterations={iters}", "--device", args.device])
        check.run("export", [*cli, "export", str(run_dirs[0]), "--out",
                             str(out / "check.safetensors")])
    else:
        check.steps.append({"name": "train_resume", "rc": 1, "seconds": 0,
                            "log": "no run folder was made"})

    # Summary.
    total = time.perf_counter() - t_start
    lines = [f"gpu_check on {env.get('name')} ({args.device}; torch {env['torch']}, Python "
             f"{env['python']}){' --quick' if args.quick else ''}: {total:.0f} s"]
    tests = _junit(out / "gpu_tests.xml")
    if tests:
        lines.append(f"  gpu tests: {tests['passed']} passed, {tests['skipped']} skipped, "
                     f"{tests['failures'] + tests['errors']} failed")
    psnrs = [ln.split("[fast path] ", 1)[1].strip() for ln in
             Path(check.steps[0]["log"]).read_text(encoding="utf-8").splitlines()
             if "[fast path]" in ln]
    lines += [f"    {s}" for s in psnrs]
    lines.append("  projection + generation (median; float32 -> fast path, PSNR vs float32):")
    for label, batch, opts, step, path in inference:
        r = _load(path)
        if step["rc"] or r is None:
            lines.append(f"    {label} batch {batch} {opts}: FAILED (see {step['log']})")
            continue
        t_fast = r["stages"]["projection + generation"]["median_s"]
        t32 = r.get("float32_median_s", t_fast)
        lines.append(f"    {label} batch {batch}: float32 {1e3 * t32:.2f} ms, {r['options']} "
                     f"{1e3 * t_fast:.2f} ms ({batch / t_fast:.0f} images/s), "
                     f"PSNR {r.get('psnr_vs_float32_db', float('inf')):.1f} dB")
    try:  # the benchmark's --json output is the log from its first "{" line on
        text = Path(throughput["log"]).read_text(encoding="utf-8")
        t = json.loads(text[text.index("{\n"):])
    except (OSError, ValueError):
        t = None
    if t:
        v = t["variants"]
        lines.append(f"  training step ({' '.join([t['preset'], *t.get('overrides', [])])}, batch "
                     f"{t['batch']}, {t['precision']}): previous {v['baseline']['sec_per_iter']:.3f} "
                     f"s/iter, current {v['current']['sec_per_iter']:.3f} s/iter "
                     f"({v['current']['images_per_sec']:.1f} images/s, {t['speedup']:.2f}x), "
                     f"{t['peak_memory']} {v['current']['peak_memory_mib']:.0f} MiB")
    failed = [s for s in check.steps if s["rc"]]
    for s in check.steps:
        lines.append(f"  step {s['name']:<16} {'ok' if not s['rc'] else 'FAILED':<6} "
                     f"{s['seconds']:7.1f} s")
    lines.append("gpu_check: " + ("all steps passed" if not failed else
                                  f"{len(failed)} step(s) failed: "
                                  + ", ".join(s["name"] for s in failed)) + f"; logs in {out}")
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps({"environment": env, "steps": check.steps,
                                                  "gpu_tests": tests, "seconds": round(total, 1)},
                                                 indent=2), encoding="utf-8")
    print("\n" + summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
