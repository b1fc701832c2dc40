"""Where a command's weights come from: ``--checkpoint CKPT`` or ``--pretrained DATASET``."""

from __future__ import annotations

import argparse
from pathlib import Path

from profiler import is_program
from profiler.pretrained import PretrainedError, pretrained_checkpoint, shipped_text
from pruner.config import DATASETS


def add_weights_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--checkpoint`` and ``--pretrained``, mutually exclusive; one of them when
    ``required``, which :func:`resolve_weights` checks (argparse's own message could not
    tell a user who named a ``.pt2`` program where its weights are)."""
    p.set_defaults(weights_required=required)
    group = p.add_mutually_exclusive_group()
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
    if getattr(args, "weights_required", False) and dataset is None and args.checkpoint is None:
        raise ValueError(_missing_weights(args.command, args.model))
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


def _missing_weights(command: str, model: str) -> str:
    """Why ``prunerd COMMAND MODEL`` without weights cannot run, and what to give."""
    ways = f"give --checkpoint CKPT (from `prunerd train`) or --pretrained DATASET (shipped: {shipped_text()})"
    path = Path(model)
    if not is_program(path):
        return f"{command} needs MODEL's weights: {ways}"
    beside = path.with_suffix(".pt")
    said = f"{model!r} is a torch.export program; {command} reads a checkpoint"
    if beside.is_file():
        return (
            f"{said}: give the model's name and the checkpoint beside it, `prunerd {command} "
            f"{_architecture(beside)} --checkpoint {beside}`"
        )
    return f"{said} (the architecture's name and its weights): {ways}"


def _architecture(checkpoint: Path) -> str:
    """The model name a checkpoint records, or MODEL when it cannot be read."""
    from profiler import read_checkpoint

    try:
        return read_checkpoint(checkpoint).spec.name
    except (OSError, ValueError, RuntimeError):
        return "MODEL"
