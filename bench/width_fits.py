"""Does the width pass meet a latency budget? One fit against measured refits.

    python bench/width_fits.py                        # resnet20 and resnet56, shipped weights
    python bench/width_fits.py --models resnet20 --methods removal+hfp --budgets 0.25

Every case prunes the shipped Fashion-MNIST baseline through ``pruner.prune_checkpoint``
(as ``prunerd prune`` does) without fine-tuning, once with ``max_fits=1`` (the widths
fitted to the width-latency model alone) and once with the default refits, interleaved
per seed. After each prune the pruned model and the baseline are timed interleaved once
more, apart from the pruner's own check, and the row records that latency ratio against
the budget: ``over`` = ratio / budget - 1 (positive: slower than the budget).

Rows go to ``<out>.json`` as they finish (a restart skips the rows it holds); ``<out>.md``
is rewritten after each. Timings: run on a quiet machine (``--quiet-lock`` to share it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from compare_methods import machine, speedups, utc_now  # bench/ is on sys.path

from profiler import load_model, read_checkpoint
from profiler.pretrained import pretrained_checkpoint
from pruner import PruneConfig, PrunePlan, apply_plan, load_pruned, prune_checkpoint

OUT = Path(__file__).parent / "results" / "width_fits"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--methods", nargs="+", default=["hfp"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.8, 0.6, 0.5])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--fits", nargs="+", type=int, default=[1, 3], help="max_fits to compare")
    p.add_argument("--limit", type=int, default=6000, help="training images (gate training)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, timing and the rest")
    p.add_argument("--timing-budget", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--quiet-lock", type=Path, help="flock held for the whole run")
    return p.parse_args(argv)


def run_case(args, model: str, method: str, budget: float, seed: int, fits: int, table: Path):
    """One prune without fine-tuning; the row it makes."""
    ckpt = pretrained_checkpoint(model, "fashion-mnist")
    with tempfile.TemporaryDirectory() as tmp:
        config = PruneConfig.from_flat(
            {
                "model": model, "checkpoint": str(ckpt), "data": "fashion-mnist",
                "out": str(Path(tmp) / "out"), "method": method, "budget": budget,
                "epochs": 0, "limit": args.limit, "threads": args.threads,
                "timing_budget_s": args.timing_budget, "table": str(table), "export": False,
                "seed": seed, "max_fits": fits, "heldout_samples": 2000, "test_samples": 1000,
            }
        )  # fmt: skip
        t = time.time()
        report = prune_checkpoint(config)
        seconds = time.time() - t
        pruned = load_pruned(report.checkpoint_path).eval()
    spec = read_checkpoint(ckpt).spec
    base = apply_plan(load_model(spec, checkpoint=ckpt).eval(), PrunePlan(spec)).eval()
    timed = speedups(base, pruned, spec, [1], args.timing_budget, threads=args.threads)[1]
    ratio = timed["pruned_s"] / timed["base_s"]
    return {
        "model": model, "method": method, "budget": budget, "seed": seed, "max_fits": fits,
        "fits": report.width.fits if report.width else 0, "ratio": ratio,
        "over": ratio / budget - 1.0, "pruner_ratio": 1.0 / report.speedup,
        "budget_met": report.budget_met, "macs_ratio": report.pruned.macs / report.baseline.macs,
        "width_target": (report.width.targets.get("latency") if report.width else None),
        "seconds": seconds, "load_before": os.getloadavg()[0], "warnings": list(report.warnings),
    }  # fmt: skip


def write_md(args, rows: list[dict], started: str) -> None:
    lines = [
        "# Width pass against a latency budget: one fit vs measured refits",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- dates: {started} to {utc_now()}",
        f"- machine: {machine()}",
        f"- load (1 min) before the cases: {min(r['load_before'] for r in rows):.2f} to "
        f"{max(r['load_before'] for r in rows):.2f}",
        f"- shipped Fashion-MNIST baselines, no fine-tuning, gates trained 1 epoch on "
        f"{args.limit} images; {args.threads} torch thread(s); {args.timing_budget} s per "
        "measurement",
        "- width latencies: one latency table shared by every case, so each model's convs "
        "were timed once (in its first case) and every fit of it used those timings",
        "",
        "`ratio`: the pruned model's batch-1 latency over the baseline's, timed interleaved "
        "after the prune (apart from the pruner's own check); `over` = ratio / budget - 1, "
        "mean and range over the seeds; `met`: within the pruner's 3% tolerance by that "
        "timing; `pruner's over`: the same from the pruner's own final check (mean); "
        "`pruner met`: how many runs that check passed.",
        "",
        "| model | method | budget | max_fits | seeds | over (mean) | over (min..max) | met |"
        " pruner's over | pruner met | fits per seed | MACs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["model"], r["method"], r["budget"], r["max_fits"]) for r in rows},
        key=lambda k: (k[0], k[1], -k[2], k[3]),
    )
    for key in keys:
        rs = [r for r in rows if (r["model"], r["method"], r["budget"], r["max_fits"]) == key]
        over = [r["over"] for r in rs]
        met = sum(r["over"] <= 0.03 for r in rs)
        fits = "/".join(str(r["fits"]) for r in rs)
        macs = statistics.fmean(r["macs_ratio"] for r in rs)
        own = statistics.fmean(r["pruner_ratio"] / r["budget"] - 1.0 for r in rs)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(rs)} | "
            f"{statistics.fmean(over):+.1%} | {min(over):+.1%}..{max(over):+.1%} | "
            f"{met}/{len(rs)} | {own:+.1%} | {sum(r['budget_met'] for r in rs)}/{len(rs)} | "
            f"{fits} | {macs:.3f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lock = None
    if args.quiet_lock:
        lock = open(args.quiet_lock, "a")  # noqa: SIM115 (held for the run)
        fcntl.flock(lock, fcntl.LOCK_EX)
    path = args.out.with_suffix(".json")
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["model"], r["method"], r["budget"], r["seed"], r["max_fits"]) for r in rows}
    started = utc_now()
    table = Path(tempfile.mkdtemp()) / "lut.sqlite"  # width latencies shared by the cases
    plan = [
        (m, meth, b, s, f)
        for m in args.models for meth in args.methods for b in args.budgets
        for s in args.seeds for f in args.fits
    ]  # fmt: skip
    for i, case in enumerate(plan, 1):
        if case in done:
            continue
        print(f"[{i}/{len(plan)}] {case}", file=sys.stderr, flush=True)
        row = run_case(args, *case, table=table)
        print(f"    ratio {row['ratio']:.3f}, over {row['over']:+.1%}, fits {row['fits']}",
              file=sys.stderr, flush=True)  # fmt: skip
        rows.append(row)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(path)
        write_md(args, rows, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
