"""DBP discrimination scores: a linear probe on each block's globally pooled output.

After "Discrimination based Block-level Pruning" (arXiv 1912.10178). The traced
graph runs under an fx Interpreter that global-average-pools the output of
every block (and the network input, the baseline of the first block) as it is
produced, batch by batch: only pooled vectors (N, C) are kept, never feature
maps. A multinomial logistic regression fit on the calibration split and
scored on the held-out split tells how linearly separable the classes are at
that depth. A block's gain is how much its probe improves on the probe before
it; a block with little gain adds little discrimination.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from profiler import Block, discover, trace
from profiler.plain import from_plain, to_plain

from .. import distributed
from ..config import DepthOptions
from .paired import outcomes, paired_se

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
ProgressFn = Callable[[str, int, int], None]
INPUT = "<input>"  # the name of the probe on the pooled network input
LABELS = "<labels>"  # the labels, gathered over ranks beside the features
METRICS = ("loss", "accuracy")


@dataclass(frozen=True)
class BlockScore:
    """The probe on one block's pooled output (C features), scored on the held-out split.

    ``accuracy`` is a fraction in [0, 1]; ``loss`` is the mean cross-entropy in
    nats. ``gain`` is the improvement over the previous probe in the chosen
    metric (loss decrease in nats, or accuracy increase); it can be negative.
    ``loss_gain_se`` and ``accuracy_gain_se`` are the standard errors of the gains
    over the held-out samples (both probes are scored on the same samples, so
    paired): a gain within about two of them of another is not told apart from
    it by this held-out split. None in records written before they were kept.
    """

    name: str
    accuracy: float
    loss: float
    gain: float
    accuracy_gain: float
    loss_gain: float
    features: int
    previous: str
    loss_gain_se: float | None = None
    accuracy_gain_se: float | None = None


def scores_to_json(scores: Iterable[BlockScore]) -> str:
    return json.dumps(to_plain(tuple(scores)), indent=2)


def scores_from_json(text: str) -> tuple[BlockScore, ...]:
    return from_plain(tuple[BlockScore, ...], json.loads(text))


class _Pooler(fx.Interpreter):
    """Runs the graph and keeps the global average pool (B, C) of the requested nodes."""

    def __init__(self, gm: fx.GraphModule, keep: set[str]) -> None:
        super().__init__(gm)
        self.keep = keep  # node names
        self.pooled: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        # Pool at once: a later in-place op (ReLU(inplace=True)) would change the value.
        if n.name in self.keep and isinstance(value, torch.Tensor):
            self.pooled[n.name] = _pool(value)
        return value


def _feature_nodes(block: Block) -> tuple[str, ...]:
    """The nodes whose pooled outputs, side by side, are what the network holds after ``block``.

    A dense layer's output is only its new channels; what follows reads them
    concatenated to the layer's input, so its probe sees both (pooling is per
    channel, so pooling the parts is pooling the concatenation).
    """
    if block.kind == "dense" and block.input_node:
        return (block.input_node, block.output_node)
    return (block.output_node,)


def _pool(t: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) -> (B, C) float32 mean over every axis after the channel axis."""
    t = t.detach().float()
    return t.flatten(2).mean(2) if t.dim() > 2 else t.reshape(t.shape[0], -1)


@torch.no_grad()
def pooled_features(
    gm: fx.GraphModule,
    blocks: Iterable[Block],
    batches: Batches,
    max_samples: int | None = None,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features per block name (and ``INPUT``), each (N, C) float32, and labels (N,).

    Streams ``batches`` and stops after ``max_samples``; memory is N x sum(C). With
    a process group each rank pools every N-th batch, and all get every row.
    """
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    wanted = {INPUT: (placeholders[0],), **{b.name: _feature_nodes(b) for b in blocks}}
    keep = {n for nodes in wanted.values() for n in nodes}
    was_training = gm.training
    gm.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in wanted}
    labels: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    try:
        for x, y, at in _own_batches(batches, max_samples):
            pooler = _Pooler(gm, keep)
            pooler.run(x.to(device))
            for k, nodes in wanted.items():
                got = [pooler.pooled[n] for n in nodes if n in pooler.pooled]
                parts[k].append(torch.cat(got, 1).cpu())
            labels.append(y.cpu().long())
            positions.append(torch.arange(at, at + len(y)))
    finally:
        gm.train(was_training)
    if distributed.active():  # every rank gets all rows, in the order one process has them
        _, rows = distributed.gather_rows(positions, {**parts, LABELS: labels})
        parts, labels = {k: [rows[k]] for k in parts}, [rows[LABELS]]
        labels = labels if len(labels[0]) else []
    if not labels:
        raise ValueError("no calibration batches: the data split is empty")
    return {k: torch.cat(v) for k, v in parts.items()}, torch.cat(labels)


def _own_batches(
    batches: Batches, max_samples: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(x, y, place of the first row in the stream) up to ``max_samples`` rows in all.

    With a process group, every rank draws every batch (the shuffling generator
    stays the same on all) but yields only every N-th.
    """
    seen = 0
    for i, (x, y) in enumerate(batches):
        if max_samples is not None and seen >= max_samples:
            return
        if max_samples is not None and seen + len(y) > max_samples:
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        if distributed.owns(i):
            yield x, y, seen
        seen += len(y)


@dataclass(frozen=True)
class Probe:
    """A multinomial logistic regression on standardised features: logits = ((x - mean) / std) W^T + b."""

    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    weight: torch.Tensor  # (K, C)
    bias: torch.Tensor  # (K,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


def fit_probe(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1.0, iterations: int = 200
) -> Probe:
    """Fit a probe on features x (N, C) and labels y (N,): scikit-learn's L-BFGS logistic regression.

    The L2 penalty (``l2`` = 1 / C) keeps the fit finite on separable features and the
    probe calibrated: a weakly regularised probe on a few hundred samples per class is
    overconfident on wide late-stage features, and its held-out cross-entropy then rises
    with depth although its accuracy does not fall, which would make late blocks look useless.
    Classes absent from ``y`` get a bias of -inf-like magnitude (never predicted).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = x.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)  # constant channels: no division by zero
    z = ((x - mean) / std).numpy()
    labels = y.numpy()
    weight = torch.zeros(num_classes, x.shape[1])
    bias = torch.full((num_classes,), -30.0)
    present = sorted(set(labels.tolist()))
    if len(present) == 1:
        bias[present[0]] = 0.0  # one class: the probe predicts it, whatever the features
    else:
        clf = LogisticRegression(C=1.0 / l2, max_iter=iterations)
        with warnings.catch_warnings():
            # A probe need not converge to the last digit to rank blocks.
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(z, labels)
        coef = torch.as_tensor(clf.coef_, dtype=torch.float32)
        icpt = torch.as_tensor(clf.intercept_, dtype=torch.float32)
        if len(present) == 2:  # binary: sklearn returns one row for the second class
            coef, icpt = torch.cat([-coef / 2, coef / 2]), torch.cat([-icpt / 2, icpt / 2])
        idx = torch.as_tensor([int(c) for c in clf.classes_])
        weight[idx], bias[idx] = coef, icpt
    return Probe(mean.float(), std.float(), weight, bias)


def probe_outcomes(
    probe: Probe, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample of x (N, C), y (N,): (1.0 where ``probe`` is right else 0.0, cross-entropy
    in nats), each (N,) float32."""
    return outcomes(probe.logits(x.float()), y)


def probe_metrics(probe: Probe, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy in nats) of ``probe`` on x (N, C), y (N,)."""
    right, loss = probe_outcomes(probe, x, y)
    return float(right.mean()), float(loss.mean())


def score_features(
    fit_x: dict[str, torch.Tensor],
    fit_y: torch.Tensor,
    eval_x: dict[str, torch.Tensor],
    eval_y: torch.Tensor,
    order: list[str],
    num_classes: int,
    metric: str = "loss",
    progress: ProgressFn | None = None,
) -> tuple[BlockScore, ...]:
    """Scores of the blocks named in ``order`` (network order); the probe before the first is ``INPUT``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    names = [INPUT, *order]

    def fit_and_score(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return probe_outcomes(fit_probe(fit_x[name], fit_y, num_classes), eval_x[name], eval_y)

    done = (lambda k, total: progress("probes", k, total)) if progress else None
    # With a process group each rank fits every N-th probe, and all get every result.
    results = distributed.map_in_turns(names, fit_and_score, done)
    means = {k: (float(right.mean()), float(loss.mean())) for k, (right, loss) in results.items()}
    scores = []
    for prev, name in zip(names, names[1:]):
        (right, loss), (prev_right, prev_loss) = results[name], results[prev]
        (acc, mean_loss), (prev_acc, prev_mean_loss) = means[name], means[prev]
        acc_gain = acc - prev_acc
        loss_gain = prev_mean_loss - mean_loss
        scores.append(
            BlockScore(
                name=name,
                accuracy=acc,
                loss=mean_loss,
                gain=loss_gain if metric == "loss" else acc_gain,
                accuracy_gain=acc_gain,
                loss_gain=loss_gain,
                features=int(fit_x[name].shape[1]),
                previous=prev,
                loss_gain_se=paired_se(prev_loss - loss),
                accuracy_gain_se=paired_se(right - prev_right),
            )
        )
    return tuple(scores)


def score_blocks(
    model: nn.Module,
    fit_batches: Batches,
    eval_batches: Batches,
    num_classes: int,
    *,
    blocks: Iterable[Block] | None = None,
    max_fit: int | None = DepthOptions.calibration_samples,
    max_eval: int | None = DepthOptions.heldout_samples,
    metric: str = "loss",
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> tuple[BlockScore, ...]:
    """DBP scores for every block of ``model`` (or the given ``blocks`` of its traced graph).

    Probes are fit on at most ``max_fit`` samples of ``fit_batches`` and scored
    on at most ``max_eval`` samples of ``eval_batches`` (two disjoint splits,
    e.g. train and val). Scores come in network order.
    """
    if progress:
        progress("features", 0, 2)
    if blocks is None:
        first_x, _ = next(iter(eval_batches))
        bg = discover(model, first_x[:1].to(device))
        gm, blocks = bg.gm, bg.blocks
    else:
        gm = trace(model)  # node names are deterministic: the blocks' names hold
    blocks = list(blocks)
    order_of = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    blocks.sort(key=lambda b: order_of[b.output_node])
    fx_, fy = pooled_features(gm, blocks, fit_batches, max_fit, device)
    if progress:
        progress("features", 1, 2)
    ex, ey = pooled_features(gm, blocks, eval_batches, max_eval, device)
    if progress:
        progress("features", 2, 2)
    for y, what in ((fy, "calibration"), (ey, "held-out")):
        if int(y.max()) >= num_classes:
            raise ValueError(
                f"{what} labels reach {int(y.max())}, but the model has {num_classes} classes"
            )
    scores = score_features(
        fx_, fy, ex, ey, [b.name for b in blocks], num_classes, metric, progress
    )
    if any(math.isnan(s.loss) for s in scores):
        raise ValueError("a probe's loss is NaN: the features contain NaN or inf")
    return scores
