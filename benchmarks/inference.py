"""Inference speed of StyleMapGAN: encoder, generator, projection + generation, a cached edit.

Prints medians and best times after warm-up, the device and thread count, FLOPs of each stage,
the achieved GFLOP/s and, beside it, the peak this device reaches on the same convolution shapes
run one at a time ("conv peak": the best GFLOP/s of any of the model's convolution shapes in
isolation, and "conv roofline": the model's conv FLOPs divided by the summed isolated times of
all its convs). The fractions come from paired rounds, each timing projection + generation once
and every isolated convolution once (warm), so that a machine whose speed drifts (turbo,
neighbours) moves both alike; they are medians over the rounds.

    python benchmarks/inference.py                                  # official-256, batch 1, float32
    python benchmarks/inference.py --channels-last --repeats 9      # the float32 fast path
    python benchmarks/inference.py --precision bfloat16 --channels-last
    python benchmarks/inference.py --preset official-256 --batch 32 --device cuda --precision float16
    python benchmarks/inference.py --compare                        # float32 vs the fast path, PSNR

Weights are random (the speed does not depend on them); pass --model to time a real file.

The default run (official-256) takes minutes on a CPU: one projection + generation takes
1.8 s or more on 2 CPU cores (1.84 s on an Intel Xeon with AMX in the README's table; more on
slower or busy CPUs), and the run makes about 35 such passes (about 58 with --compare). It
prints its estimate after the first pass; --preset small-64 is a quick look.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from stylemapgan.config import get_preset
from stylemapgan.editing.operations import local_edit_wplus
from stylemapgan.formats.checkpoint import load_model
from stylemapgan.metrics import time_calls
from stylemapgan.nn.networks import StyleMapGAN
from stylemapgan.nn.runtime import RuntimeOptions, prepare, psnr
from stylemapgan.utils import cpu_name, resolve_device


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap and keep freed memory for reuse.

    At 256 px many activations are 32 MiB or more, above glibc's largest mmap threshold, so by
    default each is a fresh mmap whose pages fault in on every forward pass (about 5 million
    minor faults and several seconds of system time per run of this script). Equivalent to
    ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647``.
    Returns False where this is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def timeit(fn, device, warmup: int, repeats: int) -> list[float]:
    return time_calls(fn, repeats=repeats, warmup=warmup, device=device)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _as_convolution(func, args, kwargs):
    """The aten.convolution arguments of a conv call (in inference mode PyTorch dispatches
    aten.conv2d / aten.conv_transpose2d without decomposing them)."""
    a = list(args) + [None] * 8
    if func is torch.ops.aten.convolution.default:
        return args
    if func is torch.ops.aten.conv2d.default:
        x, w, b = a[0], a[1], a[2]
        stride, padding, dilation, groups = a[3] or [1, 1], a[4] or [0, 0], a[5] or [1, 1], a[6] or 1
        return x, w, b, _pair(stride), _pair(padding), _pair(dilation), False, [0, 0], groups
    if func is torch.ops.aten.conv_transpose2d.input:
        x, w, b = a[0], a[1], a[2]
        stride, padding, out_pad = a[3] or [1, 1], a[4] or [0, 0], a[5] or [0, 0]
        groups, dilation = a[6] or 1, a[7] or [1, 1]
        return x, w, b, _pair(stride), _pair(padding), _pair(dilation), True, _pair(out_pad), groups
    return None


def _pair(v):
    return list(v) * 2 if len(v) == 1 else list(v)


class ConvRecorder(TorchDispatchMode):
    """Records the arguments of every convolution the model runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        conv = _as_convolution(func, args, kwargs or {})
        if conv is not None:
            x, w, b, stride, padding, dilation, transposed, out_pad, groups = conv
            key = (tuple(x.shape), tuple(w.shape), b is not None, tuple(stride), tuple(padding),
                   tuple(dilation), bool(transposed), tuple(out_pad), int(groups), x.dtype,
                   x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            self.calls[key] += 1
        return func(*args, **(kwargs or {}))


class IsolatedConvs:
    """The model's convolutions, each rebuilt with random tensors of the same shapes, strides,
    dtype and memory format, timed one at a time."""

    def __init__(self, calls: Counter, device: torch.device) -> None:
        self.device = device
        self.runs = []  # (closure, FLOPs of one call, number of calls per forward pass)
        for key, count in calls.items():
            xs, ws, has_b, stride, padding, dilation, transposed, out_pad, groups, dtype, cl = key
            fmt = torch.channels_last if cl else torch.contiguous_format
            x = torch.randn(xs, device=device, dtype=dtype).contiguous(memory_format=fmt)
            w = torch.randn(ws, device=device, dtype=dtype).contiguous(memory_format=fmt)
            b = torch.randn(ws[1] * groups if transposed else ws[0], device=device, dtype=dtype) if has_b else None

            def run(x=x, w=w, b=b, stride=stride, padding=padding, dilation=dilation,
                    transposed=transposed, out_pad=out_pad, groups=groups):
                return torch.ops.aten.convolution(x, w, b, stride, padding, dilation, transposed,
                                                  out_pad, groups)

            self.runs.append((run, flops(run), count))
        self.total_flops = sum(f * c for _, f, c in self.runs)
        self.num_calls = sum(c for _, _, c in self.runs)

    def time_once(self) -> tuple[float, float]:
        """(best GFLOP/s of any shape, summed seconds of all the model's convs): each conv is
        run twice in a row and the second, warm call is timed."""
        best, total = 0.0, 0.0
        with torch.inference_mode():
            for run, f, count in self.runs:
                t = timeit(run, self.device, 1, 1)[0]
                best = max(best, f / t / 1e9)
                total += t * count
        return best, total


def planned_passes(warmup: int, repeats: int, *, peak: bool, compare: bool) -> float:
    """The run's length in units of one projection + generation (rough: an encoder pass is
    about 0.2 of one, a generator or edit pass about 0.8): the four timed stages, counting
    FLOPs, and with ``peak`` the paired rounds (the isolated convolutions take about one pass
    in total), with ``compare`` the float32 baseline (up to 3x slower than a fast path)."""
    n = (warmup + repeats) * (0.2 + 0.8 + 1.0 + 0.8) + 2.0
    if peak:
        n += 1.0 + max(1, warmup) + 2.0 * repeats
    if compare:
        n += 3.0 * (warmup + repeats) + 2.0
    return n


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="official-256")
    p.add_argument("--model", default=None, help="time this model file instead of random weights")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--cuda-graphs", action="store_true", help="capture CUDA graphs (CUDA only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-peak", action="store_true", help="skip the isolated-convolution peak")
    p.add_argument("--compare", action="store_true",
                   help="also run float32 and report the fast path's speed-up and PSNR")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc at its defaults (by default freed memory is kept "
                        "for reuse, see keep_freed_memory)")
    args = p.parse_args(argv)
    malloc = "glibc defaults" if args.system_malloc else (
        "freed memory kept (mallopt)" if keep_freed_memory() else "system (not glibc)")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    if args.model:
        model = load_model(args.model, device=device)
    else:
        model = StyleMapGAN(get_preset(args.preset)).to(device).eval().requires_grad_(False)
        model.generator.update_mean_stylemap(1000)
    cfg = model.config
    options = RuntimeOptions(precision=args.precision, channels_last=args.channels_last,
                             compile=args.compile, cuda_graphs=args.cuda_graphs)
    runner = prepare(model, device, options)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({dev_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"malloc: {malloc}")
    print(f"model: {args.model or args.preset} ({cfg.size}px, {cfg.stylemap_size}x{cfg.stylemap_size}), "
          f"batch {args.batch}, {options.describe()}")

    x = torch.rand(args.batch, 3, cfg.size, cfg.size, device=device) * 2 - 1
    x_ref = torch.rand(args.batch, 3, cfg.size, cfg.size, device=device) * 2 - 1
    mask = torch.zeros(1, 1, cfg.size, cfg.size, device=device)
    mask[..., cfg.size // 4: cfg.size // 2, cfg.size // 4: 3 * cfg.size // 4] = 1

    with torch.inference_mode():
        w = runner.project(x)
        styles_src = runner.pyramid(w)
        styles_ref = runner.pyramid(runner.project(x_ref))
        # One projection + generation (a warm-up too) sizes the whole run, which at 256 px
        # on a CPU takes minutes: say so before it starts.
        one = timeit(lambda: runner.reconstruct(x), device, 0, 1)[0]
    passes = planned_passes(args.warmup, args.repeats, peak=not args.no_peak,
                            compare=args.compare and options != RuntimeOptions())
    print(f"estimated run time: about {_duration(one * passes)} (one projection + generation "
          f"took {one:.2f} s; about {passes:.0f} such passes planned; --repeats, --warmup, "
          "--no-peak or a smaller --preset shorten it)", flush=True)

    encoder_calls = 0

    def count_encoder(*_):
        nonlocal encoder_calls
        encoder_calls += 1

    def edit():
        return runner.synthesize(local_edit_wplus(styles_src, styles_ref, mask))

    stages = {
        "encoder": lambda: runner.project(x),
        "generator": lambda: runner.generate_from_w(w),
        "projection + generation": lambda: runner.reconstruct(x),
        "edit (cached stylemaps)": edit,
    }
    stage_flops = {
        "encoder": flops(lambda: model.encoder(x)),
        "generator": flops(lambda: model.generator(w.float())),
        "edit (cached stylemaps)": flops(lambda: model.generator.synthesize(
            local_edit_wplus([s.float() for s in styles_src], [s.float() for s in styles_ref], mask))),
    }
    stage_flops["projection + generation"] = stage_flops["encoder"] + stage_flops["generator"]

    results = {"device": str(device), "device_name": dev_name, "threads": torch.get_num_threads(),
               "malloc": malloc,
               "torch": torch.__version__, "preset": args.model or args.preset, "batch": args.batch,
               "options": options.describe(), "stages": {}}
    print(f"\n{'stage':26s} {'median s':>9s} {'best s':>9s} {'s/image':>9s} {'GFLOPs':>8s} {'GFLOP/s':>8s}")
    for name, fn in stages.items():
        hook = model.encoder.register_forward_pre_hook(count_encoder) if name.startswith("edit") else None
        with torch.inference_mode():
            times = timeit(fn, device, args.warmup, args.repeats)
        if hook is not None:
            hook.remove()
        med = statistics.median(times)
        gf = stage_flops[name] / 1e9
        print(f"{name:26s} {med:9.4f} {min(times):9.4f} {med / args.batch:9.4f} {gf:8.1f} {gf / med:8.1f}")
        results["stages"][name] = {"median_s": med, "best_s": min(times), "per_image_s": med / args.batch,
                                   "gflops": gf, "gflop_per_s": gf / med,
                                   "best_gflop_per_s": gf / min(times), "times": times}
    print(f"encoder passes during cached edits: {encoder_calls}")
    results["encoder_calls_during_edit"] = encoder_calls

    if not args.no_peak:
        rec = ConvRecorder()
        with torch.inference_mode(), rec:
            # compiled graphs hide their convolutions from the recorder: record the eager copy
            runner.model.generator(runner.model.encoder(runner._in(x))) if options.compile else runner.reconstruct(x)
        # Paired rounds: each times projection + generation once and every isolated conv once,
        # so a machine that speeds up or slows down (turbo, neighbours) moves both alike.
        convs = IsolatedConvs(rec.calls, device)
        with torch.inference_mode():
            for _ in range(max(1, args.warmup)):
                convs.time_once()
            rounds = []
            for _ in range(args.repeats):
                t_model = timeit(stages["projection + generation"], device, 0, 1)[0]
                rounds.append((t_model, *convs.time_once()))
        model_flops = stage_flops["projection + generation"]
        achieved = [model_flops / t / 1e9 for t, _, _ in rounds]
        peaks = [p for _, p, _ in rounds]
        roofs = [convs.total_flops / iso / 1e9 for _, _, iso in rounds]
        f_peak = statistics.median(a / p for a, p in zip(achieved, peaks, strict=True))
        f_roof = statistics.median(a / r for a, r in zip(achieved, roofs, strict=True))
        best_peak, best_roof = max(peaks), max(roofs)
        print(f"\n{args.repeats} paired rounds (projection + generation, then each isolated conv once):")
        print(f"projection + generation: {statistics.median(achieved):.1f} GFLOP/s median, {max(achieved):.1f} best")
        print(f"conv peak (best isolated shape): {statistics.median(peaks):8.1f} GFLOP/s median, "
              f"{best_peak:.1f} best -> projection + generation reaches {100 * f_peak:5.1f}% "
              f"(median of rounds; best vs best {100 * max(achieved) / best_peak:5.1f}%)")
        print(f"conv roofline (all {convs.num_calls} convs isolated): {statistics.median(roofs):8.1f} GFLOP/s "
              f"median, {best_roof:.1f} best -> {100 * f_roof:5.1f}% "
              f"(median of rounds; best vs best {100 * max(achieved) / best_roof:5.1f}%)")
        results.update(conv_peak_gflop_per_s=best_peak, conv_roofline_gflop_per_s=best_roof,
                       fraction_of_peak=f_peak, fraction_of_roofline=f_roof,
                       best_fraction_of_peak=max(achieved) / best_peak,
                       best_fraction_of_roofline=max(achieved) / best_roof,
                       paired_rounds=[{"model_s": t, "peak_gflop_per_s": p, "convs_s": i}
                                      for t, p, i in rounds])

    if args.compare and options != RuntimeOptions():
        base = prepare(model, device, RuntimeOptions())
        with torch.inference_mode():
            t32 = statistics.median(timeit(lambda: base.reconstruct(x), device, args.warmup, args.repeats))
            y32, yfast = base.reconstruct(x).float(), runner.reconstruct(x).float()
        fast = results["stages"]["projection + generation"]["median_s"]
        q = psnr(yfast, y32)
        print(f"\nfloat32 projection + generation: {t32:.4f} s; {options.describe()}: {fast:.4f} s "
              f"-> {t32 / fast:.2f}x faster; PSNR vs float32 {q:.1f} dB")
        results.update(float32_median_s=t32, speedup_vs_float32=t32 / fast, psnr_vs_float32_db=q)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
