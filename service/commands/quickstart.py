"""`prunerd quickstart`: the main job on embedded defaults.

Trains a small baseline on a built-in dataset (once; it is cached), then
profiles it on this device and prints the per-block table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from profiler import read_checkpoint

from .profile import add_timing_arguments, run_profile
from .render import console, print_profile


def handle(args: argparse.Namespace) -> int:
    from pruner import cached_baseline

    out = console()
    out.rule(f"1/2  baseline: {args.model} on {args.data}")
    ckpt = cached_baseline(
        args.model,
        args.data,
        args.epochs,
        cache_dir=args.cache_dir,
        limit=args.limit,
        data_root=args.data_root,
    )
    meta = read_checkpoint(ckpt).meta or {}
    accuracy = meta.get("test_accuracy")
    out.print(
        f"checkpoint {ckpt}"
        + (f"  test accuracy {accuracy:.2%}" if isinstance(accuracy, float) else "")
    )
    out.rule(f"2/2  per-block serial latency on this device, batch {args.batch_size}")
    args.checkpoint, args.in_channels, args.num_classes, args.input_size = ckpt, 0, 0, (0, 0)
    profile = run_profile(args)
    print_profile(profile, out)
    if args.json:
        args.json.write_text(profile.to_json())
        out.print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="train a small baseline (cached), profile it and print the table",
        description="The main job on embedded defaults: train (once) a baseline on a built-in dataset, "
        "then measure each block's serial latency on this device.",
    )
    p.add_argument("--model", default="resnet20", help="built-in model (default: resnet20)")
    p.add_argument(
        "--data", default="fashion-mnist", help="built-in dataset (default: fashion-mnist)"
    )
    p.add_argument("--data-root", type=Path, default=None, help="where the dataset's files are")
    p.add_argument(
        "--epochs", type=int, default=1, help="training epochs for the baseline (default: 1)"
    )
    p.add_argument("--limit", type=int, default=20000, help="training images used (default: 20000)")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="baseline cache (default: ~/.cache/prunerd)"
    )
    p.add_argument("--json", type=Path, help="also write the profile as JSON here")
    add_timing_arguments(p)
    p.set_defaults(func=handle)
