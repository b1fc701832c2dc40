"""Baselines: train a named model on a named dataset into a checkpoint, and the cache.

A baseline is trained on a named dataset, evaluated on its test split and saved
as a prunerd checkpoint (model spec JSON + state_dict) whose spec carries the
dataset's input channels, classes and input size, so later commands need only
the checkpoint. ``train_model`` runs what ``prunerd train`` asks for (a
:class:`TrainConfig`); ``cached_baseline`` trains one only when the cache lacks it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from profiler import ModelSpec, build_model_for, builtin_models, is_program, save_checkpoint
from profiler.files import writable_file

from . import distributed
from .adapt import META_KEY as ADAPTATION_META
from .data import Batches, DataBundle, DatasetInfo, load_data
from .schedule import Schedule
from .train import EvalResult, FitResult, evaluate, fit
from .train_config import TrainConfig, state_path_for

CACHE_ENV = "PRUNERD_CACHE"


@dataclass(frozen=True)
class TrainResult:
    """A trained baseline: its spec, dataset, test result, training record and checkpoint path."""

    spec: ModelSpec
    dataset: DatasetInfo
    test: EvalResult
    fit: FitResult
    checkpoint: str
    epochs: int
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        spec["input_size"] = list(self.spec.input_size)
        return {
            "spec": spec,
            "dataset": self.dataset.to_dict(),
            "test": self.test.to_dict(),
            "fit": self.fit.to_dict(),
            "checkpoint": self.checkpoint,
            "epochs": self.epochs,
            "seed": self.seed,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainResult:
        s = d["spec"]
        return cls(
            spec=ModelSpec(
                s["name"], int(s["in_channels"]), int(s["num_classes"]), tuple(s["input_size"])
            ),
            dataset=DatasetInfo.from_dict(d["dataset"]),
            test=EvalResult.from_dict(d["test"]),
            fit=FitResult.from_dict(d["fit"]),
            checkpoint=str(d["checkpoint"]),
            epochs=int(d["epochs"]),
            seed=int(d.get("seed", 0)),
            extra=dict(d.get("extra", {})),
        )


def _check_model_name(model_name: str) -> None:
    """Fail before loading any data when the name cannot possibly build a model."""
    if model_name in builtin_models() or ":" in model_name or is_program(model_name):
        return
    raise ValueError(
        f"unknown model {model_name!r}: choose one of {', '.join(builtin_models())} "
        "or give 'package.module:callable'"
    )


def train_baseline(
    model_name: str,
    data: str | DataBundle,
    epochs: int,
    out: str | os.PathLike[str],
    batch_size: int = 128,
    lr: float = 0.1,
    device: str = "cpu",
    seed: int = 0,
    limit: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    augment: bool = True,
    patience: int | None = None,
) -> TrainResult:
    """Train ``model_name`` on ``data`` (a dataset name or a loaded bundle) and save a checkpoint.

    The quick recipe caches and tests rely on: 10% of the train split held out
    for best-epoch selection, plain cosine, no label smoothing. ``prunerd
    train`` runs :func:`train_model` with a :class:`TrainConfig` instead.
    """
    config = TrainConfig(
        model=model_name,
        data=data.info.name if isinstance(data, DataBundle) else data,
        out=str(out),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        schedule=Schedule(),
        label_smoothing=0.0,
        augment=augment,
        val_fraction=0.1,
        patience=patience,
        seed=seed,
        limit=limit,
        data_root=None if data_root is None else str(data_root),
        device=device,
    )
    return train_model(config, data if isinstance(data, DataBundle) else None, progress)


def normalisation_of(bundle: DataBundle) -> dict[str, list[float]] | None:
    """The per-channel mean and std (0..1 scale) the model was trained with, when known."""
    train = bundle.train
    if not isinstance(train, Batches):
        return None
    return {"mean": list(train.mean), "std": list(train.std)}


def load_training_data(config: TrainConfig) -> DataBundle:
    """The dataset a config names, split and augmented as it says."""
    return load_data(
        config.data,
        root=config.data_root,
        batch_size=config.batch_size,
        seed=config.seed,
        val_fraction=config.val_fraction,
        augment=config.augment,
        crop_pad=config.crop_pad,
        limit=config.limit,
    )


def train_model(
    config: TrainConfig, data: DataBundle | None = None, progress: bool = True
) -> TrainResult:
    """Train the model ``config`` names, evaluate it on the test split, save the checkpoint.

    The model gets the dataset's input channels, classes and input size; the
    checkpoint at ``config.out`` stores that spec plus meta ``dataset``,
    ``epochs``, ``test_accuracy``, ``test_loss``, ``test_n``, ``seed``,
    ``seconds`` and the whole ``config``. While training, a resume file
    beside the checkpoint (``<out>.state``) is rewritten after every epoch and
    removed once the checkpoint is written. ``data`` overrides loading.
    """
    _check_model_name(config.model)
    state_path = state_path_for(config.out)
    distributed.from_main(lambda: _check_out(config.out, state_path, config.resume))
    bundle = data if data is not None else load_training_data(config)
    info = bundle.info
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)  # the initial weights are part of what the seed reproduces
        spec, model = build_model_for(
            config.model, info.in_channels, info.num_classes, config.input_size or info.input_size
        )
        fed, adaptation = bundle.for_model(spec.in_channels, spec.input_size)
        fit_result = fit_config(model, fed, config, state_path, progress)
        test = evaluate(model, fed.test, config.device)
    finally:
        torch.set_num_threads(threads_before)
    meta = {
        "dataset": info.name,
        "epochs": config.epochs,
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "test_n": test.n,
        "seed": config.seed,
        "limit": config.limit,
        "seconds": fit_result.seconds,
        "config": config.to_dict(),
        "normalisation": normalisation_of(bundle),
        ADAPTATION_META: adaptation.to_dict(),
    }
    # Rank 0 writes; every rank returns once the checkpoint is there.
    path = distributed.from_main(lambda: _write_checkpoint(config.out, spec, model, meta))
    return TrainResult(
        spec=spec,
        dataset=info,
        test=test,
        fit=fit_result,
        checkpoint=str(path),
        epochs=config.epochs,
        seed=config.seed,
        extra={"config": config.to_dict()},
    )


def _check_out(out: str | os.PathLike[str], state_path: Path, resume: bool) -> None:
    """Fail before training, not after it: ``out`` must be a file its directory takes, and
    an interrupted run there is resumed or refused, never overwritten."""
    writable_file(out, "checkpoint")
    if state_path.is_dir() or state_path.is_symlink():
        raise ValueError(
            f"{str(state_path)!r}, where this run keeps its resume file, is a "
            f"{'directory' if state_path.is_dir() else 'symbolic link'}: remove it or choose "
            "another checkpoint path"
        )
    if state_path.is_file() and not resume:
        raise ValueError(
            f"{str(state_path)!r} holds an interrupted run: add --resume to continue it, "
            "or delete it to start over"
        )


def _write_checkpoint(out: str, spec: ModelSpec, model: nn.Module, meta: dict[str, Any]) -> Path:
    """The trained checkpoint, then no resume file: there is nothing left to resume."""
    path = save_checkpoint(out, spec, model, **meta)
    state_path_for(out).unlink(missing_ok=True)
    return path


def fit_config(
    model: nn.Module,
    bundle: DataBundle,
    config: TrainConfig,
    state_path: Path | None = None,
    progress: bool = True,
) -> FitResult:
    """:func:`fit` ``model`` on ``bundle`` as ``config`` says: what ``train_model`` runs to train."""
    return fit(
        model,
        bundle.train,
        bundle.val,
        config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        device=config.device,
        progress=progress,
        patience=config.patience,
        momentum=config.momentum,
        schedule=config.schedule,
        label_smoothing=config.label_smoothing,
        state_path=state_path,
        resume=config.resume,
        settings=config.resume_settings(),
    )


def resolve_cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where baselines are cached: ``path``, else ``$PRUNERD_CACHE``, else ``~/.cache/prunerd``."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "prunerd")


def baseline_filename(
    model_name: str, data: str, epochs: int, seed: int = 0, limit: int | None = None
) -> str:
    """``{model}_{data}_e{epochs}[_n{limit}][_s{seed}].pt``, with anything but [A-Za-z0-9.-] as '-'."""

    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "-", s).strip("-")

    name = f"{clean(model_name)}_{clean(data)}_e{epochs}"
    if limit is not None:
        name += f"_n{limit}"
    if seed:
        name += f"_s{seed}"
    return name + ".pt"


def cached_baseline(
    model_name: str,
    data: str,
    epochs: int,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    device: str = "cpu",
    seed: int = 0,
    limit: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """The checkpoint of a baseline from the cache, trained and saved there first if absent."""
    path = resolve_cache_dir(cache_dir) / baseline_filename(model_name, data, epochs, seed, limit)
    if path.is_file():
        return path
    train_baseline(
        model_name,
        data,
        epochs,
        path,
        batch_size=batch_size,
        lr=lr,
        device=device,
        seed=seed,
        limit=limit,
        data_root=data_root,
        progress=progress,
    )
    return path
