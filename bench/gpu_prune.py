"""The command line on a GPU, end to end: train, then prune under a latency budget on CUDA.

    python bench/gpu_prune.py [--out bench/results/prune_gpu.md]

Runs the CLI as a user would (``python -m service.cli``, which is what the installed
``prunerd`` script calls) on the digits dataset (it ships with scikit-learn, so the
GPU machine needs no data): ``train resnet20 --device cuda``, then ``prune ...
--device cuda --cuda-graph --budget 0.6``. On a machine with two or more GPUs it also
trains across them (``--nproc-per-node N``: torchrun's agent, NCCL). Writes a table
of what each command reported. Exit status: 0 when every command succeeded and the
budget was met, 3 when the budget was missed, 1 on an error, 2 without a GPU.
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

import torch

RESULTS = Path(__file__).parent / "results"


def cli(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return done, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "prune_gpu.md")
    ap.add_argument("--budget", default="0.6")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    ap.add_argument("--limit", type=int, help="N train and N test images (a dry run)")
    args = ap.parse_args()
    limit = ["--limit", str(args.limit)] if args.limit else []
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_prune.py: no CUDA device; nothing run", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="prunerd-gpu-prune-"))
    base, pruned = work / "base.pt", work / "pruned"
    rows: list[tuple[str, str, int, float, str]] = []
    steps = [
        ("train", ["train", "resnet20", "--data", "digits", "--epochs", "2", "--device", args.device,
                   "--out", str(base), "--json", *limit]),
        ("prune", ["prune", "resnet20", "--checkpoint", str(base), "--data", "digits",
                   "--budget", args.budget, "--epochs", "1", "--device", args.device, "--cuda-graph",
                   "--timing-budget-s", "1", "--no-table", "--out", str(pruned), "--json", *limit]),
    ]  # fmt: skip
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    if gpus >= 2:
        steps.append(
            ("train, NCCL", ["train", "resnet20", "--data", "digits", "--epochs", "1",
                             "--device", "cuda", "--nproc-per-node", str(gpus),
                             "--out", str(work / "ddp.pt"), "--json"])
        )  # fmt: skip
    status, report = 0, {}
    for name, argv in steps:
        done, took = cli(*argv, timeout=240)
        tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
        rows.append((name, "prunerd " + " ".join(argv), done.returncode, took, tail))
        print(f"{name}: exit {done.returncode} in {took:.1f} s {tail}", flush=True)
        if name == "prune" and done.stdout.strip():
            report = json.loads(done.stdout)
        if done.returncode not in (0,) and status == 0:
            status = 3 if name == "prune" and done.returncode == 1 else 1
    lines = [
        "# The command line on a GPU: train, prune under a budget on CUDA graphs",
        "",
        f"- command: `python {' '.join(sys.argv)}` (through bench/gpu.sh)",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- device: {torch.cuda.get_device_name(0) + f' x {gpus}' if gpus else args.device}; "
        f"torch {torch.__version__}",
        "",
        "| step | exit | wall (s) | last line of stderr |",
        "|---|---:|---:|---|",
        *(f"| {n} | {rc} | {t:.1f} | {tail} |" for n, _, rc, t, tail in rows),
        "",
        *(f"- `{n}`: `{cmd}`" for n, cmd, *_ in rows),
    ]
    if report:
        base_s, pruned_s = report["baseline"]["latency_s"], report["pruned"]["latency_s"]
        lines += [
            "",
            f"Prune: {len(report['removed_blocks'])} blocks removed, baseline "
            f"{base_s * 1e6:.1f} us -> pruned {pruned_s * 1e6:.1f} us per batch of 1 "
            f"(budget {report['budget_s'] * 1e6:.1f} us, met: {report['budget_met']}), "
            f"predicted {report['predicted_latency_s'] * 1e6:.1f} us; test accuracy "
            f"{report['baseline']['accuracy']:.4f} -> {report['pruned']['accuracy']:.4f}.",
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
