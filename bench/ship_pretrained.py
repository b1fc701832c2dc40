"""Ship a trained checkpoint as package data: re-evaluate it, copy it, record it in the manifest.

The checkpoint must come from ``prunerd train`` (its meta holds the config,
seed, epochs and training seconds). Its accuracy is measured again here on the
full test split, so the manifest states what the shipped file scores.

    python bench/ship_pretrained.py bench/runs/resnet20/resnet20-fashion-mnist.pt \\
        --command "nice -n 19 prunerd train resnet20 --data fashion-mnist ..." \\
        --machine "AMD EPYC, 2 threads"
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path

import torch

from profiler import cpu_model, read_checkpoint
from profiler.pretrained import (
    PRETRAINED_DIR,
    PretrainedEntry,
    add_to_manifest,
    pretrained_filename,
)
from pruner import evaluate_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by `prunerd train`")
    p.add_argument("--command", required=True, help="the exact command that trained it")
    p.add_argument(
        "--machine",
        default=None,
        help="where it trained (default: this machine's CPU and the run's threads)",
    )
    p.add_argument("--data-root", default=None, help="directory of the dataset files")
    p.add_argument("--threads", type=int, default=2, help="threads for the evaluation")
    p.add_argument(
        "--dir", type=Path, default=PRETRAINED_DIR, help="where to ship (default: the package's)"
    )
    args = p.parse_args()

    ckpt = read_checkpoint(args.checkpoint)
    meta = ckpt.meta or {}
    if "config" not in meta or ckpt.plan_json:
        raise SystemExit(f"{args.checkpoint} is not an unpruned checkpoint from `prunerd train`")
    torch.set_num_threads(args.threads)
    result = evaluate_checkpoint(args.checkpoint, data=meta["dataset"], data_root=args.data_root)
    name = pretrained_filename(ckpt.spec.name, result.dataset)
    shutil.copyfile(args.checkpoint, args.dir / name)
    config = meta["config"]
    machine = args.machine or f"{cpu_model()}, {config.get('threads') or 'default'} threads"
    entry = PretrainedEntry(
        model=ckpt.spec.name,
        dataset=result.dataset,
        file=name,
        test_accuracy=result.accuracy,
        test_loss=result.loss,
        test_n=result.n,
        epochs=int(meta["epochs"]),
        seed=int(meta["seed"]),
        seconds=float(meta["seconds"]),
        command=args.command,
        machine=machine,
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        config=config,
    )
    path = add_to_manifest(entry, args.dir)
    print(
        f"shipped {args.dir / name}: test accuracy {result.accuracy:.4f} "
        f"(n={result.n}), manifest {path}"
    )


if __name__ == "__main__":
    main()
