"""What a busy neighbour does to a CPU profile, and whether the profile's own checks catch it.

Profiles a model with the default thread count and with ``--threads 1``, first on the
machine as it is, then beside ``--neighbours`` processes that spin on the CPU (``nice``
0, like another user's job). Each row: end-to-end latency, additivity error, the CPU
other processes used, and the verdict of the profile's checks. Writes a Markdown table.

    python bench/profiler_disturbed.py --model resnet20 --out bench/results/profiler_disturbed.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from profiler import ModelSpec, TimingOptions, cpu_model, load_model, profile_model


def _spin(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _row(label: str, spec: ModelSpec, threads: int | None, budget_s: float) -> str:
    p = profile_model(
        load_model(spec), spec, options=TimingOptions(budget_s=budget_s), threads=threads
    )
    q = p.quality
    seen = q.interference if q is not None else None
    other = "-" if seen is None else f"{seen.other_cores:.2f}"
    verdict = (
        "passed"
        if q is not None and q.ok
        else "failed: "
        + "; ".join(x.split(":")[0].split(" (")[0] for x in (q.problems if q is not None else ()))
    )
    return (
        f"| {label} | {p.device.threads} | {p.end_to_end_s * 1e3:.3f} | "
        f"{p.additivity_error:+.1%} | {other} | {verdict} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--neighbours", type=int, default=1, help="spinning processes (default 1)")
    ap.add_argument("--budget-s", type=float, default=3.0, help="timing budget per profile, s")
    ap.add_argument("--out", type=Path, default=Path("bench/results/profiler_disturbed.md"))
    args = ap.parse_args()
    spec = ModelSpec(args.model)
    load = os.getloadavg()[0]
    rows = [
        _row("as it is", spec, None, args.budget_s),
        _row("as it is", spec, 1, args.budget_s),
    ]
    spinners = _spin(args.neighbours)
    try:
        time.sleep(1.0)
        busy = f"{args.neighbours} spinning"
        rows += [_row(busy, spec, None, args.budget_s), _row(busy, spec, 1, args.budget_s)]
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    text = "\n".join(
        [
            f"# A busy neighbour and the profile's checks ({args.model}, batch 1, CPU)",
            "",
            f"- Command: `python {' '.join(sys.argv)}`",
            f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__},"
            f" Python {platform.python_version()}",
            f"- Load average (1 min) before the first row: {load:.2f}",
            "",
            "| machine | threads | end to end ms | additivity | other processes' cores | checks |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
            *rows,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
