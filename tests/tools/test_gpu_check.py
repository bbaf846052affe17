"""tools/gpu_check.sh, run as the suite can: on the CPU, --quick, and without the package's web
and LMDB dependencies (as on the GPU device machine), so the device check cannot rot."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_quick_on_the_cpu_without_optional_dependencies(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT / "tests" / "fixtures" / "no_optional_deps")}
    env.pop("OUT", None)
    proc = subprocess.run([str(ROOT / "tools" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "gpu_check: all steps passed" in summary and summary in proc.stdout
    result = json.loads((out / "summary.json").read_text())
    assert {s["name"] for s in result["steps"]} >= {"gpu_tests", "inference_0", "inference_1",
                                                    "train_throughput", "train", "train_resume",
                                                    "export"}
    tests = result["gpu_tests"]
    # On the CPU the CUDA-only cases (float16, CUDA graphs, compile) skip; the rest run.
    assert tests["passed"] >= 6 and tests["failures"] == tests["errors"] == 0
    assert tests["skipped"] >= 4
    assert "batch 1: float32" in summary and "batch 4: float32" in summary
    assert "training step" in summary and "PSNR" in summary
    assert (out / "check.safetensors").is_file()
    # The check refuses to write into a folder that holds results already.
    again = subprocess.run([str(ROOT / "tools" / "gpu_check.sh"), "--device", "cpu", "--quick",
                            "--out", str(out)], env=env, capture_output=True, text=True,
                           timeout=120, check=False)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_gpu_check_refuses_a_missing_cuda_device(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run([str(ROOT / "tools" / "gpu_check.sh"), "--out", str(tmp_path / "o")],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr and "--device cpu" in proc.stderr


def test_a_hung_step_is_killed_and_the_check_goes_on(tmp_path):
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    check = gpu_check.Check(tmp_path, sys.executable)
    t0 = time.monotonic()
    hung = check.run("hung", [sys.executable, "-c", "import time; print('started'); time.sleep(60)"],
                     timeout=2)
    assert hung["rc"] == 124 and time.monotonic() - t0 < 30
    assert "started" in (tmp_path / "hung.log").read_text()
    ok = check.run("quick", [sys.executable, "-c", "print('done')"], timeout=30)
    assert ok["rc"] == 0 and [s["name"] for s in check.steps] == ["hung", "quick"]
