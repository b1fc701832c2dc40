"""`prunerd train MODEL --data DATA --out CKPT`: train a baseline and save its checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

from pruner.config import DATASETS
from pruner.schedule import DECAYS, Schedule
from pruner.train_config import TrainConfig, state_path_for

from .argtypes import input_size, positive_float, positive_int
from .existing import check_checkpoint
from .processes import add_process_arguments, relaunch

DEFAULTS = TrainConfig(model="", data="", out="")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a baseline model on a dataset and save a checkpoint",
        description=(
            "Train MODEL on DATA with SGD (Nesterov momentum, weight decay on conv/linear weights "
            "only), a linear warm-up then cosine decay of the learning rate, label smoothing and "
            "the dataset's augmentation (fashion-mnist: random crop and horizontal flip, on whole "
            "batches). Evaluates on the full test split and saves a checkpoint (model spec + "
            "state_dict). Input channels, classes and input size come from the dataset; a model "
            "built for other channels (torchvision's take 3) gets a one-channel image repeated, "
            "--input-size resizes the images, and the checkpoint records that adaptation so "
            "eval and prune feed the model the same way. A resume "
            "file beside the checkpoint (CKPT.state) is rewritten after every epoch, so a killed "
            "run continues with --resume and loses at most one epoch, with any number of "
            "processes (--nproc-per-node, or under torchrun)."
        ),
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a built-in (resnet20, resnet56, vgg16, mobilenetv2), package.module:callable "
        "(e.g. torchvision.models:resnet18) or timm:NAME (needs timm)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help=f"dataset: {', '.join(DATASETS)} or package.module:callable",
    )
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="directory of the dataset files (fashion-mnist: the four idx files; default "
        "$PRUNERD_FASHION_MNIST or /usr/share/datasets/fashion-mnist)",
    )
    _add_output_arguments(p)
    _add_optimiser_arguments(p)
    _add_data_arguments(p)
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed for splits, shuffling and weights"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="T",
        help="CPU intra-op threads (default: torch's choice)",
    )
    add_process_arguments(p)
    p.set_defaults(func=handler)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="CKPT", help="where to write the checkpoint")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose resume file CKPT.state is there (same settings); "
        "start fresh when there is none",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the checkpoint at CKPT (without it an existing one is refused)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _add_optimiser_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument(
        "--epochs", type=positive_int, default=d.epochs, metavar="E", help=f"epochs ({d.epochs})"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.batch_size,
        metavar="B",
        help="batch size (128)",
    )
    p.add_argument(
        "--lr", type=positive_float, default=d.lr, metavar="LR", help=f"peak learning rate ({d.lr})"
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        metavar="WD",
        help=f"weight decay on conv/linear weights, never BN or biases ({d.weight_decay})",
    )
    p.add_argument(
        "--momentum", type=float, default=d.momentum, help=f"Nesterov momentum ({d.momentum})"
    )
    p.add_argument(
        "--schedule",
        choices=DECAYS,
        default=d.schedule.decay,
        help="decay after the warm-up: cosine, linear (one-cycle) or constant (cosine)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=d.schedule.warmup_epochs,
        metavar="W",
        help="epochs of linear warm-up from a tenth of the peak, at most half the run "
        f"({d.schedule.warmup_epochs:g})",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=d.label_smoothing,
        metavar="EPS",
        help=f"label smoothing of the training loss ({d.label_smoothing})",
    )


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument(
        "--no-augment", action="store_true", help="train without the dataset's augmentation"
    )
    p.add_argument(
        "--crop-pad",
        type=int,
        default=d.crop_pad,
        metavar="P",
        help=f"random-crop padding in pixels, 0 for no crop ({d.crop_pad})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        metavar="F",
        help="hold out this fraction of the train split to keep the best epoch's weights "
        "(default 0: train on every training image, keep the last epoch)",
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        metavar="N",
        help="with --val-fraction: stop after N epochs without a val improvement",
    )
    p.add_argument(
        "--limit", type=positive_int, metavar="N", help="use at most N train and N test samples"
    )
    p.add_argument(
        "--input-size",
        type=input_size,
        metavar="H,W",
        help="resize the images to H,W for the model (default: the dataset's own size)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the command line asks for."""
    return TrainConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        schedule=Schedule(decay=args.schedule, warmup_epochs=args.warmup_epochs),
        label_smoothing=args.label_smoothing,
        augment=not args.no_augment,
        crop_pad=args.crop_pad,
        val_fraction=args.val_fraction,
        patience=args.patience,
        seed=args.seed,
        limit=args.limit,
        input_size=args.input_size,
        data_root=args.data_root,
        device=args.device,
        threads=args.threads,
        resume=args.resume,
    )


def _say_when_nothing_resumes(out: str) -> None:
    """--resume with no resume file trains from the first epoch: say so, not silently."""
    state = state_path_for(out)
    if not state.is_file():
        print(
            f"prunerd train: --resume: no interrupted run at {str(state)!r}; training from "
            "the first epoch",
            file=sys.stderr,
        )


def handler(args: argparse.Namespace) -> int:
    check_checkpoint(args.out, args.resume, args.overwrite)  # once, before any rank starts
    from profiler import resolve_device

    resolve_device(args.device)  # "cuda" on a torch without one: said now, in words
    if (code := relaunch(args)) is not None:
        return code
    from pruner import distributed  # torch: only once a command runs
    from pruner.baselines import train_model

    with distributed.session(args.device):
        if args.resume and distributed.is_main():
            _say_when_nothing_resumes(args.out)
        # progress on stderr: stdout stays clean for --json
        result = train_model(config_from_args(args), progress=True)
        if not distributed.is_main():  # rank 0 reports for all
            return 0
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
    spec = result.spec
    if (spec.in_channels, spec.input_size) != (info.in_channels, info.input_size):
        print(
            f"input adapted for the model: {info.in_channels}x{info.input_size[0]}x"
            f"{info.input_size[1]} -> {spec.in_channels}x{spec.input_size[0]}x{spec.input_size[1]}"
        )
    print(f"test accuracy: {result.test.accuracy:.4f} (n={result.test.n})")
    print(f"checkpoint: {result.checkpoint}")
    return 0
