"""`prunerd eval MODEL (--checkpoint CKPT | --pretrained DATASET)`: test accuracy and loss."""

from __future__ import annotations

import argparse
import json

from pruner.config import DATASETS

from .argtypes import positive_int
from .weights import add_weights_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="accuracy and loss of a checkpoint on a dataset's test split",
        description=(
            "Evaluate MODEL's weights (a checkpoint, or the shipped weights trained on DATASET) "
            "on the full test split of DATA: top-1 accuracy, mean cross-entropy and the number "
            "of test images. Images are normalised as the model was trained."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="the model the weights belong to (e.g. resnet20)")
    add_weights_arguments(p, required=True)
    p.add_argument(
        "--data",
        metavar="DATA",
        help=f"dataset: {', '.join(DATASETS)} or package.module:callable "
        "(default: the one the checkpoint was trained on)",
    )
    p.add_argument("--data-root", metavar="DIR", help="directory of the dataset files")
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="evaluate a seeded random subset of N test images (default: all of them)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=256, metavar="B", help="batch size (256)"
    )
    p.add_argument(
        "--threads", type=positive_int, metavar="T", help="CPU threads (default: torch's choice)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON on stdout: model, checkpoint, dataset, split, accuracy, loss, n, seconds",
    )
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import torch

    from profiler import read_checkpoint, resolve_device
    from pruner.checkpoint_eval import evaluate_checkpoint

    stored = read_checkpoint(args.checkpoint).spec.name
    if stored != args.model:
        raise ValueError(
            f"checkpoint {str(args.checkpoint)!r} holds {stored!r}, not {args.model!r}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    resolve_device(args.device)  # "cuda" on a torch without one: said now, in words
    result = evaluate_checkpoint(
        args.checkpoint,
        data=args.data or args.pretrained,
        data_root=args.data_root,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(
        f"{result.model} on the {result.dataset} {result.split} split: "
        f"accuracy {result.accuracy:.4f}, loss {result.loss:.4f}, n={result.n} "
        f"({result.seconds:.1f} s)"
    )
    print(f"checkpoint: {result.checkpoint}")
    return 0
