#!/usr/bin/env bash
# Every GPU figure in one go, on any machine with a CUDA GPU:  bash bench/gpu.sh
#
# Steps, correctness first, each under its own time limit (seconds):
#   1. pytest -m gpu            the GPU tests (kernel vs fp64 reference, every tile, NVML by UUID,
#                               chained timing, auto backend, the monitor's CUDA-event timing, a
#                               daemon's GPU job forked from its forkserver), on the GPU, not the
#                               interpreter
#   2. gpu_profile.py           profiler additivity, launch overhead, event cost: resnet20/resnet56/
#                               mobilenetv2 x batch 1/16/128 x eager/CUDA graph, fused resnet20;
#                               resnet56's blocks removed one at a time at batch 1 (marginal cost);
#                               resnet56 pruned at random, and the host's issue time per piece
#                               eager (profiler_cuda_host.json, for bench/prediction_rules.py)
#   3. gpu_prune.py             the command line on CUDA: train resnet20 on digits, prune it under a
#                               budget with --device cuda --cuda-graph; with 2+ GPUs, train on all (NCCL)
#   4. gpu_fused.py             fused (backend auto) vs unfused resnet20/resnet56, batch 1 and 128,
#                               fp32 NCHW and fp16 channels_last, eager and CUDA graph
#   5. gpu_autotune.py          tuning time in a first process and a second one (cache on disk)
#   6. gpu_kernels.py           Triton kernel vs cuDNN per conv shape: graph (GPU) and eager columns
# The limits add up to 9 min 40 s (run it with a 10-minute limit); on an H200 the first five steps took 4 minutes (bench/results/gpu_h200.md).
# Results: bench/results/*_gpu.md, bench/results/profiler_cuda_additivity.json (each row with
# the profile's own prediction check), bench/results/profiles_cuda/ (every profile, raw samples,
# gzipped JSON) and bench/results/run_gpu.md (each step's exit status and wall time).
# Exit status: 0 when every step passed; otherwise the first failing step's status
# (1 error, 2 no GPU, 3 a goal missed, 124 the step's time limit).
# PYTHON selects the interpreter (default: python3). QUICK=1 runs a smaller grid. DRY=1 checks
# the script on a machine without a GPU: the test files run (their GPU tests skip), the profiler
# step runs on the CPU, the GPU-only steps say there is no GPU (exit 2); results go to a
# temporary directory, never to bench/results.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$(date +%s)

DRY=${DRY:-0}
OUT=bench/results
if [ "$DRY" = 1 ]; then
    OUT=$(mktemp -d)
    QUICK=1
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False); no GPU figures produced." >&2
    exit 2
else
    unset TRITON_INTERPRET  # the interpreter would time Python, not the GPU
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Test tools travel with the tree (bench/runs/gpu_deps, made by bench/gpu_deps.sh; carry it to
# the GPU machine) where the machine lacks them; last on the path, so installed copies win.
if ! "$PY" -c 'import pytest, hypothesis' 2>/dev/null && [ -d bench/runs/gpu_deps ]; then
    export PYTHONPATH="$PYTHONPATH:$PWD/bench/runs/gpu_deps"
fi
# A fresh tuning cache: the run starts cold, as on a new machine.
PRUNERD_CACHE=$(mktemp -d)
export PRUNERD_CACHE
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,temperature.gpu --format=csv

if [ "${QUICK:-0}" = 1 ]; then
    PROFILE_ARGS=(--models resnet20 --batches 1 --budget-s 0.2 --fused resnet20)
    FUSED_ARGS=(--models resnet20 --batches 1)
    KERNEL_ARGS=(--models resnet20 --batches 1 --dtypes fp16 --layouts channels_last)
else
    PROFILE_ARGS=(--models resnet20 resnet56 mobilenetv2 --batches 1 16 128 --budget-s 0.5 --marginal resnet56)
    FUSED_ARGS=(--models resnet20 resnet56 --batches 1 128)
    KERNEL_ARGS=(--models resnet56 --batches 1 128 --dtypes fp16 --layouts channels_last)
fi
if [ "$DRY" = 1 ]; then PROFILE_ARGS+=(--device cpu --modes eager); fi
PROFILE_ARGS+=(--out-json "$OUT/profiler_cuda_additivity.json" --out-md "$OUT/profiler_cuda_additivity_gpu.md")
FUSED_ARGS+=(--out "$OUT/fused_gpu.md")
KERNEL_ARGS+=(--out "$OUT/kernels_gpu.md")
GPU_TESTS=(tests/test_kernels_triton.py tests/test_kernels_tuning.py tests/test_device_identity.py
           tests/test_profile_chain.py)
# The CLI's GPU test needs the service's dependencies; run it where they are installed.
if "$PY" -c 'import service.cli' 2>/dev/null; then GPU_TESTS+=(tests/test_profile.py tests/test_monitor.py tests/test_worker_start.py); fi

RESULT=0
SUMMARY=()
step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local took=$(($(date +%s) - t0))
    echo "== $name: exit $rc after ${took} s"
    SUMMARY+=("| $name | $rc | $took |")
    if [ "$rc" -ne 0 ] && [ "$RESULT" -eq 0 ]; then RESULT=$rc; fi
}

step "pytest -m gpu" 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider "${GPU_TESTS[@]}"
step "profiler additivity" 180 "$PY" bench/gpu_profile.py "${PROFILE_ARGS[@]}"
PRUNE_ARGS=(--out "$OUT/prune_gpu.md")
if [ "$DRY" = 1 ]; then PRUNE_ARGS+=(--device cpu --limit 300); fi
step "prune on the GPU" 90 "$PY" bench/gpu_prune.py "${PRUNE_ARGS[@]}"
step "fused vs unfused" 90 "$PY" bench/gpu_fused.py "${FUSED_ARGS[@]}"
step "autotune, two processes" 60 "$PY" bench/gpu_autotune.py --out "$OUT/autotune_gpu.md"
step "kernel vs cuDNN" 40 "$PY" bench/gpu_kernels.py "${KERNEL_ARGS[@]}"

{
    echo "# bench/gpu.sh run"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), total $(($(date +%s) - START)) s"
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
    echo "- exit status per step: 0 passed, 1 error, 3 a goal missed, 124 time limit"
    echo
    echo "| step | exit | wall (s) |"
    echo "|---|---:|---:|"
    printf '%s\n' "${SUMMARY[@]}"
} >"$OUT/run_gpu.md"
rm -rf "$PRUNERD_CACHE"
echo "bench/gpu.sh: exit $RESULT; results in $OUT/ (run_gpu.md lists the steps)"
exit "$RESULT"
