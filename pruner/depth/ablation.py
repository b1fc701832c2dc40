"""What removing each block alone costs the whole model: its held-out loss rise.

The DBP probes ask how much a block adds to the linear separability of the
features at its depth; this asks the model itself. For every removable block,
a variant of the model with only that block replaced (identity, shortcut, a
least-squares adapter, or a dense layer's zero contribution) is scored on the
held-out split, beside the unchanged model on the very same images, so each
rise is paired and carries its standard error. Variants share the model's
parameters (only a dense layer's removal, which slices its readers' weights,
needs a copy), and the held-out split is read once: every batch runs through
the model and all its variants before the next is drawn, each variant from
where it first differs from the model (:class:`~.prefix.SharedPrefix`).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from profiler import Block, discover, without_blocks

from .. import distributed
from ..config import DepthOptions
from .adapters import fit_adapters
from .paired import outcomes, paired_se
from .prefix import SharedPrefix
from .surgery import remove_blocks

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RemovalScore:
    """The model with one block removed, scored on the held-out split beside the whole model.

    ``loss`` (mean cross-entropy, nats) and ``accuracy`` (fraction in [0, 1]) are
    the variant's; ``loss_rise`` and ``accuracy_drop`` are how much worse it is
    than the whole model on the same ``samples`` images (either can be negative),
    each with its paired standard error.
    """

    name: str
    loss: float
    accuracy: float
    loss_rise: float
    accuracy_drop: float
    loss_rise_se: float
    accuracy_drop_se: float
    samples: int


class _Outcomes:
    """Per-sample (right, cross-entropy) of one model, accumulated over batches."""

    def __init__(self) -> None:
        self.right: list[torch.Tensor] = []
        self.loss: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        right, loss = outcomes(logits, y)
        self.right.append(right.cpu())
        self.loss.append(loss.cpu())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.right), torch.cat(self.loss)


def _variant(gm: fx.GraphModule, block: Block, adapters: dict[str, nn.Conv2d]) -> fx.GraphModule:
    """``gm`` without ``block``, sharing ``gm``'s parameters where the removal leaves them be."""
    if block.replacement == "zero":  # slices the weights of what reads the dense layer
        return remove_blocks(copy.deepcopy(gm), [block])
    return without_blocks(gm, [block], adapters)


def _variants(
    model: nn.Module, names: Iterable[str], first_x: torch.Tensor, calibration: Batches
) -> tuple[fx.GraphModule, dict[str, fx.GraphModule]]:
    """The traced model and one variant per name of a removable block it still has."""
    bg = discover(model, first_x[:1])
    present = {b.name: b for b in bg.blocks if b.removable and b.replacement != "none"}
    chosen = [present[n] for n in names if n in present]
    adapters = fit_adapters(bg.gm, chosen, calibration)
    return bg.gm, {b.name: _variant(bg.gm, b, adapters) for b in chosen}


def _owned(names: Sequence[str]) -> list[str]:
    """The names this rank evaluates (every one without a process group)."""
    return [n for i, n in enumerate(names) if distributed.owns(i)]


# Images per forward on a CPU: a ResNet stage's activations for 64 images at 28x28 stay in
# cache; the shipped resnet56 ran 0.66 ms per image in batches of 64, 1.04-1.39 in 128-256.
CPU_CHUNK = 64


def _evaluate(
    runner: SharedPrefix,
    eval_batches: Batches,
    max_eval: int | None,
    device: str,
    progress: ProgressFn | None,
) -> tuple[_Outcomes, dict[str, _Outcomes]]:
    """The whole model's and every variant's per-sample outcomes on the held-out split."""
    base, results = _Outcomes(), {n: _Outcomes() for n in runner.variants}
    chunk = CPU_CHUNK if torch.device(device).type == "cpu" else None
    seen = 0
    for x, y in eval_batches:
        if max_eval is not None and seen >= max_eval:
            break
        if max_eval is not None:
            x, y = x[: max_eval - seen], y[: max_eval - seen]
        for xc, yc in zip(x.split(chunk or len(x)), y.split(chunk or len(y)), strict=True):
            xc, yc = xc.to(device), yc.to(device).long()
            base_out, outs = runner(xc)
            base.add(base_out, yc)
            for n, out in outs.items():
                results[n].add(out, yc)
        seen += len(y)
        if progress:
            progress("removals", seen, max_eval or seen)
    return base, results


def _score(name: str, right: torch.Tensor, loss: torch.Tensor, variant: _Outcomes) -> RemovalScore:
    """``variant`` against the whole model's per-sample ``right`` and ``loss`` (N,)."""
    v_right, v_loss = variant.tensors()
    return RemovalScore(
        name=name,
        loss=float(v_loss.mean()),
        accuracy=float(v_right.mean()),
        loss_rise=float((v_loss - loss).mean()),
        accuracy_drop=float((right - v_right).mean()),
        loss_rise_se=paired_se(v_loss - loss),
        accuracy_drop_se=paired_se(right - v_right),
        samples=len(loss),
    )


@torch.no_grad()
def removal_scores(
    model: nn.Module,
    blocks: Sequence[Block],
    eval_batches: Batches,
    calibration: Batches,
    *,
    max_eval: int | None = DepthOptions.heldout_samples,
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> tuple[RemovalScore, ...]:
    """One :class:`RemovalScore` per block of ``blocks`` that ``model`` still has and can lose.

    ``blocks`` are records of the unpruned model (found again in ``model`` by
    name); adapters are fit on ``calibration`` as surgery fits them. At most
    ``max_eval`` held-out images are used. With a process group, rank r scores
    blocks r, r + N, ... and all get every score. Scores come in network order.
    """
    if max_eval is not None and max_eval < 1:
        raise ValueError(f"max_eval must be at least 1, got {max_eval}")
    batches = iter(eval_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError(
            "no held-out batches to score blocks on: the held-out split is empty (too few "
            "training samples to hold any out: raise --limit, or give a dataset with a val split)"
        )
    batches = itertools.chain([first], batches)  # the first batch traced the model: read once
    gm, variants = _variants(model, [b.name for b in blocks], first[0].to(device), calibration)
    names = list(variants)
    mine = {n: variants[n] for n in _owned(names)}
    was_training = model.training  # gm and the variants share its modules
    try:
        for m in (gm, *mine.values()):
            m.eval()
        base, results = _evaluate(SharedPrefix(gm, mine), batches, max_eval, device, progress)
    finally:
        model.train(was_training)
    right, loss = base.tensors()
    done = distributed.map_in_turns(names, lambda n: _score(n, right, loss, results[n]))
    return tuple(done[n] for n in names)
