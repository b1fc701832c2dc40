"""`prunerd quickstart`: the main job on embedded defaults.

Starts from the shipped baseline of the model on the dataset when there is
one (else trains a small one, once; it is cached; ``--train`` forces that),
profiles it on this device and prints the per-block table, then prunes it to
a latency budget and prints the before/after table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .argtypes import fraction, non_negative_int, positive_int
from .baseline import choose_baseline
from .profile import add_timing_arguments, run_profile
from .render import console, print_profile


def handle(args: argparse.Namespace) -> int:
    out = console()
    steps = 2 if args.no_prune else 3
    out.rule(f"1/{steps}  baseline: {args.model} on {args.data}")
    ckpt = choose_baseline(args, out)
    out.rule(f"2/{steps}  per-block serial latency on this device, batch {args.batch_size}")
    args.checkpoint, args.in_channels, args.num_classes, args.input_size = ckpt, 0, 0, (0, 0)
    profile = run_profile(args)
    print_profile(profile, out)
    if args.json:
        args.json.write_text(profile.to_json())
        out.print(f"wrote {args.json}")
    if args.no_prune:
        return 0
    from pruner import PruneConfig, prune_checkpoint

    from .prune import print_report

    out.rule(f"3/3  prune to {args.budget:.0%} of the measured latency, fine-tune, measure")
    prune_dir = args.out or (ckpt.parent / f"{ckpt.stem}-pruned-{args.budget:g}")
    config = PruneConfig.from_flat(
        {
            "model": args.model,
            "checkpoint": str(ckpt),
            "data": args.data,
            "data_root": None if args.data_root is None else str(args.data_root),
            "out": str(prune_dir),
            "budget": args.budget,
            "epochs": args.prune_epochs,
            "limit": args.limit,
            "latency_batch_size": args.batch_size,
            "threads": args.threads,
            "table": "" if args.no_table else (None if args.table is None else str(args.table)),
            "timing_budget_s": args.timing_budget_s,
            "progress_bar": True,
        }
    )
    report = prune_checkpoint(config)
    print_report(report)
    out.print(f"pruned model, plan and report in {prune_dir}")
    pruned = report.checkpoint_path
    # What to do with it next, as command lines a person can paste.
    out.print(
        f"next: `prunerd eval {args.model} --checkpoint {pruned}` (its test accuracy), "
        f"`prunerd profile {args.model} --checkpoint {pruned}` (its blocks' latency, here or on "
        "the device it will serve on)",
        soft_wrap=True,
        highlight=False,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="profile and prune the shipped baseline (or one trained here) on embedded defaults",
        description="The main job on embedded defaults: start from the shipped baseline of the "
        "model on the dataset (or train one here, once, when none is shipped or --train is "
        "given), measure each block's serial latency on this device, prune to a latency budget.",
    )
    p.add_argument("--model", default="resnet20", help="built-in model (default: resnet20)")
    p.add_argument(
        "--data", default="fashion-mnist", help="built-in dataset (default: fashion-mnist)"
    )
    p.add_argument("--data-root", type=Path, default=None, help="where the dataset's files are")
    p.add_argument(
        "--train",
        action="store_true",
        help="train the baseline here even when shipped weights exist (see --pretrained)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=1,
        help="training epochs when the baseline is trained here (default: 1)",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        default=20000,
        help="training images used to train (when trained here) and fine-tune (default: 20000)",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="baseline cache (default: ~/.cache/prunerd)"
    )
    p.add_argument("--json", type=Path, help="also write the profile as JSON here")
    p.add_argument(
        "--budget",
        type=fraction,
        default=0.5,
        help="latency budget, fraction of the baseline (default: 0.5)",
    )
    p.add_argument(
        "--prune-epochs",
        type=non_negative_int,
        default=1,
        help="fine-tuning epochs after pruning (default: 1)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the pruned model goes (default: beside the baseline)",
    )
    p.add_argument("--no-prune", action="store_true", help="stop after the profile")
    add_timing_arguments(p, latency_budget=True)
    p.set_defaults(func=handle)
