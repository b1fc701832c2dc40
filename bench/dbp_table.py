"""The paper's table: block against filter pruning over seeds, from the shipped baseline, measured.

    python bench/dbp_table.py [--model resnet56] [--methods ...] [--budgets 0.7 0.5 0.35]
                              [--seeds 0 1 2] [--finetune-epochs N] [--threads 1]
    python bench/dbp_table.py --pilot [--pilot-epochs 1 2 3 4 6]   # choose --finetune-epochs
    python bench/dbp_table.py --report-only                        # md and png from the json
    python bench/dbp_table.py --model resnet20 --limit 1000 --out /tmp/dbp_smoke ...  # smoke

Every method starts from the shipped baseline (``--pretrained fashion-mnist``) and
sees the whole Fashion-MNIST training set: 54,000 images to fit probes and to
fine-tune on, and the other 6,000, a held-out split drawn by the seed, to score the
probes and pick the best fine-tuning epoch. Accuracy is on the full 10,000-image
test set, which no decision reads. The methods:

- dbp, random, l1, removal: blocks removed through ``pruner.prune`` to ``budget`` x
  the baseline's measured batch-1 latency (DBP probes / a seeded draw / lowest mean
  |weight| first / the held-out loss rise of the model without each block);
- hfp: filters removed through ``pruner.prune`` to the MACs ratio DBP reached at
  that budget and seed (``--match latency``: to the latency budget instead);
- tp-magnitude, tp-taylor (and tp-bn-scale): Torch-Pruning's pruner with its own
  importance (L1 magnitude; |w * dL/dw| on the first batches of the seeded training
  order; |BN gamma|), global ranking, its ratio bisected to the same MACs as hfp;
- dbp+hfp, removal+hfp: blocks (by DBP gains, or by removal loss) then filters through
  ``pruner.prune``, to the latency budget.

All are fine-tuned alike: distillation from the baseline for ``--finetune-epochs``
(after each removal round for the pruner's methods), lr 0.01, the best epoch on the
held-out split kept. Speed-ups are the baseline's and the pruned model's medians
timed interleaved at batch 1 and 16, both as torch.fx GraphModules.

The seed draws the held-out split, the order of the training images (probe data,
gate training, Taylor gradients, fine-tuning) and the random scorer.

Rows go to ``<out>.json`` (a list; default out: bench/results/dbp_table) one run at a
time, atomically; a restart skips the runs it holds. ``<out>.md`` (mean +- sd per
method and budget, the goals of issue 14) and ``<out>.png`` (matplotlib, when
installed) are rewritten after every run. ``--limit`` (train and test images) is for
smoke runs only: it needs another ``--out`` and marks every row and report as a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import hashlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from compare_methods import (  # bench/ is on sys.path when run as a script
    at_equal_accuracy,
    cost_ratios,
    machine,
    pyplot,
    speedups,
    tp_prune,
    utc_now,
)

from profiler import LatencyTable, load_model, read_checkpoint, retain_freed_memory
from profiler.pretrained import pretrained_checkpoint
from pruner import (
    Batches,
    Budget,
    DataBundle,
    DepthOptions,
    PrunePlan,
    RunOptions,
    apply_plan,
    evaluate,
    finetune,
    load_data,
    prune,
)

DEFAULT_OUT = Path("bench/results/dbp_table")
BLOCK_METHODS = ("dbp", "random", "l1", "removal")
FILTER_METHODS = ("hfp", "tp-magnitude", "tp-taylor", "tp-bn-scale")
METHODS = (
    "dbp", "random", "l1", "hfp", "tp-magnitude", "tp-taylor", "tp-bn-scale", "dbp+hfp", "removal",
    "removal+hfp",
)  # fmt: skip
DEFAULT_METHODS = ["dbp", "random", "l1", "hfp", "tp-magnitude", "tp-taylor", "dbp+hfp"]
GOAL_SPEEDUP, GOAL_LOSS, GOAL_RATIO = 2.0, 0.005, 1.2
_SAID: set[str] = set()  # notes logged once per process


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--pretrained", default="fashion-mnist", help="dataset of the shipped weights")
    p.add_argument("--checkpoint", type=Path, help="a baseline checkpoint instead of the shipped")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=METHODS)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.35])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--main-budget", type=float, default=0.5, help="the budget run at every seed")
    p.add_argument(
        "--side-seeds", type=int, default=1,
        help="how many of --seeds run at the other budgets (default 1: the first)",
    )  # fmt: skip
    p.add_argument("--finetune-epochs", type=int, help="default: the pilot's choice")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--match", choices=["macs", "latency"], default="macs")
    p.add_argument("--calibration-samples", type=int, default=2000)
    p.add_argument("--heldout-samples", type=int, default=1000)
    p.add_argument(
        "--iterative", type=int, default=0, metavar="K",
        help="block methods remove in K rounds, rescoring between them (0: one shot)",
    )  # fmt: skip
    p.add_argument(
        "--finetune-last", action="store_true",
        help="with --iterative: fine-tune after the last round only (one fine-tuning's cost)",
    )  # fmt: skip
    p.add_argument("--taylor-batches", type=int, default=8, help="batches of 128 for gradients")
    p.add_argument("--threads", type=int, default=1, help="torch threads for timing (0: all)")
    p.add_argument(
        "--train-threads", type=int,
        help="torch threads for pruning and fine-tuning (default: --threads); the speed-ups "
        "are always timed with --threads",
    )  # fmt: skip
    p.add_argument("--timing-budget", type=float, default=4.0, help="seconds per measurement")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--equal-within", type=float, default=0.003, help="'equal accuracy' margin")
    p.add_argument("--limit", type=int, help="SMOKE RUNS ONLY: train and test images")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="path prefix of .json/.md/.png")
    p.add_argument("--table", help="latency table (default: one per --out and model in /tmp)")
    p.add_argument("--report-only", action="store_true", help="rewrite .md/.png from the .json")
    p.add_argument("--pilot", action="store_true", help="choose the fine-tuning epochs")
    p.add_argument("--pilot-epochs", nargs="+", type=int, default=[1, 2, 3, 4, 6])
    p.add_argument("--pilot-tolerance", type=float, default=0.002)
    p.add_argument("--retry-failed", action="store_true", help="rerun rows that failed")
    p.add_argument(
        "--quiet-lock", type=Path,
        help="hold this file's flock from the end of fine-tuning through the timing, so other"
        " work on the machine can wait for it (`flock PATH COMMAND`)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.limit is not None and args.out.resolve() == DEFAULT_OUT.resolve():
        p.error(f"--limit is for smoke runs: give another --out than {DEFAULT_OUT}")
    if args.finetune_last and not args.iterative:
        p.error("--finetune-last needs --iterative K")
    if args.iterative < 0:
        p.error(f"--iterative must be >= 0 rounds, got {args.iterative}")
    if args.threads == 0:
        args.threads = None
    if args.train_threads is None:
        args.train_threads = args.threads
    return args


# ---------------------------------------------------------------------------- files


def out_path(args: argparse.Namespace, suffix: str) -> Path:
    return args.out.with_name(args.out.name + suffix)


def read_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def write_rows(path: Path, rows: list[dict]) -> None:
    """Replace ``path`` atomically: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def clean(value: Any) -> Any:
    """JSON without NaN: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


# ---------------------------------------------------------------------------- the inputs


class Bench:
    """The baseline, its spec and normalisation, the test set, and the run's settings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        ckpt_path = args.checkpoint or pretrained_checkpoint(args.model, args.pretrained)
        self.ckpt_path = Path(ckpt_path)
        ckpt = read_checkpoint(self.ckpt_path)
        self.spec = ckpt.spec
        if self.spec.name != args.model:
            raise SystemExit(f"{self.ckpt_path} holds {self.spec.name}, not {args.model}")
        self.teacher = load_model(self.spec, checkpoint=self.ckpt_path).eval()
        # Time the baseline in the form every pruned model has: a torch.fx GraphModule.
        self.timed_base = apply_plan(self.teacher, PrunePlan(self.spec)).eval()
        self.norm = (ckpt.meta or {}).get("normalisation")
        # One test set for every seed (with --limit, a subset drawn with seed 0).
        self.test = self.bundle(0, test_only=True).test
        self.smoke = args.limit is not None
        self.settings = {
            "model": args.model,
            "checkpoint": self.ckpt_path.name,
            "checkpoint_sha256": hashlib.sha256(self.ckpt_path.read_bytes()).hexdigest()[:16],
            "data": args.data,
            "limit": args.limit,
            "threads": args.threads,
            "lr": args.lr,
            "match": args.match,
            "timing_budget_s": args.timing_budget,
            "batches": args.batches,
            "calibration_samples": args.calibration_samples,
            "heldout_samples": args.heldout_samples,
        }
        if args.iterative:  # only when set: older rows' settings stay comparable
            self.settings.update(
                iterative_rounds=args.iterative, iterative_finetune=not args.finetune_last
            )

    def bundle(self, seed: int, test_only: bool = False) -> DataBundle:
        """Fresh batches for one run: the held-out split and the training order drawn by
        ``seed``, normalised as the baseline was trained (the test set: the bench's own)."""
        data = load_data(self.args.data, batch_size=128, seed=seed, limit=self.args.limit)
        train, val, test = data.train, data.val, data.test
        if self.norm:  # the statistics the baseline was trained with (all 60,000 images)
            mean, std = self.norm["mean"], self.norm["std"]
            train = Batches(train.images, train.labels, mean, std, 128, shuffle=True, seed=seed)
            val = Batches(val.images, val.labels, mean, std, 128)
            test = Batches(test.images, test.labels, mean, std, 128)
        return DataBundle(data.info, train, val, test if test_only else self.test)

    def run_options(self, seed: int) -> RunOptions:
        a = self.args
        return RunOptions(
            lr=a.lr, threads=a.train_threads, latency_threads=a.threads,
            timing_budget_s=a.timing_budget, seed=seed,
        )  # fmt: skip


def meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": "python " + " ".join(sys.argv),
        "date": utc_now(),
        "machine": machine("cpu"),
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "train_threads": args.train_threads,  # not a setting: it changes speed, not results
    }


def baseline_row(bench: Bench, rows: list[dict]) -> dict:
    """The baseline's accuracy on the test set, measured once and kept as a row."""
    for r in rows:
        if r["method"] == "baseline" and r.get("settings") == bench.settings:
            return r
    t = time.time()
    result = evaluate(bench.teacher, bench.test)
    row = {
        "method": "baseline", "budget": 1.0, "seed": None, "accuracy": result.accuracy,
        "baseline_accuracy": result.accuracy, "test_n": result.n,
        **{f"speedup_b{b}": 1.0 for b in bench.args.batches},
        "finetune_epochs": 0, "test_loss": result.loss, "macs_ratio": 1.0, "params_ratio": 1.0,
        "smoke": bench.smoke, "settings": bench.settings, "seconds": time.time() - t,
        **meta(bench.args),
    }  # fmt: skip
    log(f"baseline {bench.args.model}: test accuracy {result.accuracy:.4f} on {result.n} images")
    return row


# ---------------------------------------------------------------------------- the runs


def plan_runs(args: argparse.Namespace) -> list[tuple[float, int, str]]:
    """Most important first: every method at the main budget with the first seed, then the
    other seeds there, then the other budgets with the first ``--side-seeds`` seeds.
    Within a (budget, seed), dbp goes first: the filter methods match its MACs."""
    order = sorted(args.methods, key=METHODS.index)
    order.sort(key=lambda m: m != "dbp")
    main = args.main_budget if args.main_budget in args.budgets else None
    plan = []
    if main is not None:
        plan += [(main, s, m) for s in args.seeds for m in order]
    side = args.seeds[: args.side_seeds]
    plan += [(b, s, m) for b in args.budgets if b != main for s in side for m in order]
    return plan


def matched_macs(rows: list[dict], budget: float, seed: int, source: str) -> tuple[float, str]:
    """The MACs ratio the ``source`` method reached at (budget, seed); else its mean over the
    seeds run at that budget; else the budget itself."""
    done = [r for r in rows if r["method"] == source and r["budget"] == budget and ok(r)]
    same = [r for r in done if r["seed"] == seed]
    if same:
        return same[0]["macs_ratio"], f"{source} seed {seed}"
    if done:
        return statistics.fmean(r["macs_ratio"] for r in done), f"mean of {source} over seeds"
    return budget, f"no {source} row: the budget as MACs ratio"


def run_pruner(bench: Bench, method: str, budget: float, seed: int, rows, table, epochs, quiet):
    """A method of the pruner library: (model, extras for the row)."""
    args = bench.args
    extra: dict[str, Any] = {}
    if method == "hfp" and args.match == "macs":
        target, source = matched_macs(rows, budget, seed, "dbp")
        b = Budget(macs=target)
        extra.update(target_macs=target, matched_to=source)
    else:
        b = Budget(fraction=budget)
    clock = Phases()

    last_round = max(args.iterative - 1, 0)

    def on_event(event: dict) -> None:
        clock.mark(event["event"])
        if event["event"] == "finetuned" and event.get("round", 0) >= last_round:  # then: measured
            quiet.acquire()

    result = prune(
        bench.teacher, bench.spec, bench.bundle(seed), b, method=method, epochs=epochs,
        table=table, run=bench.run_options(seed), on_event=on_event,
        depth=DepthOptions(
            calibration_samples=args.calibration_samples, heldout_samples=args.heldout_samples,
            iterative=args.iterative > 0, iterative_rounds=max(args.iterative, 1),
            iterative_finetune=not args.finetune_last,
        ),
    )  # fmt: skip
    rep = result.report
    extra.update(
        accuracy=rep.pruned.accuracy,
        accuracy_before_ft=rep.accuracy_before_finetune,
        removed_blocks=list(rep.removed_blocks),
        finetune_rounds=len(rep.rounds),
        budget_met=rep.budget_met,
        pruner_speedup_b1=rep.speedup,
        warnings=list(rep.warnings) + ([rep.split.reason] if rep.split else []),
        phases=clock.seconds,
    )
    return result.model, extra


def run_tp(bench: Bench, method: str, budget: float, seed: int, rows, epochs, quiet):
    """A Torch-Pruning importance, matched to hfp's MACs (``--match latency``) or dbp's."""
    source = "hfp" if bench.args.match == "latency" else "dbp"
    target, where = matched_macs(rows, budget, seed, source)
    data = bench.bundle(seed)
    importance = method.removeprefix("tp-")
    clock = Phases()
    model, reached, ratio = tp_prune(
        bench.teacher, bench.spec, target, importance, grad_batches=data.train,
        grad_count=bench.args.taylor_batches,
    )  # fmt: skip
    clock.mark("pruned")
    before = evaluate(model, bench.test).accuracy
    clock.mark("tested")
    fit = finetune(model, bench.teacher, data.train, data.val, epochs, lr=bench.args.lr,
                   progress=False)  # fmt: skip
    clock.mark("finetuned")
    quiet.acquire()
    accuracy = evaluate(model, bench.test).accuracy
    clock.mark("tested")
    extra = {
        "accuracy": accuracy, "accuracy_before_ft": before, "phases": clock.seconds,
        "target_macs": target, "matched_to": where, "tp_pruning_ratio": ratio,
        "finetune_rounds": 1, "finetune_epochs_run": fit.epochs_run,
        "warnings": [] if abs(reached - target) < 0.02 else [
            f"MACs {reached:.3f} reached for target {target:.3f}"
        ],
    }  # fmt: skip
    return model, extra


class QuietLock:
    """An exclusive flock held while a run measures, so cooperating jobs (`flock PATH CMD`)
    do not load the machine while a speed-up is timed. Taken at most once per run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.file = None

    def acquire(self) -> None:
        if self.path is None or self.file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a")  # noqa: SIM115 (held across calls; release() closes)
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the flock
            self.file = None


class Phases:
    """Seconds between milestones (the pruner's events, or the bench's own), in order."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.seconds: list[list] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds.append([name, round(now - self.last, 2)])
        self.last = now


def run_one(bench: Bench, method: str, budget: float, seed: int, rows, table, epochs) -> dict:
    args = bench.args
    torch.manual_seed(seed)
    load = [round(v, 2) for v in os.getloadavg()]
    t = time.time()
    quiet = QuietLock(args.quiet_lock)
    try:
        if method.startswith("tp-"):
            model, extra = run_tp(bench, method, budget, seed, rows, epochs, quiet)
        else:
            model, extra = run_pruner(bench, method, budget, seed, rows, table, epochs, quiet)
        macs, params = cost_ratios(model, bench.teacher, bench.spec)
        quiet.acquire()
        t_sp = time.time()
        sp = speedups(bench.timed_base, model, bench.spec, args.batches, args.timing_budget,
                      threads=args.threads)  # fmt: skip
    finally:
        quiet.release()
    extra["phases"].append(["speed-ups timed", round(time.time() - t_sp, 2)])
    base = next(r for r in rows if r["method"] == "baseline")
    return {
        "method": method, "budget": budget, "seed": seed, "accuracy": extra.pop("accuracy"),
        "baseline_accuracy": base["accuracy"], "test_n": base["test_n"],
        **{f"speedup_b{b}": sp[b]["speedup"] for b in args.batches},
        "finetune_epochs": epochs, "macs_ratio": macs, "params_ratio": params,
        **{f"latency_b{b}_ms": sp[b]["pruned_s"] * 1e3 for b in args.batches},
        **{f"base_latency_b{b}_ms": sp[b]["base_s"] * 1e3 for b in args.batches},
        **extra, "seconds": time.time() - t, "smoke": bench.smoke, "settings": bench.settings,
        **meta(args), "load_before": load,
    }  # fmt: skip


def ok(row: dict) -> bool:
    return row.get("error") is None and row.get("accuracy") is not None


def key(row: dict) -> tuple:
    return (row["method"], row["budget"], row["seed"])


def check_settings(rows: list[dict], settings: dict, epochs: int) -> None:
    """A json holds one configuration: resuming with another would mix them in one table."""
    for r in rows:
        theirs = {**r.get("settings", {}), "finetune_epochs": r.get("finetune_epochs")}
        mine = {**settings, "finetune_epochs": 0 if r["method"] == "baseline" else epochs}
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise SystemExit(
                f"{r['method']} row {r.get('budget')}/{r.get('seed')} was made with other "
                f"settings ({{name: (then, now)}}: {diff}): give another --out, or the same "
                "settings to resume"
            )


def table_path(args: argparse.Namespace) -> str:
    if args.table is not None:
        return args.table
    return f"/tmp/prunerd-dbp-table/{args.out.name}-{args.model}-latency.sqlite"


def run_table(args: argparse.Namespace) -> int:
    json_path = out_path(args, ".json")
    epochs, chosen_by = finetune_epochs(args)
    bench = Bench(args)
    rows = read_rows(json_path)
    check_settings(rows, bench.settings, epochs)
    if not any(r["method"] == "baseline" for r in rows):
        rows.append(clean(baseline_row(bench, rows)))
        write_rows(json_path, rows)
    plan = plan_runs(args)
    have = {key(r) for r in rows if ok(r) or not args.retry_failed}
    todo = [p for p in plan if (p[2], p[0], p[1]) not in have]
    log(
        f"{'SMOKE RUN: ' if bench.smoke else ''}{len(plan)} runs planned, "
        f"{len(plan) - len(todo)} already in {json_path}, {len(todo)} to go; "
        f"fine-tuning {epochs} epoch(s) ({chosen_by}); threads {args.threads} for timing, "
        f"{args.train_threads} for the rest"
    )
    t0 = time.time()
    with LatencyTable(table_path(args)) as table:
        for i, (budget, seed, method) in enumerate(todo, 1):
            t = time.time()
            log(f"[{i}/{len(todo)}] {method} budget {budget} seed {seed}: started "
                f"(load {os.getloadavg()[0]:.2f})")  # fmt: skip
            rows = [r for r in rows if key(r) != (method, budget, seed)]  # a retried failure
            try:
                row = run_one(bench, method, budget, seed, rows, table, epochs)
            except Exception as e:  # one failed run is a row saying why; the others go on
                row = {"method": method, "budget": budget, "seed": seed, "accuracy": None,
                       "error": f"{type(e).__name__}: {e}", "where": where(e),
                       "finetune_epochs": epochs,
                       "seconds": time.time() - t, "smoke": bench.smoke,
                       "settings": bench.settings, **meta(args)}  # fmt: skip
            row["finetune_epochs_chosen_by"] = chosen_by
            rows.append(clean(row))
            write_rows(json_path, rows)
            write_report(args, rows)
            log(f"[{i}/{len(todo)}] {method} budget {budget} seed {seed}: {summary(row)} in "
                f"{time.time() - t:.0f} s (elapsed {(time.time() - t0) / 60:.1f} min)")  # fmt: skip
    write_report(args, rows)
    return 0


def where(e: BaseException) -> str:
    """file:line of the innermost frame the exception passed through."""
    tb = traceback.extract_tb(e.__traceback__)
    return f"{tb[-1].filename}:{tb[-1].lineno}" if tb else ""


def summary(row: dict) -> str:
    if not ok(row):
        return f"FAILED ({row['error']})"
    sp = ", ".join(f"b{k[9:]} {v:.2f}x" for k, v in row.items() if k.startswith("speedup_b"))
    return (
        f"accuracy {row['accuracy']:.4f} (baseline {row['baseline_accuracy']:.4f}), "
        f"speed-up {sp}, MACs {row['macs_ratio']:.3f}"
    )


# ---------------------------------------------------------------------------- the pilot


class TestTap:
    """A val split that, each time ``fit`` evaluates it (once per epoch), first records the
    student's accuracy on the test set: test accuracy per epoch, read by nothing in the run."""

    def __init__(self, val: Iterable, test: Iterable, student: torch.nn.Module) -> None:
        self.val, self.test, self.student = val, test, student
        self.accuracy: list[float] = []

    def __iter__(self) -> Iterator:
        self.accuracy.append(evaluate(self.student, self.test).accuracy)
        return iter(self.val)


def pilot_choice(rows: list[dict], tolerance: float) -> int | None:
    """The fewest epochs whose held-out (val) accuracy is within ``tolerance`` of the best."""
    done = [r for r in rows if r.get("val_accuracy") is not None]
    if not done:
        return None
    best = max(r["val_accuracy"] for r in done)
    return min(r["epochs"] for r in done if r["val_accuracy"] >= best - tolerance)


def finetune_epochs(args: argparse.Namespace) -> tuple[int, str]:
    if args.finetune_epochs is not None:
        return args.finetune_epochs, "given by --finetune-epochs"
    path = out_path(args, "_pilot.json")
    rows = [r for r in read_rows(path) if r.get("model") == args.model]
    rows = [r for r in rows if r.get("limit") == args.limit]
    choice = pilot_choice(rows, args.pilot_tolerance)
    if choice is None:
        raise SystemExit(
            f"no --finetune-epochs and no pilot for {args.model} in {path}: run "
            f"`python bench/dbp_table.py --pilot --model {args.model} ...` first, or pass "
            "--finetune-epochs N"
        )
    tried = sorted(r["epochs"] for r in rows)
    return choice, f"chosen by the pilot in {path.name} from {tried} epochs"


def run_pilot(args: argparse.Namespace) -> int:
    """DBP at the main budget (seed: the first), pruned once without fine-tuning, then
    fine-tuned for each of ``--pilot-epochs`` from that same model, test accuracy recorded
    per epoch; the choice reads the held-out split only."""
    path = out_path(args, "_pilot.json")
    bench = Bench(args)
    seed, budget = args.seeds[0], args.main_budget
    rows = read_rows(path)
    done = {r["epochs"] for r in rows if (r["model"], r["limit"]) == (args.model, args.limit)}
    todo = [e for e in args.pilot_epochs if e not in done]
    log(f"pilot: dbp at {budget}, seed {seed}; epochs {todo} to go")
    if not todo:
        write_pilot_report(args, rows)
        return 0
    torch.manual_seed(seed)
    t = time.time()
    with LatencyTable(table_path(args)) as table:
        pruned, extra = run_pruner(bench, "dbp", budget, seed, [], table, 0)
    log(f"pilot: pruned ({len(extra['removed_blocks'])} blocks) in {time.time() - t:.0f} s, "
        f"accuracy before fine-tuning {extra['accuracy']:.4f}")  # fmt: skip
    for epochs in todo:
        t = time.time()
        torch.manual_seed(seed)
        student = copy.deepcopy(pruned)
        data = bench.bundle(seed)
        tap = TestTap(data.val, bench.test, student)
        fit = finetune(student, bench.teacher, data.train, tap, epochs, lr=args.lr, progress=False)
        row = clean({
            "model": args.model, "limit": args.limit, "method": "dbp", "budget": budget,
            "seed": seed, "epochs": epochs, "val_accuracy": max(
                (h.val.accuracy for h in fit.history if h.val is not None), default=None),
            "test_accuracy": evaluate(student, bench.test).accuracy,
            "test_accuracy_per_epoch": tap.accuracy,
            "val_accuracy_per_epoch": [h.val.accuracy if h.val else None for h in fit.history],
            "best_epoch": fit.best_epoch, "stopped_early": fit.stopped_early,
            "accuracy_before_ft": extra["accuracy"], "removed_blocks": extra["removed_blocks"],
            "seconds": time.time() - t, "seconds_per_epoch": (time.time() - t) / max(1, len(
                fit.history)), "smoke": args.limit is not None, **meta(args),
        })  # fmt: skip
        rows.append(row)
        write_rows(path, rows)
        write_pilot_report(args, rows)
        log(f"pilot: {epochs} epoch(s): val {row['val_accuracy']:.4f}, test "
            f"{row['test_accuracy']:.4f} in {row['seconds']:.0f} s")  # fmt: skip
    return 0


def write_pilot_report(args: argparse.Namespace, rows: list[dict]) -> None:
    rows = sorted((r for r in rows if r.get("model") == args.model and
                   r.get("limit") == args.limit), key=lambda r: r["epochs"])  # fmt: skip
    smoke = any(r.get("smoke") for r in rows)
    choice = pilot_choice(rows, args.pilot_tolerance)
    lines = [
        f"# {'SMOKE RUN (not a result): ' if smoke else ''}how many fine-tuning epochs: "
        f"{args.model}, dbp at {rows[0]['budget'] if rows else args.main_budget}",
        "",
        *(f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows)),
        *(f"- {r['epochs']} epoch(s): {r['date']}, load before {r['load_before']}" for r in rows),
        "",
        "The same pruned model (no fine-tuning yet) fine-tuned by distillation for each "
        "number of epochs, from the start, as the table's runs are (cosine schedule over "
        "the epochs given, best held-out epoch kept, early stop after 2 epochs without "
        "gain). Held-out: the seeded split of the training set; test: read by nothing.",
        "",
        "| epochs | held-out acc | test acc | test acc per epoch | best epoch | s per epoch |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['epochs']} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
            + " ".join(f"{a:.4f}" for a in r["test_accuracy_per_epoch"])
            + f" | {r['best_epoch']} | {r['seconds_per_epoch']:.0f} |"
            for r in rows
        ),
        "",
        (
            f"Chosen: **{choice}** epoch(s), the fewest whose held-out accuracy is within "
            f"{args.pilot_tolerance * 100:.1f} points of the best of those tried."
            if choice is not None
            else "No epochs tried yet."
        )
        + (
            " It is the most tried: accuracy may still be moving; try more epochs."
            if choice is not None and choice == max(r["epochs"] for r in rows)
            else ""
        ),
        "",
    ]
    out = out_path(args, "_pilot.md")
    out.write_text("\n".join(lines))


# ---------------------------------------------------------------------------- the report


def mean_sd(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, statistics.stdev(values) if len(values) > 1 else float("nan")


def fmt(m: float, sd: float, digits: int = 4, scale: float = 1.0, unit: str = "") -> str:
    text = f"{m * scale:.{digits}f}{unit}"
    return text + (f" ± {sd * scale:.{digits}f}" if math.isfinite(sd) else "")


def aggregate(rows: list[dict], batches: list[int]) -> list[dict]:
    """One point per (method, budget): means and sds over the seeds run."""
    done = [r for r in rows if r["method"] != "baseline" and ok(r)]
    groups: dict[tuple, list[dict]] = {}
    for r in done:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    points = []
    for (method, budget), rs in groups.items():
        p = {"method": method, "budget": budget, "n": len(rs), "seeds": [r["seed"] for r in rs]}
        for k in ["accuracy", "macs_ratio", "params_ratio", "seconds"] + [
            f"speedup_b{b}" for b in batches
        ]:
            p[k], p[k + "_sd"] = mean_sd([r[k] for r in rs])
        points.append(p)
    return sorted(points, key=lambda p: (-p["budget"], METHODS.index(p["method"])))


def goal_lines(points: list[dict], base_acc: float, main: float, batches, within) -> list[str]:
    lines = ["## The goals of issue 14, computed from the rows", ""]
    dbp = next((p for p in points if p["method"] == "dbp" and p["budget"] == main), None)
    if dbp is None:
        lines.append(f"1. DBP at budget {main}: no row yet.")
    else:
        lost = base_acc - dbp["accuracy"]
        few = f" (only {dbp['n']} seed(s); the issue asks for 3)" if dbp["n"] < 3 else ""
        for b in batches:
            sp = dbp[f"speedup_b{b}"]
            met = sp >= GOAL_SPEEDUP and lost <= GOAL_LOSS
            lines.append(
                f"1. DBP at budget {main}, batch {b}: {sp:.2f}x measured with "
                f"{lost * 100:.2f} points lost (mean of {dbp['n']}){few}; goal >= "
                f"{GOAL_SPEEDUP}x with <= {GOAL_LOSS * 100:.1f} point lost: "
                f"**{'met' if met else 'missed'}**" + ("" if met else f" ({why_missed(sp, lost)})")
            )
    lines.append("")
    for b in batches:
        key_ = f"speedup_b{b}"
        comps = at_equal_accuracy(points, key_, FILTER_METHODS, "dbp", within)
        if not comps:
            lines.append(f"2. Batch {b}: no filter-method and DBP rows to compare yet.")
            continue
        ratios = [c["ratio"] for c in comps]
        met = all(math.isfinite(r) and r >= GOAL_RATIO for r in ratios)
        lines.append(
            f"2. Batch {b}: DBP at least {GOAL_RATIO}x the measured speed-up of the filter "
            f"method at equal accuracy (DBP's mean accuracy at most {within * 100:.1f} points "
            f"below): {sum(math.isfinite(r) and r >= GOAL_RATIO for r in ratios)} of "
            f"{len(ratios)} comparisons hold; **{'met' if met else 'missed'}**"
        )
        for c in comps:
            f, d = c["filter"], c["dbp"]
            lines.append(
                f"   - {f['method']} at {f['budget']} ({f['accuracy']:.4f}, {f[key_]:.2f}x): "
                + (
                    f"dbp at {d['budget']} ({d['accuracy']:.4f}, {d[key_]:.2f}x), "
                    f"ratio {c['ratio']:.2f}x"
                    if d
                    else "no DBP point is as accurate"
                )
            )
    return lines + [""]


def why_missed(speedup: float, lost: float) -> str:
    parts = []
    if speedup < GOAL_SPEEDUP:
        parts.append(f"speed-up {speedup:.2f}x < {GOAL_SPEEDUP}x")
    if lost > GOAL_LOSS:
        parts.append(f"{lost * 100:.2f} points lost > {GOAL_LOSS * 100:.1f}")
    return "; ".join(parts)


def _train_threads(runs: list[dict], settings: dict) -> str:
    """Threads the runs pruned and fine-tuned with (rows from before --train-threads: --threads)."""
    seen = sorted({r.get("train_threads") or settings.get("threads") for r in runs}, key=str)
    return " or ".join(map(str, seen)) + (" (per run in the json)" if len(seen) > 1 else "")


def _warned(runs: list[dict], text: str) -> int:
    """How many runs have a warning that contains ``text``."""
    return sum(any(text in w for w in r.get("warnings") or []) for r in runs)


def header_lines(args, rows: list[dict], base: dict | None) -> list[str]:
    runs = [r for r in rows if r["method"] != "baseline"]
    smoke = any(r.get("smoke") for r in rows)
    loads = [r["load_before"][0] for r in runs if r.get("load_before")]
    settings = (base or {}).get("settings", {})
    commands = sorted({r["command"] for r in rows if "command" in r})
    dates = sorted(r["date"] for r in rows if "date" in r)
    epochs = sorted({r["finetune_epochs"] for r in runs})
    pilot = out_path(args, "_pilot.md")
    chosen = list(dict.fromkeys(r["finetune_epochs_chosen_by"] for r in runs if r.get(
        "finetune_epochs_chosen_by")))  # fmt: skip
    lines = [
        f"# {'SMOKE RUN (tiny data, not a result): ' if smoke else ''}block vs filter pruning "
        f"over seeds, {settings.get('model', args.model)} on {settings.get('data', args.data)}",
        "",
        *(f"- command: `{c}`" for c in commands),
        f"- dates: {dates[0]} to {dates[-1]}" if dates else "- dates: none yet",
        *(f"- machine: {m}" for m in sorted({r["machine"] for r in rows if "machine" in r})),
        f"- load (1 min) before the runs: {min(loads):.2f} to {max(loads):.2f}"
        if loads
        else "- load: no runs yet",
        f"- runs whose baseline profile failed its checks (a busy machine): "
        f"{_warned(runs, 'profile failed')} of {len(runs)}",
        f"- runs whose baseline ran at another speed at the end than in its profile (a load "
        f"that held steady through the profile): "
        f"{_warned(runs, 'speed changed')} of {len(runs)}; their speed-ups are timed interleaved and hold, their block choice "
        f"used the profile's proportions",
        f"- torch threads: {settings.get('threads')} for timing, "
        f"{_train_threads(runs, settings)} for pruning and fine-tuning; timing budget "
        f"{settings.get('timing_budget_s')} s per measurement",
    ]
    if base:
        lines.append(
            f"- baseline ({settings.get('checkpoint')}): test accuracy {base['accuracy']:.4f} "
            f"on {base['test_n']} test images"
            + (f" (a smoke subset; --limit {settings['limit']})" if settings.get("limit") else "")
        )
    lines += [
        f"- fine-tuning: {', '.join(map(str, epochs)) or '?'} epoch(s) of distillation from "
        f"the baseline, lr {settings.get('lr')}; the count "
        + (", ".join(chosen) or "(not recorded)")
        + (f"; the pilot: [{pilot.name}]({pilot.name})" if pilot.is_file() else ""),
        *(
            [
                f"- block methods: {settings['iterative_rounds']} rounds, rescored between "
                "them, fine-tuned "
                + ("after each" if settings.get("iterative_finetune") else "after the last only")
            ]
            if settings.get("iterative_rounds")
            else []
        ),
        "- filter methods matched to: "
        + (
            "the MACs DBP reached at the same budget and seed"
            if settings.get("match") == "macs"
            else "the latency budget (hfp); the MACs hfp reached (tp-*)"
        ),
        "",
    ]
    return lines


def write_report(args: argparse.Namespace, rows: list[dict]) -> None:
    base = next((r for r in rows if r["method"] == "baseline"), None)
    batches = (base or {}).get("settings", {}).get("batches", args.batches)
    points = aggregate(rows, batches)
    base_acc = base["accuracy"] if base else math.nan
    lines = header_lines(args, rows, base)
    lines += [
        "| method | budget | seeds | accuracy | vs baseline (points) | "
        + " | ".join(f"speed-up b{b}" for b in batches)
        + " | MACs | params | minutes per run |",
        "|---" * (8 + len(batches)) + "|",
    ]
    for p in points:
        lines.append(
            f"| {p['method']} | {p['budget']} | {p['n']} | {fmt(p['accuracy'], p['accuracy_sd'])} "
            f"| {(p['accuracy'] - base_acc) * 100:+.2f} | "
            + " | ".join(
                fmt(p[f"speedup_b{b}"], p[f"speedup_b{b}_sd"], 2, unit="x") for b in batches
            )
            + f" | {p['macs_ratio']:.3f} | {p['params_ratio']:.3f} | {p['seconds'] / 60:.1f} |"
        )
    lines += [
        "",
        "Mean ± sample sd over the seeds run (no sd with one seed). One standard error of a "
        f"single accuracy on {base['test_n'] if base else '?'} test images is about "
        + (
            f"{(base_acc * (1 - base_acc) / base['test_n']) ** 0.5 * 100:.2f} points."
            if base
            else "? points."
        ),
        "",
    ]
    lines += goal_lines(points, base_acc, args.main_budget, batches, args.equal_within)
    png = out_path(args, ".png")
    plt = pyplot()
    if plt is None:
        note = "matplotlib is not installed in this environment: the plot was skipped"
        if not _SAID:
            log(note)
            _SAID.add(note)
        lines += [f"({note}; `pip install 'prunerd[bench]'` and run --report-only.)", ""]
    elif points:
        plot(plt, points, base_acc, batches, png)
        lines += [f"![accuracy against measured speed-up]({png.name})", ""]
    lines += run_lines(rows, batches)
    out_path(args, ".md").write_text("\n".join(lines))


def run_lines(rows: list[dict], batches: list[int]) -> list[str]:
    lines = [
        "## Every run",
        "",
        "| method | budget | seed | accuracy | before FT | "
        + " | ".join(f"b{b}" for b in batches)
        + " | MACs | blocks removed | s | load | note |",
        "|---" * (10 + len(batches)) + "|",
    ]
    for r in rows:
        if r["method"] == "baseline":
            continue
        if not ok(r):
            lines.append(
                f"| {r['method']} | {r['budget']} | {r['seed']} | failed | | "
                + " | ".join("" for _ in batches)
                + f" | | | {r['seconds']:.0f} | | {r['error'][:200]} |"
            )
            continue
        notes = list(r.get("warnings") or [])
        if r.get("matched_to"):
            notes.insert(0, f"MACs target {r['target_macs']:.3f} ({r['matched_to']})")
        note = "; ".join(notes)
        removed = r.get("removed_blocks")
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['seed']} | {r['accuracy']:.4f} | "
            f"{r['accuracy_before_ft']:.4f} | "
            + " | ".join(f"{r[f'speedup_b{b}']:.2f}x" for b in batches)
            + f" | {r['macs_ratio']:.3f} | {'' if removed is None else len(removed)} | "
            f"{r['seconds']:.0f} | {r['load_before'][0]:.2f} | {note[:300]} |"
        )
    return lines + [""]


def plot(plt, points: list[dict], base_acc: float, batches: list[int], png: Path) -> None:
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    markers = dict(zip(METHODS, "osv^<>pD*X", strict=True))
    for ax, b in zip(axes[0], batches):
        k = f"speedup_b{b}"
        for m in METHODS:
            ps = sorted((p for p in points if p["method"] == m), key=lambda p: p[k])
            if not ps:
                continue
            sd = [0.0 if not math.isfinite(p[f"{k}_sd"]) else p[f"{k}_sd"] for p in ps]
            ysd = [0.0 if not math.isfinite(p["accuracy_sd"]) else p["accuracy_sd"] for p in ps]
            ax.errorbar([p[k] for p in ps], [p["accuracy"] for p in ps], xerr=sd, yerr=ysd,
                        marker=markers[m], capsize=3, label=m)  # fmt: skip
            for p in ps:
                ax.annotate(f"{p['budget']}", (p[k], p["accuracy"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)  # fmt: skip
        ax.axhline(base_acc, color="grey", ls="--", lw=0.8, label="baseline")
        ax.set_xlabel(f"measured speed-up, batch {b}")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("accuracy against measured speed-up (labels: budget; bars: ±1 sd over seeds)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        rows = read_rows(out_path(args, ".json"))
        if not rows:
            raise SystemExit(f"no rows in {out_path(args, '.json')}")
        write_report(args, rows)
        pilot = read_rows(out_path(args, "_pilot.json"))
        if pilot:
            write_pilot_report(args, pilot)
        log(f"wrote {out_path(args, '.md')}")
        return 0
    retain_freed_memory()
    if args.train_threads:
        torch.set_num_threads(args.train_threads)
    return run_pilot(args) if args.pilot else run_table(args)


if __name__ == "__main__":
    sys.exit(main())
