"""`prunerd prune MODEL (--checkpoint CKPT | --pretrained DATASET) --data DATA --budget F --out DIR`: latency-budgeted block pruning."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from pruner.config import (
    DATASETS,
    DEFAULT_METHOD,
    METHOD_INFO,
    METHODS,
    ConfigError,
    DepthOptions,
    PruneConfig,
    WidthOptions,
)

from .argtypes import (
    BUDGET_S_REFUSED,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    refused,
)
from .existing import check_output_dir
from .processes import add_process_arguments, relaunch
from .progress import progress_bar
from .render import _ms, _si, console
from .weights import add_weights_arguments

if TYPE_CHECKING:
    from pruner import PruneReport


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="remove blocks until a latency budget is met, then fine-tune and measure",
        description=(
            "Profile MODEL's blocks on this device, score them (by default: the held-out loss "
            "the model loses without each; --method dbp: DBP linear probes), remove the blocks "
            "that buy the most latency for the least loss until the predicted latency fits the "
            "budget, fine-tune with distillation from the unpruned model, and "
            "measure; if the measured latency is over the budget, remove more and repeat. "
            "Writes DIR/report.json, DIR/plan.json, DIR/pruned.pt and DIR/pruned.pt2."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="the model the checkpoint holds (e.g. resnet56)")
    add_weights_arguments(p, required=True)
    p.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help=f"dataset: {', '.join(DATASETS)} or module:callable",
    )
    p.add_argument("--data-root", metavar="DIR", help="directory of the dataset files")
    _add_goal_arguments(p.add_argument_group("what to meet"))
    _add_depth_arguments(p.add_argument_group("block pruning (dbp, removal, greedy, l1, random)"))
    _add_width_arguments(p.add_argument_group("filter pruning (hfp, and the +hfp methods)"))
    _add_training_arguments(p.add_argument_group("fine-tuning"))
    _add_measurement_arguments(p.add_argument_group("latency measurement"))
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="output directory")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out directory that already holds files (replacing them)",
    )
    out.add_argument("--json", action="store_true", help="print report.json on stdout")
    add_process_arguments(p)
    p.set_defaults(func=handle)


def _add_goal_arguments(g: argparse._ArgumentGroup) -> None:
    """The budget (latency) or the size targets, and the method that meets them."""
    budget = g.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget", type=fraction, metavar="FRACTION", help="fraction of the baseline latency"
    )
    budget.add_argument(
        "--budget-ms", type=positive_float, metavar="MS", help="latency budget in milliseconds"
    )
    g.add_argument(
        "--latency-batch-size",
        type=positive_int,
        default=1,
        metavar="B",
        help="batch size the budget is for (1)",
    )
    g.add_argument(
        "--target-macs", type=fraction, metavar="RATIO", help="hfp: keep this ratio of the MACs"
    )
    g.add_argument(
        "--target-params",
        type=fraction,
        metavar="RATIO",
        help="hfp: keep this ratio of the parameters",
    )
    g.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help="; ".join(f"{m.name}: {m.summary}" for m in METHOD_INFO.values())
        + f" (default {DEFAULT_METHOD})",
    )


def _add_depth_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--iterative",
        action="store_true",
        help="remove in rounds toward the budget, rescoring the pruned model after each",
    )
    g.add_argument(
        "--iterative-rounds",
        type=positive_int,
        default=DepthOptions.iterative_rounds,
        metavar="K",
        help=f"--iterative: how many rounds ({DepthOptions.iterative_rounds})",
    )
    g.add_argument(
        "--finetune-last",
        action="store_true",
        help="--iterative: fine-tune once, after the last round; the rounds before it only "
        "remove and rescore (one fine-tuning's cost instead of one per round)",
    )
    g.add_argument(
        "--calibration-samples",
        type=positive_int,
        default=DepthOptions.calibration_samples,
        metavar="N",
        help="dbp: training images the block probes are fit on "
        f"({DepthOptions.calibration_samples})",
    )
    g.add_argument(
        "--heldout-samples",
        type=positive_int,
        default=DepthOptions.heldout_samples,
        metavar="N",
        help="dbp, removal: validation images the probes (dbp) or the model without each "
        "block (removal) are scored on; a score's noise is about 1 / sqrt(N) of its "
        f"per-image spread ({DepthOptions.heldout_samples})",
    )


def _add_width_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--round-to",
        type=positive_int,
        default=8,
        metavar="K",
        help="channel counts are multiples of K (8)",
    )
    g.add_argument(
        "--sparsity-epochs",
        type=positive_int,
        default=1,
        metavar="E",
        help="epochs of training while the gates close (1)",
    )
    g.add_argument(
        "--max-fits",
        type=positive_int,
        default=WidthOptions().max_fits,
        metavar="N",
        help="under a latency budget: measure each width fit and refit one more than 3%% "
        f"over or under the budget, at most N fits ({WidthOptions().max_fits}; 1: trust the "
        "width-latency model)",
    )
    g.add_argument(
        "--depth-share",
        type=float,
        default=None,
        metavar="S",
        help="dbp+hfp, removal+hfp: share of the latency cut the block pass takes, in [0, 1] "
        "(default: chosen from the latency each pass saves per multiplication removed on this "
        "device)",
    )


def _add_training_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--epochs",
        type=non_negative_int,
        default=2,
        metavar="E",
        help="fine-tuning epochs per round (2)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=128,
        metavar="B",
        help="training batch size (128)",
    )
    g.add_argument("--lr", type=positive_float, default=0.01, help="fine-tuning lr (0.01)")
    g.add_argument("--limit", type=positive_int, metavar="N", help="use N train and N test samples")
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data's order and subsets and of --method random (0)",
    )


def _add_measurement_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--threads", type=positive_int, default=None, metavar="T", help="CPU threads")
    g.add_argument(
        "--device",
        default="cpu",
        help="where the model is profiled, fine-tuned and measured: cpu (default), cuda, cuda:N",
    )
    g.add_argument(
        "--cuda-graph",
        action="store_true",
        help="on CUDA, latency (profile, budget, final measurement) of the model replayed as "
        "one CUDA graph: how small-batch models are deployed on a GPU, and where block "
        "latencies add up",
    )
    g.add_argument(
        "--table",
        default=None,
        metavar="PATH",
        help="latency table (default ~/.cache/prunerd/latency.sqlite)",
    )
    g.add_argument(
        "--no-table", action="store_true", help="neither read nor write the latency table"
    )
    g.add_argument(
        "--timing-budget-s",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="timing budget per measurement, seconds (10)",
    )
    g.add_argument("--budget-s", type=refused(BUDGET_S_REFUSED), help=argparse.SUPPRESS)


def report_table(r: PruneReport) -> Table:
    t = Table(title=f"{r.model} on {r.dataset}: {r.method}, {_goal(r)}")
    t.add_column("")
    for col in ("latency ms", "accuracy", "FLOPs", "params"):
        t.add_column(col, justify="right")
    for name, s in (("baseline", r.baseline), ("pruned", r.pruned)):
        t.add_row(name, _ms(s.latency_s), f"{s.accuracy:.4f}", _si(s.flops), _si(s.params))
    t.add_row("pruned, before fine-tuning", "", f"{r.accuracy_before_finetune:.4f}", "", "")
    return t


def _goal(r: PruneReport) -> str:
    """The latency budget as checked, or the size targets of a run without one."""
    if r.budget_s:
        return f"budget {_ms(r.budget_s)} ms (checked against {_ms(r.budget_check_s)} ms)"
    targets = r.width.targets if r.width else {}
    return ", ".join(f"target {k} x{v:.3f}" for k, v in targets.items()) or "no latency budget"


def summary_lines(r: PruneReport) -> list[str]:
    """What was removed or thinned, the prediction, the speed-up and the budget's verdict:
    one line each, printed under the table (a caption centred them and broke them anywhere)."""
    lines = []
    if r.depth is not None or r.removed_blocks:
        lines.append(f"removed {len(r.removed_blocks)}: {', '.join(r.removed_blocks) or '-'}")
    if r.budget_s and r.predicted_latency_s > 0:  # 0: the last pass made no prediction
        lines.append(f"predicted {_ms(r.predicted_latency_s)} ms{_of_profiled(r)}")
    verdict = f"; budget {'met' if r.budget_met else 'MISSED'}" if r.budget_s else ""
    lines.append(f"speed-up {r.speedup:.2f}x{verdict}")
    if (w := r.width) is not None:
        lines.append(f"MACs x{w.macs_ratio:.3f}, params x{w.params_ratio:.3f}")
        if w.fit_latencies_s:
            lines.append(
                f"widths fitted {w.fits} time{'s' if w.fits != 1 else ''}, fit {w.kept_fit + 1} "
                f"kept (measured {_ms(w.fit_latencies_s[w.kept_fit])} ms before fine-tuning)"
            )
    return lines


def _of_profiled(r: PruneReport) -> str:
    """The prediction as a share of the profiled baseline it was made on ("" without one)."""
    if not (r.profiled_latency_s and r.predicted_latency_s):
        return ""
    return (
        f" ({r.predicted_latency_s / r.profiled_latency_s:.0%} of the profiled "
        f"{_ms(r.profiled_latency_s)} ms; measured {1 / r.speedup:.0%} of the baseline)"
    )


def print_report(r: PruneReport) -> None:
    """The before/after table, then the report's warnings."""
    out = console()
    out.print(report_table(r))
    for line in summary_lines(r):
        out.print(line, highlight=False)
    for w in r.warnings:
        print(f"warning: {w}")  # unwrapped: one line each, whole


# Config fields whose flag is not --field-name.
FLAGS = {
    "budget_s": "--budget-ms",
    "table": "--table/--no-table",
    "iterative_finetune": "--finetune-last",
}


def flag_names(e: ConfigError) -> str:
    """``e`` naming the command line's flags instead of the config's fields."""
    return e.render({f: FLAGS.get(f, "--" + f.replace("_", "-")) for f in e.fields})


def handle(args: argparse.Namespace) -> int:
    check_output_dir(args.out, args.overwrite)  # once, before any rank starts
    from pruner import distributed, prune_checkpoint

    if (code := relaunch(args)) is not None:
        return code

    try:
        config = PruneConfig.from_flat(
            {
                "model": args.model,
                "checkpoint": str(args.checkpoint),
                "data": args.data,
                "out": str(args.out),
                "budget": args.budget,
                "budget_ms": args.budget_ms,
                "method": args.method,
                "target_macs": args.target_macs,
                "target_params": args.target_params,
                "round_to": args.round_to,
                "sparsity_epochs": args.sparsity_epochs,
                "max_fits": args.max_fits,
                "depth_share": args.depth_share,
                "iterative": args.iterative,
                "iterative_rounds": args.iterative_rounds,
                "iterative_finetune": not args.finetune_last,
                "calibration_samples": args.calibration_samples,
                "heldout_samples": args.heldout_samples,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "latency_batch_size": args.latency_batch_size,
                "threads": args.threads,
                "device": args.device,
                "cuda_graph": args.cuda_graph,
                "data_root": args.data_root,
                "limit": args.limit,
                "seed": args.seed,
                "table": "" if args.no_table else args.table,
                "timing_budget_s": args.timing_budget_s,
                "progress_bar": not args.json,
            }
        )
    except ConfigError as e:
        raise ValueError(flag_names(e)) from None
    with distributed.session(config.options.run.device):
        main = distributed.is_main()  # rank 0 reports for all; the exit code is every rank's
        with progress_bar(f"pruning {args.model}", disable=args.json or not main) as progress:
            report = prune_checkpoint(config, progress=progress)
    if not main:
        return 0 if report.budget_met else 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print_report(report)
    print(f"wrote {Path(args.out) / 'report.json'}")
    return 0 if report.budget_met else 1
