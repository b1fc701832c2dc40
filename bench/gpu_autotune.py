"""GPU figure: the cost of tuning the fused kernels, in a first process and in a second one.

    python bench/gpu_autotune.py [--model resnet20] [--batch 1]

Runs the same child process twice with one fresh ``$PRUNERD_CACHE`` and one
fresh Triton compile cache: the first tunes every conv shape of the fused
model (and compiles), the second finds the choices in the cache file and
compiles only the winners (Triton's compile cache is kept between the two,
as it is on a deployed machine). Each child times its first fused forward
pass (and a second one, tuned and compiled by then) and counts the cache entries.

Writes bench/results/autotune_gpu.md. Exit status: 0 when the second process
tuned nothing (the cache file served every shape), 3 when it did, 1 on an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(model_name: str, batch: int) -> dict:
    import torch

    from kernels import fuse, tuning_stats
    from profiler import load_model

    torch.manual_seed(0)
    fmt = torch.channels_last
    model = load_model(model_name).eval().to("cuda", torch.float16).to(memory_format=fmt)
    fused = fuse(model)
    x = torch.randn(batch, 3, 32, 32, device="cuda", dtype=torch.float16).contiguous(
        memory_format=fmt
    )
    times = []
    with torch.inference_mode():
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fused(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {
        "first_pass_s": times[0],
        "second_pass_s": times[1],
        "tuned_shapes": tuning_stats().measured,
        "cache_entries": tuning_stats().cache_entries,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "autotune_gpu.md"
    )
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.model, args.batch)), flush=True)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_autotune.py: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    runs = []
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as tcache:
        env = {**os.environ, "PRUNERD_CACHE": cache, "TRITON_CACHE_DIR": tcache}
        env.pop("TRITON_INTERPRET", None)
        for _ in range(2):
            t0 = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--model",
                    args.model,
                    "--batch",
                    str(args.batch),
                ],  # fmt: skip
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                return 1
            runs.append({**json.loads(lines[-1][len("RESULT ") :]), "process_wall_s": wall})
            print(f"process {len(runs)}: {runs[-1]}", flush=True)
    import triton

    lines = [
        "# Tuning the fused kernels: first process against second (choices kept on disk)",
        "",
        f"- command: `python {' '.join(sys.argv)}` (through bench/gpu.sh)",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, triton {triton.__version__}",
        f"- model: fused {args.model}, batch {args.batch}, fp16 channels_last; one fresh"
        " $PRUNERD_CACHE and Triton cache for both processes",
        "",
        "| process | first fused pass (s) | second pass (ms) | shapes tuned | cache entries | process wall (s) |",  # fmt: skip
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['first_pass_s']:.2f} | {r['second_pass_s'] * 1e3:.1f} ms"
            f" | {r['tuned_shapes']} | {r['cache_entries']} | {r['process_wall_s']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0 if runs[1]["tuned_shapes"] == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
