"""Training and evaluation: ``fit`` (SGD with a per-step schedule, early stopping, resume
files) and ``evaluate``, with their typed results. Baselines trained from a name are
:mod:`pruner.baselines`.
"""

from __future__ import annotations

import copy
import math
import os
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

from . import distributed
from .batch_memory import check_batch_fits
from .schedule import Schedule
from .train_state import TrainState, check_settings, load_state, save_state

# loss_fn(logits (B, K), labels (B,), inputs (B, C, H, W)) -> scalar; inputs let a KD loss query a teacher.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


# ---------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu"
) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` in eval mode over all batches.

    Batches are (x (B, C, H, W) float32, y (B,) int64). The model's train/eval
    mode is restored afterwards. With a process group every rank must call it:
    each evaluates every N-th batch and all get the sums over ranks.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        for x, y in distributed.split(batches):
            x, y = x.to(device), y.to(device)
            logits = check_classes(main_logits(model(x), "eval"), y)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    finally:
        model.train(was_training)
    correct, loss_sum, n = distributed.sum_over_ranks(correct, loss_sum, n)
    correct, n = int(correct), int(n)
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
    """The bar on a terminal; piped, none (a log gets one line per epoch, see _report_epoch,
    where the bar's last frame came out cut to 80 columns)."""
    # stderr, so that `--json` output on stdout stays machine-readable.
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=False,
    )


def smoothed_cross_entropy(label_smoothing: float) -> LossFn:
    """Cross-entropy against labels smoothed by ``label_smoothing`` (0 is the plain loss)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing == 0.0:
        return cross_entropy

    def loss(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        del inputs
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)

    return loss


# Seconds between redraws of the running loss: each redraw reads tensors back and formats text.
STATS_INTERVAL_S = 1.0


@dataclass
class _Run:
    """What ``fit`` carries from epoch to epoch (and into the resume file)."""

    step: int = 0
    history: list[EpochStats] = field(default_factory=list)
    best_acc: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    since_best: int = 0
    stopped_early: bool = False
    earlier_seconds: float = 0.0  # epochs a resumed run inherited: their seconds

    def record(self, stats: EpochStats, model: nn.Module) -> None:
        """Append an epoch; keep a copy of the weights when val improved on the best so far."""
        self.history.append(stats)
        if stats.val is None:
            return
        if stats.val.accuracy > self.best_acc:
            self.best_acc, self.best_epoch, self.since_best = stats.val.accuracy, stats.epoch, 0
            # A detached copy: the optimiser keeps mutating the live tensors.
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.since_best += 1


def _steps_per_epoch(train: Iterable[Any]) -> int | None:
    try:
        return len(train)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_classes(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logits`` (B, K), after checking that every label is below K (cross-entropy's own
    error is "Target 9 is out of bounds")."""
    top = int(labels.max()) if labels.numel() else -1
    if top >= logits.shape[1]:
        raise ValueError(
            f"the model gives {logits.shape[1]} outputs per image, but the data has labels up "
            f"to {top}: build it for the dataset's {top + 1} or more classes (num_classes)"
        )
    return logits


def main_logits(out: Any, mode: str = "training") -> torch.Tensor:
    """The logits (B, K) of a model's output. A model that returns more in training mode
    (torchvision's GoogLeNet and Inception-v3: a named tuple of the logits and its
    auxiliary classifiers' logits) trains on its first, the main classifier's: the
    auxiliary heads run in training only, and a traced or pruned model has none."""
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = (
            type(out).__name__ if not isinstance(out, torch.Tensor) else f"shape {tuple(out.shape)}"
        )
        raise ValueError(
            f"the model returned {what} in {mode} mode; prunerd trains a classifier that "
            "returns logits (B, classes), or a tuple whose first element they are"
        )
    return out


def _training_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)``; a failure names the model, the mode and the batch's shape (the
    message torch gives does not: "Output size is too small")."""
    try:
        return model(x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:
        net = getattr(model, "module", model)  # under DistributedDataParallel
        hint = ""
        if "too small" in str(e):
            hint = (
                "; a layer that runs in training mode only (an auxiliary classifier) may "
                "need larger inputs: try a larger --input-size"
            )
        raise RuntimeError(
            f"{type(net).__name__} failed in training mode on a batch of shape "
            f"{tuple(x.shape)}: {e}{hint}"
        ) from e


def _train_epoch(
    model: nn.Module,
    train: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    set_lr: Callable[[int], float],
    run: _Run,
    device: str,
    bar: Progress,
    task: Any,
) -> tuple[float, float, float]:
    """One pass over ``train``: (mean loss, accuracy, last lr). Sums stay tensors until the end."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, current_lr, last_draw = 0, set_lr(run.step), time.perf_counter()
    for x, y in train:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        current_lr = set_lr(run.step)
        logits = main_logits(_training_forward(model, x))
        if seen == 0:  # once an epoch: a check costs a device sync
            check_classes(logits, y)
        loss = loss_fn(logits, y, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step += 1
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if time.perf_counter() - last_draw < STATS_INTERVAL_S:
            bar.advance(task)
            continue
        last_draw = time.perf_counter()
        mean_loss = _finite_loss(float(loss_sum) / seen, run.step, current_lr)
        stats = f"loss {mean_loss:.4f} acc {int(correct) / seen:.4f} lr {current_lr:.4g}"
        bar.update(task, advance=1, stats=stats)
    loss_sum, correct, seen = distributed.sum_over_ranks(loss_sum, correct, seen)
    if not seen:
        return math.nan, math.nan, current_lr
    return (
        _finite_loss(float(loss_sum) / seen, run.step, current_lr),
        int(correct) / seen,
        current_lr,
    )


class TrainingDiverged(ValueError):
    """The training loss is NaN or infinite: the weights are lost, nothing more is saved."""


def _finite_loss(loss: float, step: int, lr: float) -> float:
    """``loss``, or :class:`TrainingDiverged` naming the step and the likely causes. Read
    where the loss is synchronised anyway (the progress line, the epoch's end)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the training loss became {loss} by step {step} (lr {lr:.4g}): lower the "
            "learning rate (--lr), or look for NaN or infinite values in the data; no "
            "checkpoint of the diverged weights was written"
        )
    return loss


def _fit_settings(
    epochs: int,
    lr: float,
    weight_decay: float,
    momentum: float,
    patience: int | None,
    schedule: Schedule,
    label_smoothing: float,
    steps_per_epoch: int | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the resume file."""
    return {
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "patience": patience,
        "schedule": schedule.to_dict(),
        "label_smoothing": label_smoothing,
        "steps_per_epoch": steps_per_epoch,
        **dict(extra or {}),
    }


def _save_run(
    path: Path,
    run: _Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Any,
    settings: dict[str, Any],
) -> None:
    save_state(
        path,
        TrainState(
            epoch=len(run.history),
            step=run.step,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            torch_rng=torch.get_rng_state(),
            data_rng={"train": train.rng_state()} if hasattr(train, "rng_state") else None,
            history=[e.to_dict() for e in run.history],
            settings=settings,
            best_accuracy=None if run.best_state is None else run.best_acc,
            best_epoch=run.best_epoch,
            since_best=run.since_best,
            best_state=run.best_state,
        ),
    )


def _restore_run(
    path: Path,
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Any,
    settings: dict[str, Any],
) -> _Run:
    check_settings(path, state.settings, settings)
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    torch.set_rng_state(state.torch_rng)
    if state.data_rng is not None and hasattr(train, "set_rng_state"):
        train.set_rng_state(state.data_rng["train"])
    return _Run(
        step=state.step,
        history=[EpochStats.from_dict(e) for e in state.history],
        best_acc=-math.inf if state.best_accuracy is None else state.best_accuracy,
        best_epoch=state.best_epoch,
        best_state=state.best_state,
        since_best=state.since_best,
        earlier_seconds=sum(float(e["seconds"]) for e in state.history),
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
    schedule: Schedule | None = None,
    label_smoothing: float = 0.0,
    state_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    settings: Mapping[str, Any] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train ``model`` in place with SGD (Nesterov momentum) and a per-step schedule.

    ``schedule`` defaults to cosine from ``lr`` to 0 without warm-up. Weight
    decay applies to conv/linear weights, never to BN parameters or biases.
    After each epoch the model is evaluated on ``val``; the weights of the
    epoch with the best val accuracy are restored at the end. With
    ``patience``, training stops after that many epochs without a val
    improvement. Without val (None or empty) the last weights are kept and
    nothing stops early. ``loss_fn(logits, labels, inputs)`` defaults to
    cross-entropy with ``label_smoothing``.

    With ``state_path`` a resume file is written there after every epoch (see
    :mod:`pruner.train_state`); with ``resume`` too and that file present, the
    run continues after its last whole epoch. ``settings`` (JSON values) join
    fit's own in what a resumed run must match. ``on_epoch`` hears each finished epoch.
    """
    _check_counts(epochs, patience)
    schedule = schedule or Schedule()
    loss_fn = loss_fn or smoothed_cross_entropy(label_smoothing)
    model.to(device)
    optimizer = torch.optim.SGD(
        _param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=momentum > 0
    )
    train = distributed.shard(train)  # with a process group, this rank's share of each batch
    check_batch_fits(model, train, device, training=True, doing=f"training {type(model).__name__}")
    steps_per_epoch = _steps_per_epoch(train)
    all_settings = _fit_settings(
        epochs, lr, weight_decay, momentum, patience, schedule, label_smoothing,
        steps_per_epoch, settings,
    )  # fmt: skip

    def set_lr(step: int) -> float:
        # Without len() the schedule steps once per epoch instead of once per batch.
        position = step if steps_per_epoch else len(run.history)
        value = lr * schedule.factor(position, steps_per_epoch or 1, epochs)
        for group in optimizer.param_groups:
            group["lr"] = value
        return value

    path = None if state_path is None else Path(state_path)
    run = _start_run(path, resume, model, optimizer, train, all_settings)
    start = time.perf_counter()
    with (
        distributed.parallel(model, device, distributed.rank_batch_size(train)) as net,
        _progress(progress and distributed.is_main()) as bar,
    ):
        for epoch in range(len(run.history) + 1, epochs + 1):
            if patience is not None and run.since_best >= patience:
                run.stopped_early = True
                break
            t0 = time.perf_counter()
            task = bar.add_task(f"epoch {epoch}/{epochs}", total=steps_per_epoch, stats="")
            loss, acc, current_lr = _train_epoch(
                net, train, optimizer, loss_fn, set_lr, run, device, bar, task
            )
            stats = _close_epoch(model, val, device, run, (epoch, loss, acc), current_lr, t0)
            _report_epoch(bar, task, stats, epochs, log_lines=progress and distributed.is_main())
            if on_epoch is not None:
                on_epoch(stats)
            if path is not None and distributed.is_main():
                _save_run(path, run, model, optimizer, train, all_settings)
    return _finish(model, run, time.perf_counter() - start)


def _check_counts(epochs: int, patience: int | None) -> None:
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience}")


def _close_epoch(
    model: nn.Module,
    val: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    device: str,
    run: _Run,
    figures: tuple[int, float, float],
    lr: float,
    t0: float,
) -> EpochStats:
    """Evaluate on ``val`` and record the epoch (``figures``: number, train loss, train accuracy)."""
    distributed.average_buffers(model)  # every rank evaluates and keeps the same model
    val_result = evaluate(model, val, device) if val is not None else None
    if val_result is not None and val_result.n == 0:
        val_result = None
    stats = EpochStats(*figures, val_result, lr, time.perf_counter() - t0)
    run.record(stats, model)
    return stats


def _start_run(
    path: Path | None,
    resume: bool,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: dict[str, Any],
) -> _Run:
    """A fresh run, or the one ``path`` holds when resuming and the file is there.

    Rank 0 reads the file and hands every rank its contents.
    """
    if path is None or not resume:
        return _Run()
    state = distributed.from_main(lambda: load_state(path) if path.is_file() else None)
    if state is None:
        return _Run()
    return _restore_run(path, state, model, optimizer, train, settings)


def _report_epoch(bar: Any, task: Any, stats: EpochStats, epochs: int, log_lines: bool) -> None:
    """Show an epoch's figures on its progress bar; a log file gets one line per epoch."""
    summary = f"loss {stats.train_loss:.4f} acc {stats.train_accuracy:.4f}"
    if stats.val is not None:
        summary += f" | val acc {stats.val.accuracy:.4f} loss {stats.val.loss:.4f}"
    bar.update(task, stats=summary)
    if log_lines and not bar.console.is_terminal:
        bar.console.print(
            f"epoch {stats.epoch}/{epochs} {summary} lr {stats.lr:.4g} {stats.seconds:.1f} s",
            soft_wrap=True,  # one line, however long: logs are read by grep
            highlight=False,
        )


def _finish(model: nn.Module, run: _Run, seconds: float) -> FitResult:
    """Restore the best val epoch's weights (when there was a val split) and say what ran.

    ``seconds`` is this call's wall time; a resumed run adds the seconds its
    inherited epochs took, so the total counts each epoch once.
    """
    best_acc, best_epoch = run.best_acc, run.best_epoch
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    else:
        best_epoch, best_acc = len(run.history), math.nan
    return FitResult(
        history=tuple(run.history),
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        stopped_early=run.stopped_early,
        seconds=run.earlier_seconds + seconds,
    )


# ---------------------------------------------------------------------------- baselines
