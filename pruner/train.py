"""Training and evaluation: ``fit`` (SGD + cosine, early stopping), ``evaluate``, baselines.

A baseline is trained on a named dataset, evaluated on its test split and saved
as a prunerd checkpoint (model spec JSON + state_dict) whose spec carries the
dataset's input channels, classes and input size, so later commands need only
the checkpoint. ``cached_baseline`` trains one only when the cache lacks it.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from profiler import ModelSpec, build_model, builtin_models, save_checkpoint

from .data import DataBundle, DatasetInfo, load_data

# loss_fn(logits (B, K), labels (B,), inputs (B, C, H, W)) -> scalar; inputs let a KD loss query a teacher.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

CACHE_ENV = "PRUNERD_CACHE"


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The default training loss: mean cross-entropy over the batch (``inputs`` unused)."""
    del inputs
    return F.cross_entropy(logits, labels)


def _nan_to_none(v: float) -> float | None:
    return None if isinstance(v, float) and math.isnan(v) else v


def _none_to_nan(v: Any) -> float:
    return math.nan if v is None else float(v)


@dataclass(frozen=True)
class EvalResult:
    """Accuracy (fraction in [0, 1]) and mean cross-entropy over ``n`` samples; NaN when n == 0."""

    accuracy: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": _nan_to_none(self.accuracy),
            "loss": _nan_to_none(self.loss),
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        return cls(_none_to_nan(d["accuracy"]), _none_to_nan(d["loss"]), int(d["n"]))


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training loss and accuracy (on augmented batches), val result, final lr, seconds."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val: EvalResult | None
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["val"] = None if self.val is None else self.val.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpochStats:
        return cls(
            epoch=int(d["epoch"]),
            train_loss=float(d["train_loss"]),
            train_accuracy=float(d["train_accuracy"]),
            val=None if d.get("val") is None else EvalResult.from_dict(d["val"]),
            lr=float(d["lr"]),
            seconds=float(d["seconds"]),
        )


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` did: per-epoch history, the epoch whose weights were kept, total seconds.

    ``best_epoch`` is 1-based (0 when no epoch ran); without a val split it is the last epoch.
    """

    history: tuple[EpochStats, ...]
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool
    seconds: float

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": [e.to_dict() for e in self.history],
            "best_epoch": self.best_epoch,
            "best_val_accuracy": _nan_to_none(self.best_val_accuracy),
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FitResult:
        return cls(
            history=tuple(EpochStats.from_dict(e) for e in d["history"]),
            best_epoch=int(d["best_epoch"]),
            best_val_accuracy=_none_to_nan(d["best_val_accuracy"]),
            stopped_early=bool(d["stopped_early"]),
            seconds=float(d["seconds"]),
        )


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


# ---------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu"
) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` in eval mode over all batches.

    Batches are (x (B, C, H, W) float32, y (B,) int64). The model's train/eval
    mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        return EvalResult(math.nan, math.nan, 0)
    return EvalResult(correct / n, loss_sum / n, n)


# ---------------------------------------------------------------------------- fit


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: decaying BN scales and biases only hurts accuracy."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _progress(enabled: bool) -> Progress:
    # stderr, so that `--json` output on stdout stays machine-readable.
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def fit(
    model: nn.Module,
    train: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    epochs: int,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    loss_fn: LossFn | None = None,
    device: str = "cpu",
    progress: bool = True,
    patience: int | None = None,
    momentum: float = 0.9,
) -> FitResult:
    """Train ``model`` in place with SGD (Nesterov momentum) and a per-step cosine schedule to 0.

    After each epoch the model is evaluated on ``val``; the weights of the epoch
    with the best val accuracy are restored at the end. With ``patience``,
    training stops after that many epochs without a val improvement. Without
    val (None or empty) the last weights are kept and nothing stops early.
    ``loss_fn(logits, labels, inputs)`` defaults to cross-entropy.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience}")
    loss_fn = loss_fn or cross_entropy
    model.to(device)
    optimizer = torch.optim.SGD(
        _param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=momentum > 0
    )
    # Without len() the schedule steps once per epoch instead of once per batch.
    try:
        steps_per_epoch: int | None = len(train)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    total_steps = max(1, epochs * (steps_per_epoch or 1))

    def set_lr(step: float) -> float:
        value = 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        for group in optimizer.param_groups:
            group["lr"] = value
        return value

    history: list[EpochStats] = []
    best_acc, best_epoch, best_state = -math.inf, 0, None
    since_best, stopped_early = 0, False
    start = time.perf_counter()
    step = 0
    with _progress(progress) as bar:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            task = bar.add_task(f"epoch {epoch}/{epochs}", total=steps_per_epoch, stats="")
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            current_lr = set_lr(step if steps_per_epoch else epoch - 1)
            for x, y in train:
                x, y = x.to(device), y.to(device)
                if steps_per_epoch:
                    current_lr = set_lr(step)
                logits = model(x)
                loss = loss_fn(logits, y, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
                bar.update(
                    task,
                    advance=1,
                    stats=f"loss {loss_sum / seen:.4f} acc {correct / seen:.4f} lr {current_lr:.4g}",
                )
            val_result = evaluate(model, val, device) if val is not None else None
            if val_result is not None and val_result.n == 0:
                val_result = None
            stats = EpochStats(
                epoch=epoch,
                train_loss=loss_sum / seen if seen else math.nan,
                train_accuracy=correct / seen if seen else math.nan,
                val=val_result,
                lr=current_lr,
                seconds=time.perf_counter() - t0,
            )
            history.append(stats)
            summary = f"loss {stats.train_loss:.4f} acc {stats.train_accuracy:.4f}"
            if val_result is not None:
                summary += f" | val acc {val_result.accuracy:.4f} loss {val_result.loss:.4f}"
            bar.update(task, stats=summary)
            if val_result is None:
                continue
            if val_result.accuracy > best_acc:
                best_acc, best_epoch, since_best = val_result.accuracy, epoch, 0
                # A detached copy: the optimiser keeps mutating the live tensors.
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if patience is not None and since_best >= patience and epoch < epochs:
                    stopped_early = True
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch, best_acc = len(history), math.nan
    return FitResult(
        history=tuple(history),
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------- baselines


def _check_model_name(model_name: str) -> None:
    """Fail before loading any data when the name cannot possibly build a model."""
    if (
        model_name in builtin_models()
        or ":" in model_name
        or model_name.endswith((".pt2", ".pt2e"))
    ):
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

    The model gets the dataset's input channels, classes and input size; the
    checkpoint at ``out`` stores that spec plus meta ``dataset``, ``epochs``,
    ``test_accuracy`` and ``seed``. ``augment`` applies the dataset's own
    training augmentation when it has one (fashion-mnist).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    _check_model_name(model_name)
    if isinstance(data, DataBundle):
        bundle = data
    else:
        bundle = load_data(
            data, root=data_root, batch_size=batch_size, seed=seed, augment=augment, limit=limit
        )
    info = bundle.info
    spec = ModelSpec(model_name, info.in_channels, info.num_classes, info.input_size)
    torch.manual_seed(seed)  # the initial weights are part of what the seed reproduces
    model = build_model(spec)
    fit_result = fit(
        model,
        bundle.train,
        bundle.val,
        epochs,
        lr=lr,
        device=device,
        progress=progress,
        patience=patience,
    )
    test = evaluate(model, bundle.test, device)
    path = save_checkpoint(
        out,
        spec,
        model,
        dataset=info.name,
        epochs=epochs,
        test_accuracy=test.accuracy,
        seed=seed,
        limit=limit,
    )
    return TrainResult(
        spec=spec,
        dataset=info,
        test=test,
        fit=fit_result,
        checkpoint=str(path),
        epochs=epochs,
        seed=seed,
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
