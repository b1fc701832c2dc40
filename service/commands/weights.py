"""Where a command's weights come from: ``--checkpoint CKPT`` or ``--pretrained DATASET``."""

from __future__ import annotations

import argparse
from pathlib import Path

from profiler.pretrained import PretrainedError, pretrained_checkpoint, shipped_text
from pruner.config import DATASETS


def add_weights_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--checkpoint`` and ``--pretrained``, mutually exclusive (one of them when ``required``)."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--checkpoint",
        type=Path,
        metavar="CKPT",
        help="checkpoint from `prunerd train` (its stored spec wins)",
    )
    group.add_argument(
        "--pretrained",
        metavar="DATASET",
        help=f"the shipped weights of MODEL trained on DATASET (shipped: {shipped_text()})",
    )


def resolve_weights(args: argparse.Namespace) -> None:
    """Turn ``--pretrained DATASET`` into the shipped checkpoint's path in ``args.checkpoint``.

    A clear error (naming what is shipped and how to train one) when none is shipped.
    """
    dataset = getattr(args, "pretrained", None)
    if dataset and dataset not in DATASETS:
        # Only a known dataset can have shipped weights, and only for one can the error
        # suggest a `prunerd train --data` that works.
        raise PretrainedError(
            f"--pretrained {dataset!r} is not a dataset prunerd knows ({', '.join(DATASETS)}); "
            f"shipped weights: {shipped_text()}. For your own data train with `prunerd train "
            f"{args.model} --data package.module:callable --out CKPT` and pass --checkpoint CKPT"
        )
    if dataset:
        args.checkpoint = pretrained_checkpoint(args.model, dataset)
