"""Block pruning against filter pruning on one machine, in one run.

    python bench/head_to_head.py [--levels 0.7 0.5 0.35] [--epochs 3] [--limit 8000]

On Fashion-MNIST with the cached resnet56 baseline, for each level:
- dbp: blocks removed to that fraction of the batch-1 latency;
- hfp: filters removed to that ratio of the MACs;
- tp-magnitude: Torch-Pruning's MagnitudePruner (L1 group importance, global
  ranking, no channel rounding: the configuration of Torch-Pruning's own
  ResNet-56 benchmark), its pruning ratio bisected to the MACs HFP reached.
  Its ``round_to=8`` is not used: on 16-channel layers it rounds a 10% ratio
  to half the channels, so MACs jump (0.52 at ratio 0.1, uniform) and no ratio
  lands on HFP's MACs;
- dbp+hfp: blocks then filters, to that fraction of the latency, the split
  chosen by the pipeline from what each pass saves on this device;
- dbp+hfp-share0.5: the same with ``--depth-share 0.5`` (the width pass takes
  the square root of the budget, at most halfway to its floor);
all fine-tuned the same way (KD from the baseline, same epochs and data). For
each: accuracy, MACs and parameter ratios (torch's FLOP counter), and the
speed-up measured on this CPU at batch 1 and 16 (baseline and pruned timed
interleaved). Writes bench/results/head_to_head.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from compare_methods import (  # bench/ is on sys.path when run as a script
    at_equal_accuracy,
    cost_ratios,
    finetune,
    machine,
    pyplot,
    speedups,
    tp_prune,
    uptime,
    utc_now,
)

from profiler import load_model, read_checkpoint, retain_freed_memory
from pruner import (
    PruneConfig,
    PrunePlan,
    apply_plan,
    cached_baseline,
    evaluate,
    first_samples,
    load_data,
    load_pruned,
    prune_checkpoint,
)

OUT = Path("bench/results")
FILTERS = ("hfp", "tp-magnitude")


def tp_magnitude(teacher, spec, target_macs: float):
    """Torch-Pruning's magnitude pruner, ratio bisected so MACs land at ``target_macs``."""
    return tp_prune(teacher, spec, target_macs, "magnitude")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", nargs="+", type=float, default=[0.7, 0.5, 0.35])
    ap.add_argument("--methods", nargs="+", default=["dbp", "hfp", "tp-magnitude", "dbp+hfp"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=8000)
    ap.add_argument("--test-samples", type=int, default=1500)
    ap.add_argument("--timing-budget", type=float, default=4.0)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--work", type=Path, default=Path("/tmp/prunerd-h2h"))
    ap.add_argument(
        "--report-only", action="store_true",
        help="rewrite the .md and .png from bench/results/head_to_head.json without running",
    )  # fmt: skip
    ap.add_argument(
        "--merge", action="store_true",
        help="replace only the rows of the levels and methods given in head_to_head.json",
    )  # fmt: skip
    args = ap.parse_args()
    if args.report_only:
        write(json.loads((OUT / "head_to_head.json").read_text()))
        return 0
    retain_freed_memory()
    torch.manual_seed(0)
    t0 = time.time()
    load_before = uptime()
    ckpt = cached_baseline("resnet56", "fashion-mnist", 6, lr=0.05, limit=8000)
    teacher = load_model("resnet56", checkpoint=ckpt).eval()
    spec = read_checkpoint(ckpt).spec
    data = load_data("fashion-mnist", batch_size=128, seed=0, limit=args.limit)
    test = first_samples(data.test, args.test_samples)
    base_acc = evaluate(teacher, test).accuracy
    # Timed in the form every pruned model here takes (traced by torch.fx), so that tracing's
    # own saving (about 5% on resnet56, CPU batch 1) is not counted as pruning.
    timed_base = apply_plan(teacher, PrunePlan(spec)).eval()
    rows: list[dict] = []
    this = {
        "command": f"python {' '.join(sys.argv)}",
        "date": utc_now(),
        "load_before": load_before,
        "machine": machine("cpu"),
    }
    settings = {k: getattr(args, k) for k in ("epochs", "limit", "test_samples", "batches")}
    run = {**this, "settings": settings, "baseline_accuracy": base_acc, "rows": rows}
    if args.merge:
        run = json.loads((OUT / "head_to_head.json").read_text())
        if run["settings"] != settings:
            raise SystemExit(f"--merge needs the settings of the first run: {run['settings']}")
        redo = {(m, lv) for m in args.methods for lv in args.levels}
        run["rows"] = rows = [r for r in run["rows"] if (r["method"], r["level"]) not in redo]
        run.setdefault("reruns", []).append(this)
        t0 -= run["minutes"] * 60
    hfp_macs: dict[float, float] = {}
    common = dict(
        model="resnet56", checkpoint=str(ckpt), data="fashion-mnist", epochs=args.epochs,
        limit=args.limit, test_samples=args.test_samples, timing_budget_s=args.timing_budget,
        calibration_samples=1000, heldout_samples=500, export=False,
    )  # fmt: skip
    for level in args.levels:
        for method in args.methods:
            t = time.time()
            print(f"== {method} at {level}", flush=True)
            if method == "tp-magnitude":
                target = hfp_macs.get(level, level)
                model, ratio, pr = tp_magnitude(teacher, spec, target)
                acc_before = evaluate(model, test).accuracy
                finetune(model, teacher, data.train, data.val, args.epochs, progress=False)
                acc = evaluate(model, test).accuracy
                note = f"pruning_ratio {pr:.3f}"
            else:
                kw = {"target_macs": level} if method == "hfp" else {"budget": level}
                if method == "dbp+hfp-share0.5":
                    kw["depth_share"] = 0.5
                out = args.work / f"{method}_{level}"
                name = method.split("-share")[0]
                report = prune_checkpoint(
                    PruneConfig.from_flat(dict(out=str(out), method=name, **common, **kw))
                )
                model = load_pruned(report.checkpoint_path)
                acc, acc_before = report.pruned.accuracy, report.accuracy_before_finetune
                split = [report.split.reason] if report.split else []
                note = "; ".join([*split, *report.warnings])
                if method == "hfp":
                    hfp_macs[level] = report.width.macs_ratio
            ratio, params = cost_ratios(model, teacher, spec)
            sp = speedups(timed_base, model, spec, args.batches, args.timing_budget)
            row = {
                "method": method, "level": level, "accuracy": acc, "accuracy_before_ft": acc_before,
                "macs_ratio": ratio, "params_ratio": params,
                **{f"speedup_b{b}": sp[b]["speedup"] for b in args.batches},
                **{f"latency_b{b}_ms": sp[b]["pruned_s"] * 1e3 for b in args.batches},
                "seconds": time.time() - t, "note": note,
            }  # fmt: skip
            print(row, flush=True)
            rows.append(row)
            run["minutes"] = (time.time() - t0) / 60
            (OUT / "head_to_head.json").write_text(json.dumps(run, indent=1))
    write(run)
    return 0


def plot(plt, rows: list[dict], methods: list[str], base_acc: float, se: float, batches) -> None:
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5))
    markers = {"dbp": "o", "hfp": "s", "tp-magnitude": "^", "dbp+hfp": "D", "dbp+hfp-share0.5": "v"}
    for ax, b in zip(axes, batches):
        for m in methods:
            pts = sorted(
                (r[f"speedup_b{b}"], r["accuracy"], r["level"]) for r in rows if r["method"] == m
            )
            if not pts:
                continue
            xs, ys, levels = zip(*pts)
            # Error bars: one standard error of accuracy on this many test images.
            ax.errorbar(xs, ys, yerr=se, marker=markers.get(m, "x"), capsize=3, label=m)
            for x, y, lv in pts:
                ax.annotate(f"{lv}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(base_acc, color="grey", ls="--", lw=0.8, label="baseline")
        ax.set_xlabel(f"measured speed-up, CPU batch {b}")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        "resnet56 on Fashion-MNIST: block vs filter pruning (labels: level; bars: ±1 s.e.)"
    )
    fig.tight_layout()
    fig.savefig(OUT / "head_to_head.png", dpi=110)


def write(run: dict) -> None:
    order = ["dbp", "hfp", "tp-magnitude", "dbp+hfp", "dbp+hfp-share0.5"]
    rows = sorted(run["rows"], key=lambda r: (-r["level"], order.index(r["method"])))
    methods = [m for m in order if any(r["method"] == m for r in rows)]
    base_acc, cfg = run["baseline_accuracy"], run["settings"]
    se = (base_acc * (1 - base_acc) / cfg["test_samples"]) ** 0.5
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: head_to_head.png not redrawn", file=sys.stderr)
    else:
        plot(plt, rows, methods, base_acc, se, cfg["batches"])
    lines = [
        "# Block pruning vs filter pruning, resnet56 on Fashion-MNIST, CPU",
        "",
        f"- command: `{run['command']}`",
        f"- date: {run['date']}",
        f"- machine: {run['machine']}",
        f"- load before: `{run['load_before']}`; wall time {run['minutes']:.1f} min",
        *(
            f"- rows re-run by `{r['command']}` on {r['date']} (load before `{r['load_before']}`)"
            for r in run.get("reruns", [])
        ),
        f"- baseline accuracy (first {cfg['test_samples']} test images): {base_acc:.4f}; "
        f"fine-tuning {cfg['epochs']} epoch(s) of KD on {cfg['limit']} train images for every "
        "method",
        "",
        "| method | level | accuracy | before FT | MACs | params | speed-up b1 | speed-up b16 | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['level']} | {r['accuracy']:.4f} | {r['accuracy_before_ft']:.4f} | "
            f"{r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | "
            + " | ".join(f"{r.get(f'speedup_b{b}', float('nan')):.2f}x" for b in cfg["batches"])
            + f" | {r['note'][:200]} |"
        )
    lines += [
        "",
        "Speed-ups are medians of the pruned model timed interleaved with the baseline. "
        f"Accuracy is on {cfg['test_samples']} test images: one standard error is about "
        f"{se * 100:.1f} points, so rows closer than about {2 * se * 100:.0f} points are not "
        "told apart by this test set. MACs and parameters are counted by torch's "
        "FlopCounterMode on the pruned model, independently of HFP's own counter.",
        *(
            [
                "",
                "dbp+hfp chooses its split from the latency each pass saves per multiplication "
                "removed on the device; dbp+hfp-share0.5 is the fixed rule it used before "
                "(`--depth-share 0.5`: the width pass takes the square root of the budget, at "
                "most halfway to its floor).",
            ]
            if any(r["method"] == "dbp+hfp-share0.5" for r in rows)
            else []
        ),
        "",
        "## At equal accuracy",
        "",
        "For each filter-pruned model, the fastest DBP model whose accuracy is at most "
        "0.3 points lower (or higher), and how much faster it is:",
        "",
        "| filter method | level | accuracy | speed-up | DBP level | DBP accuracy | DBP speed-up "
        "| DBP / filter |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in cfg["batches"]:
        key = f"speedup_b{b}"
        for c in at_equal_accuracy(rows, f"speedup_b{b}", FILTERS):
            f, d = c["filter"], c["dbp"]
            dbp_cells = (
                f"{d['level']} | {d['accuracy']:.4f} | {d[key]:.2f}x | **{c['ratio']:.2f}x**"
                if d
                else "none as accurate | | |"
            )
            lines.append(
                f"| {f['method']} (b{b}) | {f['level']} | {f['accuracy']:.4f} | {f[key]:.2f}x | "
                + dbp_cells
                + " |"
            )
    comps = [c for b in cfg["batches"] for c in at_equal_accuracy(rows, f"speedup_b{b}", FILTERS)]
    ratios = [c["ratio"] for c in comps if c["dbp"]]
    held = sum(r >= 1.2 for r in ratios)
    lines += [
        "",
        f"The claim (at equal accuracy, block pruning is at least 1.2x faster than filter "
        f"pruning) holds in {held} of {len(comps)} comparisons"
        + (f"; the smallest ratio is {min(ratios):.2f}x." if ratios else "."),
        "",
        "![accuracy vs speed-up](head_to_head.png)",
        "",
    ]
    (OUT / "head_to_head.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
