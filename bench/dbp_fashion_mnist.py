"""DBP on Fashion-MNIST with resnet56: budgets, accuracy, speed-up, prediction, baselines.

One command reproduces bench/results/dbp_fashion_mnist.md (run it on a quiet machine):

    python bench/dbp_fashion_mnist.py

Steps: train (or reuse from the cache) the baseline with ``cached_baseline``;
for each latency budget (fraction of the baseline's batch-1 CPU latency) run
the prune pipeline with DBP, then with random and lowest-L1-norm removal of the
same number of blocks and the same fine-tuning; then compare the latency the
table predicts with the latency measured for 20 random removal sets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import time
from pathlib import Path

import torch

from profiler import (
    LatencyTable,
    TimingOptions,
    device_info,
    load_model,
    measure,
    profile_model,
    read_checkpoint,
    retain_freed_memory,
)
from pruner import (
    PruneConfig,
    PrunePlan,
    RemovedBlock,
    apply_plan,
    cached_baseline,
    prune_checkpoint,
)
from pruner.depth import candidates_from_profile, predict_latency

ROOT = Path(__file__).resolve().parent


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--budgets",
        type=float,
        nargs="*",
        default=[0.7, 0.5, 0.35],
        help="latency fractions to prune to (none: only the prediction study)",
    )
    p.add_argument("--methods", nargs="+", default=["dbp", "random", "l1"])
    p.add_argument("--baseline-epochs", type=int, default=6)
    p.add_argument("--baseline-lr", type=float, default=0.05)
    p.add_argument("--limit", type=int, default=8000, help="train and test samples (0: all)")
    p.add_argument(
        "--prune-limit",
        type=int,
        default=None,
        help="train and test samples for pruning and fine-tuning (default: --limit)",
    )
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    p.add_argument("--test-samples", type=int, default=1500)
    p.add_argument("--calibration-samples", type=int, default=1000)
    p.add_argument("--heldout-samples", type=int, default=500)
    p.add_argument("--latency-threads", type=int, default=1)
    p.add_argument("--timing-budget", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--random-sets", type=int, default=20)
    p.add_argument("--runs", default="/tmp/prunerd-bench-dbp", help="pipeline output dirs")
    p.add_argument(
        "--table",
        default=None,
        help="latency table (default: a fresh one in --runs, so every run measures anew)",
    )
    p.add_argument("--out", default=str(ROOT / "results" / "dbp_fashion_mnist.md"))
    return p.parse_args()


def prediction_study(ckpt: str, args: argparse.Namespace, log: list[str]) -> list[dict]:
    """Predicted (table) vs measured latency of random removal sets, batch 1."""
    spec = read_checkpoint(ckpt).spec
    model = load_model(spec, checkpoint=ckpt)
    with LatencyTable(args.table) as table:
        profile = profile_model(
            model,
            spec,
            table=table,
            threads=args.latency_threads,
            options=TimingOptions(budget_s=args.timing_budget),
        )
    cands, rest, _ = candidates_from_profile(profile, {})
    removable = [c for c in cands if c.removable]
    rng = random.Random(0)
    x = torch.randn(spec.input_shape(1), generator=torch.Generator().manual_seed(0))
    fp = device_info("cpu").fingerprint
    rows = []
    torch.set_num_threads(args.latency_threads)
    # The reference is the traced graph with nothing removed, as in the profile: the pruned
    # models are graphs too, and eager Python frees intermediates at other times.
    base = apply_plan(model, PrunePlan(spec)).eval()
    for i in range(args.random_sets):
        while True:
            k = rng.randint(1, len(removable) - 3)
            chosen = rng.sample(removable, k)
            names = {c.name for c in chosen}
            stages = {c.stage for c in cands}
            if all(any(c.stage == s and c.name not in names for c in cands) for s in stages):
                break
        by_name = {t.block.name: t.block for t in profile.blocks}
        plan = PrunePlan(
            spec,
            tuple(
                RemovedBlock(t.block.name, by_name[t.block.name].replacement)
                for t in profile.blocks
                if t.block.name in names
            ),
        )
        pruned = apply_plan(model, plan).eval()
        predicted = predict_latency(rest, cands, names)
        mb, mp = measure(
            [lambda: base(x), lambda p=pruned: p(x)],
            "cpu",
            TimingOptions(budget_s=args.timing_budget),
            fp,
        )
        rows.append(
            {
                "set": i,
                "removed": len(names),
                "predicted_s": predicted,
                "measured_s": mp.median_s,
                "baseline_now_s": mb.median_s,
                "error": predicted / mp.median_s - 1,
                # The same comparison with the baseline re-measured alongside: load drift cancels.
                "error_rel": (predicted / profile.end_to_end_s) / (mp.median_s / mb.median_s) - 1,
            }
        )
        log.append(f"random set {i}: {rows[-1]}")
    return rows


def main() -> None:
    args = parse_args()
    args.limit = args.limit or None  # 0: the whole dataset
    retain_freed_memory()  # as the prunerd command does
    started = time.time()
    if args.table is None:
        # A fresh table: pieces timed under other loads on other days must not mix in.
        args.table = str(Path(args.runs) / "latency.sqlite")
        Path(args.runs).mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(args.table + suffix).unlink(missing_ok=True)
    load_before = uptime()
    info = device_info("cpu", threads=args.latency_threads)
    t0 = time.time()
    ckpt = str(
        cached_baseline(
            "resnet56",
            "fashion-mnist",
            args.baseline_epochs,
            lr=args.baseline_lr,
            limit=args.limit,
            progress=False,
        )
    )
    baseline_meta = read_checkpoint(ckpt).meta or {}
    baseline_s = time.time() - t0

    runs: dict[tuple[float, str], dict] = {}
    log: list[str] = []
    for budget in args.budgets:
        count = None
        for method in args.methods:
            out = Path(args.runs) / f"{method}_{budget}"
            config = PruneConfig.from_flat(
                dict(
                    model="resnet56",
                    checkpoint=ckpt,
                    data="fashion-mnist",
                    out=str(out),
                    budget=budget,
                    method=method,
                    epochs=args.epochs,
                    limit=args.prune_limit or args.limit,
                    test_samples=args.test_samples,
                    calibration_samples=args.calibration_samples,
                    heldout_samples=args.heldout_samples,
                    latency_threads=args.latency_threads,
                    timing_budget_s=args.timing_budget,
                    table=args.table,
                    remove_count=count if method in ("random", "l1") else None,
                    max_rounds=1 if method in ("random", "l1") else 3,
                )
            )
            t = time.time()
            report = prune_checkpoint(config).to_dict()
            report["wall_s"] = time.time() - t
            runs[(budget, method)] = report
            if method == "dbp":
                count = len(report["removed_blocks"])
            log.append(
                f"{method} {budget}: {json.dumps({k: report[k] for k in ('removed_blocks', 'speedup', 'budget_met')})}"
            )
            print(log[-1], flush=True)

    rows = prediction_study(ckpt, args, log) if args.random_sets else []
    write(args, info, ckpt, baseline_meta, baseline_s, runs, rows, load_before, started)


def budgets_sections(runs: dict) -> list[str]:
    """The DBP budgets table and the DBP vs random vs L1 table, as markdown lines."""
    L = [
        "## Budgets (DBP)",
        "",
        "| budget | budget ms | removed | predicted ms | measured ms | baseline ms (now) | speed-up | "
        "measured / budget | acc baseline | acc before FT | acc after FT | delta pts |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (budget, method), r in sorted(runs.items()):
        if method != "dbp":
            continue
        L.append(
            f"| {budget} | {r['budget_check_s'] * 1e3:.3f} | {len(r['removed_blocks'])} | "
            f"{r['predicted_latency_s'] * 1e3:.3f} | {r['pruned']['latency_s'] * 1e3:.3f} | "
            f"{r['baseline']['latency_s'] * 1e3:.3f} | {r['speedup']:.2f}x | "
            f"{r['pruned']['latency_s'] / r['budget_check_s']:.3f} | "
            f"{r['baseline']['accuracy']:.4f} | {r['accuracy_before_finetune']:.4f} | "
            f"{r['pruned']['accuracy']:.4f} | "
            f"{(r['pruned']['accuracy'] - r['baseline']['accuracy']) * 100:+.2f} |"
        )
    L += [
        "",
        "`budget ms` is the fraction times the baseline latency measured interleaved with the "
        "pruned model at the end of the run (`budget_check_s`); `predicted` is from the latency "
        "table at profile time.",
        "",
        "Removed blocks (DBP): "
        + "; ".join(
            f"{b}: {', '.join(r['removed_blocks'])}"
            for (b, m), r in sorted(runs.items())
            if m == "dbp"
        ),
        "",
        "## DBP vs random vs lowest-L1-norm removal (same number of blocks, same fine-tuning)",
        "",
        "| budget | method | removed | predicted ms | measured ms | speed-up | acc before FT | acc after FT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (budget, method), r in sorted(runs.items()):
        L.append(
            f"| {budget} | {method} | {len(r['removed_blocks'])} | "
            f"{r['predicted_latency_s'] * 1e3:.3f} | {r['pruned']['latency_s'] * 1e3:.3f} | "
            f"{r['speedup']:.2f}x | {r['accuracy_before_finetune']:.4f} | "
            f"{r['pruned']['accuracy']:.4f} |"
        )
    return L


def write(args, info, ckpt, meta, baseline_s, runs, rows, load_before, started) -> None:  # noqa: ANN001
    L = []
    cmd = "python bench/dbp_fashion_mnist.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if v is not None and k not in ("out", "runs", "table")
    )
    L += [
        "# DBP on Fashion-MNIST, resnet56, CPU batch 1",
        "",
        f"- command: `{cmd}`",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- machine: {info.name}, {os.cpu_count()} logical cores, latency threads "
        f"{args.latency_threads}, torch {torch.__version__}, heap policy "
        f"{info.details['allocator']}, {platform.platform()}",
        f"- load before: `{load_before}`; after: `{uptime()}` (shared machine: other jobs ran)",
        f"- total wall time: {(time.time() - started) / 60:.1f} min",
        "",
        "## Baseline",
        "",
        f"resnet56 trained by `cached_baseline('resnet56', 'fashion-mnist', {args.baseline_epochs}, "
        f"lr={args.baseline_lr}, limit={args.limit})`: {args.limit} train images (10% of them val) "
        f"and {args.limit} test images of 28x28, augmentation on; checkpoint `{ckpt}` "
        f"(train time here {baseline_s:.0f} s, 0 when cached). Test accuracy at training time "
        f"(all {args.limit} test images): {meta.get('test_accuracy', float('nan')):.4f}.",
        "",
    ]
    if runs:
        L += [
            f"Pruning runs load Fashion-MNIST with limit={args.prune_limit or args.limit} (a "
            "seeded subset of the 60k train and 10k test images; with a smaller limit than the "
            "baseline's the subsets differ from the baseline's, but train stays train and test "
            "stays test). All accuracies below, the baseline's included, are on the first "
            f"{args.test_samples} of those test images; fine-tuning: {args.epochs} epoch(s) of "
            "KD (T=4, alpha=0.9, lr 0.01) on that training split (90%; 10% val for early "
            f"stopping); DBP probes on {args.calibration_samples} train / "
            f"{args.heldout_samples} val images.",
            "",
        ]
        L += budgets_sections(runs)
    if rows:
        within = sum(abs(r["error"]) <= 0.05 for r in rows)
        within_rel = sum(abs(r["error_rel"]) <= 0.05 for r in rows)
        L += [
            "",
            f"## Predicted vs measured latency, {len(rows)} random removal sets",
            "",
            f"Within 5%: {within}/{len(rows)} (absolute: table prediction vs measured); "
            f"{within_rel}/{len(rows)} relative to the baseline re-measured alongside each set.",
            "",
            "Relative compares predicted / profiled end to end with measured / baseline (the "
            "traced graph with nothing removed, timed interleaved with each set): the machine's "
            "speed drifts between the profile and each measurement (see `baseline now`), and "
            "only the relative figure cancels that drift.",
            "",
            "| set | removed | predicted ms | measured ms | error | baseline now ms | error (relative) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            L.append(
                f"| {r['set']} | {r['removed']} | {r['predicted_s'] * 1e3:.3f} | "
                f"{r['measured_s'] * 1e3:.3f} | {r['error']:+.1%} | "
                f"{r['baseline_now_s'] * 1e3:.3f} | {r['error_rel']:+.1%} |"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(L) + "\n")
    (Path(args.runs) / "bench.json").write_text(
        json.dumps({f"{b}/{m}": r for (b, m), r in runs.items()} | {"random_sets": rows}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
