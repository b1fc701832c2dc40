"""The quickstart's baseline: the shipped weights when there are some, else one trained here."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from profiler.pretrained import find_pretrained, pretrained_checkpoint


def choose_baseline(args: argparse.Namespace, out: Console) -> Path:
    """The checkpoint the quickstart starts from, after saying which one it is and why.

    Shipped weights for ``args.model`` on ``args.data`` win unless ``args.train``;
    otherwise a baseline is trained for ``args.epochs`` on ``args.limit`` images
    (cached, so only once).
    """
    from profiler import read_checkpoint  # torch: only once a command runs
    from pruner.baselines import cached_baseline, resolve_cache_dir

    entry = None if args.train else find_pretrained(args.model, args.data)
    if entry is not None:
        out.print(
            f"baseline: the shipped {entry.model} trained on {entry.dataset} "
            f"({entry.epochs} epochs, test accuracy {entry.test_accuracy:.2%} on "
            f"{entry.test_n} images); --train trains one here instead"
        )
        path = pretrained_checkpoint(entry.model, entry.dataset)
        out.print(f"checkpoint {path}")
        if getattr(args, "out", None) is None:
            # Never beside the shipped weights: the package directory is not ours to write.
            budget = getattr(args, "budget", 0.5)
            args.out = resolve_cache_dir(args.cache_dir) / f"{path.stem}-pruned-{budget:g}"
        return path

    why = "--train asked for it" if args.train else f"no shipped {args.model} for {args.data}"
    out.print(
        f"baseline: trained here ({why}): {args.epochs} epoch{'s' if args.epochs != 1 else ''} "
        f"on {args.limit} images, cached for the next run"
    )
    ckpt = cached_baseline(
        args.model,
        args.data,
        args.epochs,
        cache_dir=args.cache_dir,
        limit=args.limit,
        data_root=args.data_root,
    )
    accuracy = (read_checkpoint(ckpt).meta or {}).get("test_accuracy")
    out.print(
        f"checkpoint {ckpt}"
        + (f"  test accuracy {accuracy:.2%}" if isinstance(accuracy, float) else "")
    )
    return ckpt
