"""The benchmark scripts run end to end on a tiny model (what they print is not checked for
speed: timings belong to the scripts, not to tests)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_inference_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--preset", "tiny-32",
         "--repeats", "2", "--warmup", "1", "--threads", "1", "--channels-last", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "paired rounds" in proc.stdout and "conv roofline" in proc.stdout
    assert "estimated run time: about " in proc.stdout  # said before the long part starts
    result = json.loads(out.read_text())
    assert result["encoder_calls_during_edit"] == 0
    assert set(result["stages"]) == {"encoder", "generator", "projection + generation",
                                     "edit (cached stylemaps)"}
    stage = result["stages"]["projection + generation"]
    assert stage["gflops"] > 0 and stage["best_s"] <= stage["median_s"]
    assert len(result["paired_rounds"]) == 2
    assert result["fraction_of_roofline"] > 0 and result["fraction_of_peak"] > 0


def test_onnx_speed_defaults_to_the_embedded_model_and_checks_the_graphs(tmp_path, capsys):
    """--model is optional (the embedded model, as `export-onnx` exports without --model); a
    folder without graphs, or graphs of another model, is a one-line error."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_speed", ROOT / "benchmarks" / "onnx_speed.py")
    onnx_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(onnx_speed)
    with pytest.raises(SystemExit) as e:
        onnx_speed.main(["--onnx-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "manifest.json not found" in err, err
    assert "required" not in err  # --model is not required
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"size": 32}}))
    with pytest.raises(SystemExit) as e:
        onnx_speed.main(["--onnx-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "exported from another model" in err, err
    assert "avatars64.safetensors" in err


def test_train_throughput_compare_runs_both_steps(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--preset", "tiny-32",
         "--batch", "4", "--iters", "2", "--threads", "1", "--perceptual", "random:tiny",
         "--compare", "--json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["variants"]) == {"baseline", "current"}
    for r in result["variants"].values():
        assert r["sec_per_iter"] > 0 and r["images_per_sec"] > 0 and r["peak_memory_mib"] > 0
    assert result["speedup"] > 0 and result["device"].startswith("cpu (")
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--iters", "0"],
        capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "--iters" in bad.stderr
