#!/usr/bin/env bash
# All GPU figures in one go, on any machine with a CUDA GPU:  bash bench/gpu.sh
# Each figure is one python script writing bench/results/<name>.md; add new ones below.
# PYTHON selects the interpreter (default: python on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False); no GPU figures produced." >&2
    exit 2
fi
# The interpreter would time Python, not the GPU.
unset TRITON_INTERPRET
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv
mkdir -p bench/results

echo "== Triton Conv-BN-ReLU vs cuDNN vs torch.compile -> bench/results/kernels_gpu.md"
"$PY" bench/gpu_kernels.py --out bench/results/kernels_gpu.md

echo "== Per-block serial latency: additivity, repeatability, cost, hook-based side by side -> bench/results/profiler_cuda_*.md"
"$PY" bench/profiler_figures.py --device cuda

echo "bench/gpu.sh: all GPU figures written to bench/results/"
