"""`prunerd train MODEL --data DATA --out CKPT`: train a baseline and save its checkpoint."""

from __future__ import annotations

import argparse
import json

from pruner.data import datasets
from pruner.train import train_baseline

from .argtypes import positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a baseline model on a dataset and save a checkpoint",
        description=(
            "Train MODEL on DATA with SGD and a cosine schedule, evaluate it on the test split "
            "and save a checkpoint (model spec + state_dict). Input channels, classes and input "
            "size come from the dataset and are stored in the checkpoint."
        ),
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a built-in (resnet20, resnet56, vgg16, mobilenetv2) or package.module:callable",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help=f"dataset: {', '.join(datasets())} or package.module:callable",
    )
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="directory of the dataset files (fashion-mnist: the four idx files; default "
        "$PRUNERD_FASHION_MNIST or /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=10, metavar="E", help="epochs (default 10)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=128,
        metavar="B",
        help="batch size (default 128)",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=0.1,
        metavar="LR",
        help="peak learning rate (default 0.1)",
    )
    p.add_argument(
        "--limit", type=positive_int, metavar="N", help="use at most N train and N test samples"
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed for splits, shuffling and weights"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", required=True, metavar="CKPT", help="where to write the checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    result = train_baseline(
        args.model,
        args.data,
        args.epochs,
        args.out,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        limit=args.limit,
        data_root=args.data_root,
        progress=True,  # on stderr: stdout stays clean for --json
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    info = result.dataset
    print(
        f"{result.spec.name} on {info.name} "
        f"({info.in_channels}x{info.input_size[0]}x{info.input_size[1]}, {info.num_classes} classes), "
        f"{result.fit.epochs_run} epoch{'' if result.fit.epochs_run == 1 else 's'} "
        f"in {result.fit.seconds:.1f} s"
    )
    print(f"test accuracy: {result.test.accuracy:.4f} (n={result.test.n})")
    print(f"checkpoint: {result.checkpoint}")
    return 0
