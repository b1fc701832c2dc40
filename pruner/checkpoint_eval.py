"""Accuracy of a saved checkpoint on a dataset's test split: what ``prunerd eval`` reports.

The test images are normalised with the statistics the model was trained
with when its checkpoint records them (``meta["normalisation"]``, written by
``prunerd train``), else with the dataset's own train-split statistics.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from profiler import read_checkpoint

from .adapt import recorded_adaptation
from .batch_memory import check_batch_fits
from .data import Batches, DataBundle, load_data
from .rebuild import load_checkpoint_model
from .train import evaluate

CHECKPOINT_EVAL_VERSION = 1


@dataclass(frozen=True)
class CheckpointEval:
    """Top-1 ``accuracy`` (fraction) and mean cross-entropy ``loss`` over ``n`` test images.

    ``seconds`` is the wall time of the evaluation pass alone.
    """

    model: str
    checkpoint: str
    dataset: str
    split: str
    accuracy: float
    loss: float
    n: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"version": CHECKPOINT_EVAL_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointEval:
        if int(d.get("version", CHECKPOINT_EVAL_VERSION)) != CHECKPOINT_EVAL_VERSION:
            raise ValueError(f"eval result version {d.get('version')} is not supported")
        return cls(
            model=str(d["model"]),
            checkpoint=str(d["checkpoint"]),
            dataset=str(d["dataset"]),
            split=str(d["split"]),
            accuracy=float(d["accuracy"]),
            loss=float(d["loss"]),
            n=int(d["n"]),
            seconds=float(d["seconds"]),
        )


def test_data(
    data: str,
    meta: Mapping[str, Any],
    data_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 256,
) -> DataBundle:
    """``data`` with its test batches normalised as the checkpoint whose ``meta`` is given was trained."""
    bundle = load_data(data, root=data_root, batch_size=batch_size, limit=limit, val_fraction=0.0)
    test = bundle.test
    norm = meta.get("normalisation")
    if norm and isinstance(test, Batches):
        test = Batches(test.images, test.labels, norm["mean"], norm["std"], batch_size)
    return dataclasses.replace(bundle, test=test)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> CheckpointEval:
    """Evaluate ``checkpoint`` on the test split of ``data`` (default: the dataset it was trained on).

    ``limit`` evaluates a seeded random subset of that many test images.
    """
    path = Path(checkpoint)
    ckpt = read_checkpoint(path)
    meta = ckpt.meta or {}
    data = data or meta.get("dataset")
    if not data:
        raise ValueError(
            f"checkpoint {str(path)!r} does not say which dataset it was trained on: give --data"
        )
    bundle = test_data(data, meta, data_root, limit, batch_size)
    info, spec = bundle.info, ckpt.spec
    if info.num_classes != spec.num_classes:
        raise ValueError(
            f"checkpoint {str(path)!r} holds {spec.name} with {spec.num_classes} outputs, but "
            f"dataset {data!r} has {info.num_classes} classes: give the dataset it was trained on"
        )
    fed, _ = bundle.for_model(spec.in_channels, spec.input_size, recorded_adaptation(meta))
    model = load_checkpoint_model(path).to(device)
    check_batch_fits(model, fed.test, device, training=False, doing=f"evaluating {spec.name}")
    t0 = time.perf_counter()
    result = evaluate(model, fed.test, device)
    return CheckpointEval(
        model=spec.name,
        checkpoint=str(path),
        dataset=info.name,
        split="test",
        accuracy=result.accuracy,
        loss=result.loss,
        n=result.n,
        seconds=time.perf_counter() - t0,
    )
