"""Real torchvision models through the installed ``prunerd``: profiled at 224, pruned on Fashion-MNIST.

    python bench/real_models.py [--profile-models resnet50 ...] [--prune-models resnet18 ...]
        [--skip-profile] [--skip-prune] [--report-only]

Run it with the Python of a venv that has torchvision and prunerd installed (models are
built with ``weights=None``: nothing downloads), on a quiet machine.

1. Profile: for each model at 224x224, batch 1 and 16, one thread and all cores,
   ``prunerd profile torchvision.models:NAME --input-size 224 ... --json``: end-to-end
   latency, units found, additivity (blocks + rest against end to end) and the
   profile's own checks. Goal: additivity within 5% on every row.
2. Prune: for resnet18 and mobilenet_v3_small, ``prunerd train`` on the full
   Fashion-MNIST (one channel repeated to three, resized to ``--input-size``), then
   ``prunerd prune`` to ``--budget`` of the measured batch-1 latency. Goal: every
   budget met by the pruned model's measured latency.

Every finished row is written to bench/results/real_models.json at once, and a rerun
skips the rows already there; bench/results/real_models.md is rewritten from it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
PRUNERD = str(Path(sys.executable).parent / "prunerd")
PROFILE_MODELS = (
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "densenet121",
    "convnext_tiny",
)
PRUNE_MODELS = ("resnet18", "mobilenet_v3_small")
ADDITIVITY_GOAL = 0.05


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def prunerd(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([PRUNERD, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"prunerd {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


class Rows:
    """The results file: a list of rows, rewritten whole after each one (resumable)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = json.loads(path.read_text()) if path.is_file() else []

    def has(self, key: dict) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rows, indent=1))
        tmp.replace(self.path)


def profile_row(model: str, batch: int, threads: int, budget_s: float, work: Path) -> dict:
    path = work / f"profile-{model}-b{batch}-t{threads}.json"
    load = uptime()
    t0 = time.perf_counter()
    prunerd("profile", f"torchvision.models:{model}", "--input-size", "224",
            "--num-classes", "1000", "--batch-size", str(batch), "--threads", str(threads),
            "--no-table", "--timing-budget-s", str(budget_s), "--json", str(path), "--quiet")  # fmt: skip
    p = json.loads(path.read_text())
    q = p["quality"]
    return {
        "kind": "profile",
        "model": model,
        "batch": batch,
        "threads": threads,
        "units": len(p["blocks"]),
        "end_to_end_s": p["end_to_end_s"],
        "additivity_error": p["additivity_error"],
        "checks_passed": q["ok"],
        "problems": q["problems"],
        "other_cores": (q.get("interference") or {}).get("other_cores"),
        # the profile's prediction for the model without every second removable unit
        "prediction_error": (p.get("check") or {}).get("error"),
        "seconds": time.perf_counter() - t0,
        "load_before": load,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def train(spec: str, ckpt: Path, args: argparse.Namespace, limit: list[str]) -> dict:
    """``prunerd train``'s JSON result, kept beside the checkpoint: training needs no quiet
    machine, so ``--train-only`` can run it early and the timed part reuses it."""
    done = ckpt.with_suffix(".train.json")
    if done.is_file():
        return json.loads(done.read_text())
    size, epochs = str(args.input_size), str(args.train_epochs)
    args_ = ["--data", "fashion-mnist", "--input-size", size, "--epochs", epochs]
    args_ += ["--threads", str(args.threads), "--resume", *limit, "--out", str(ckpt), "--json"]
    out = prunerd("train", spec, *args_).stdout
    done.write_text(out)
    return json.loads(out)


def prune_row(model: str, args: argparse.Namespace, work: Path) -> dict:
    spec = f"torchvision.models:{model}"
    ckpt = work / f"{model}-fashion-mnist.pt"
    threads = str(args.threads)
    limit = ["--limit", str(args.limit)] if args.limit else []
    load = uptime()
    t0 = time.perf_counter()
    trained = train(spec, ckpt, args, limit)
    t_train = time.perf_counter() - t0
    out = work / f"{model}-pruned-{args.budget}"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    prunerd("prune", spec, "--checkpoint", str(ckpt), "--data", "fashion-mnist",
            "--budget", str(args.budget), "--epochs", str(args.finetune_epochs),
            "--threads", threads, "--no-table", *limit, "--out", str(out))  # fmt: skip
    r = json.loads((out / "report.json").read_text())
    return {
        "kind": "prune",
        "model": model,
        "input_size": args.input_size,
        "budget": args.budget,
        "train_epochs": args.train_epochs,
        "finetune_epochs": args.finetune_epochs,
        "threads": args.threads,
        "baseline_accuracy": trained["test"]["accuracy"],
        "test_n": trained["test"]["n"],
        "pruned_accuracy": r["pruned"]["accuracy"],
        "baseline_s": r["baseline"]["latency_s"],
        "budget_profile_s": r["budget_s"],  # the budget on the profile's own scale
        "pruned_s": r["pruned"]["latency_s"],
        "budget_s": r["budget_check_s"],  # the fraction of the measured baseline
        "budget_met": r["budget_met"],
        "removed": list(r["removed_blocks"]),
        "train_seconds": t_train,
        "seconds": time.perf_counter() - t0,
        "load_before": load,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_md(rows: list[dict], command: str, results: Path) -> None:
    prof = [r for r in rows if r["kind"] == "profile"]
    prun = [r for r in rows if r["kind"] == "prune"]
    lines = [
        "# Real torchvision models: profiled at 224, pruned on Fashion-MNIST (CPU)",
        "",
        f"- command: `{command}`",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"{platform.platform()}",
        "- each row's date and `uptime` before it are in real_models.json",
        "",
    ]
    if prof:
        within = [r for r in prof if abs(r["additivity_error"]) <= ADDITIVITY_GOAL]
        lines += [
            "## Profiles (`prunerd profile torchvision.models:NAME --input-size 224`)",
            "",
            f"Goal: additivity within {ADDITIVITY_GOAL:.0%} on every row: "
            f"**{'met' if len(within) == len(prof) else 'missed'}** "
            f"({len(within)} of {len(prof)} rows within).",
            "",
            "| model | batch | threads | pass | units | end to end ms | additivity | checks "
            "| other cores | prediction |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in prof:
            other = "" if r["other_cores"] is None else f"{r['other_cores']:.2f}"
            pred = r.get("prediction_error")  # recorded from pass 6 on
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['threads']} | {r.get('pass', 1)} | {r['units']} | "
                f"{r['end_to_end_s'] * 1e3:.2f} | {r['additivity_error']:+.1%} | "
                f"{'passed' if r['checks_passed'] else 'failed'} | {other} | "
                f"{'' if pred is None else f'{pred:+.1%}'} |"
            )
        lines.append("")
    if prun:
        met = sum(r["budget_met"] for r in prun)
        lines += [
            "## Pruned on Fashion-MNIST (`prunerd train` then `prunerd prune`, dbp)",
            "",
            f"Goal: every budget met by measurement: **{'met' if met == len(prun) else 'missed'}** "
            f"({met} of {len(prun)}).",
            "",
            "| model | input | trained epochs | baseline acc | pruned acc | baseline ms | budget ms "
            "| measured ms | speed-up | met | removed |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in prun:
            lines.append(
                f"| {r['model']} | 3x{r['input_size']}x{r['input_size']} | {r['train_epochs']} | "
                f"{r['baseline_accuracy']:.4f} | {r['pruned_accuracy']:.4f} | "
                f"{r['baseline_s'] * 1e3:.3f} | {r['budget_s'] * 1e3:.3f} | "
                f"{r['pruned_s'] * 1e3:.3f} | {r['baseline_s'] / r['pruned_s']:.2f}x | "
                f"{'yes' if r['budget_met'] else 'no'} | {', '.join(r['removed'])} |"
            )
        lines += [
            "",
            "Accuracy on the full 10,000-image test set; latency at batch 1, measured by the "
            "pruner (baseline and pruned timed interleaved); `met` is the pruner's own verdict "
            "(measured latency within its budget check).",
        ]
    (results / "real_models.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile-models", nargs="+", default=list(PROFILE_MODELS))
    ap.add_argument("--prune-models", nargs="+", default=list(PRUNE_MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--thread-counts", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    ap.add_argument("--timing-budget-s", type=float, default=10.0, help="timing budget per profile")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--skip-prune", action="store_true")
    ap.add_argument("--input-size", type=int, default=32, help="Fashion-MNIST resized to this")
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--budget", type=float, default=0.7, help="fraction of batch-1 latency")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for train/prune")
    ap.add_argument("--work", type=Path, default=Path("bench/runs/real_models"))
    ap.add_argument("--limit", type=int, help="smoke runs only: N train and N test images")
    ap.add_argument("--results", type=Path, default=OUT, help="where the .json and .md go")
    ap.add_argument(
        "--train-only", action="store_true", help="train the models to prune, then stop"
    )
    ap.add_argument(
        "--pass", dest="pass_", type=int, default=1, help="profile again as pass N (repeatability)"
    )
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    rows = Rows(args.results / "real_models.json")
    command = "python bench/real_models.py " + " ".join(sys.argv[1:])
    args.work.mkdir(parents=True, exist_ok=True)
    if args.train_only:
        limit = ["--limit", str(args.limit)] if args.limit else []
        for model in args.prune_models:
            train(
                f"torchvision.models:{model}", args.work / f"{model}-fashion-mnist.pt", args, limit
            )
        return 0
    if not args.report_only and not args.skip_profile:
        for model in args.profile_models:
            for batch in args.batches:
                for threads in args.thread_counts:
                    key = {"kind": "profile", "model": model, "batch": batch, "threads": threads}
                    if rows.has({**key, "pass": args.pass_}):
                        continue
                    row = profile_row(model, batch, threads, args.timing_budget_s, args.work)
                    rows.add({**row, "pass": args.pass_})
                    print(f"{model} b{batch} t{threads}: additivity {row['additivity_error']:+.1%} "
                          f"({row['seconds']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    if not args.report_only and not args.skip_prune:
        for model in args.prune_models:
            key = {"kind": "prune", "model": model, "budget": args.budget}
            if rows.has(key):
                continue
            row = prune_row(model, args, args.work)
            rows.add(row)
            print(f"{model} pruned: {row['baseline_s'] / row['pruned_s']:.2f}x, budget "
                  f"{'met' if row['budget_met'] else 'MISSED'} ({row['seconds']:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    write_md(rows.rows, command, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
