#!/usr/bin/env bash
# One-command device check: the gpu tests, inference at batch 1 and 32, training throughput and
# a short `stylemapgan train` run (resumed once, exported), then one summary.
#
#   tools/gpu_check.sh                       # on CUDA (a GPU machine), about five minutes (estimated)
#   tools/gpu_check.sh --device cpu --quick  # the same steps, tiny, on the CPU (the test suite)
#   tools/gpu_check.sh --out results/        # where the logs and JSON results go
#
# It runs from the source tree (src/ on PYTHONPATH), so it needs PyTorch, numpy, Pillow,
# safetensors, tqdm, tensorboard and pytest, not the package's web or LMDB dependencies.
# PYTHON picks the interpreter (default: python3). Exit status 0 only when every step passed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$root/tools/gpu_check.py" "$@"
