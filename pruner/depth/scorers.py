"""How much each block is worth keeping: DBP probes, removal loss, mean |weight| (L1) and random.

A scorer maps a model and its blocks to one gain per block name (higher:
keep first). Selection reads nothing else, so a new criterion is one class.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from profiler import Block, trace

from ..config import DepthOptions
from .ablation import RemovalScore, removal_scores
from .discrimination import BlockScore, score_blocks

ProgressFn = Callable[[str, int, int], None]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Scores:
    """One gain per block name, and the records behind them: probes (DBP) or removals."""

    gains: dict[str, float]
    probes: tuple[BlockScore, ...] = ()
    removals: tuple[RemovalScore, ...] = ()


class Scorer(Protocol):
    """Scores blocks of ``model``; ``refresh``: worth re-running on the pruned model (iterative mode)."""

    refresh: ClassVar[bool]

    def __call__(self, model: nn.Module, blocks: Sequence[Block]) -> Scores: ...


@dataclass(frozen=True)
class ProbeScorer:
    """DBP: the discrimination gain of each block's linear probe over the probe before it.

    The probes find the blocks on ``model`` itself (after removals it has fewer
    than ``blocks``); a block no longer there scores nothing.
    """

    fit_batches: Batches
    eval_batches: Batches
    num_classes: int
    max_fit: int | None = DepthOptions.calibration_samples
    max_eval: int | None = DepthOptions.heldout_samples
    device: str = "cpu"
    progress: ProgressFn | None = field(default=None, compare=False)
    refresh: ClassVar[bool] = True

    def __call__(self, model: nn.Module, blocks: Sequence[Block]) -> Scores:
        scores = score_blocks(
            model,
            self.fit_batches,
            self.eval_batches,
            self.num_classes,
            max_fit=self.max_fit,
            max_eval=self.max_eval,
            device=self.device,
            progress=self.progress,
        )
        return Scores({s.name: s.gain for s in scores}, scores)


@dataclass(frozen=True)
class RemovalScorer:
    """The held-out loss rise of the whole model when each block alone is removed.

    ``calibration`` fits the adapters of blocks that need one. Blocks ``model``
    no longer has (after removals) score nothing.
    """

    eval_batches: Batches
    calibration: Batches
    max_eval: int | None = DepthOptions.heldout_samples
    device: str = "cpu"
    progress: ProgressFn | None = field(default=None, compare=False)
    refresh: ClassVar[bool] = True

    def __call__(self, model: nn.Module, blocks: Sequence[Block]) -> Scores:
        scores = removal_scores(
            model,
            blocks,
            self.eval_batches,
            self.calibration,
            max_eval=self.max_eval,
            device=self.device,
            progress=self.progress,
        )
        return Scores({s.name: s.loss_rise for s in scores}, removals=scores)


@dataclass(frozen=True)
class L1Scorer:
    """The lowest-L1-norm baseline: mean |weight| over each block's convolution weights."""

    refresh: ClassVar[bool] = False

    def __call__(self, model: nn.Module, blocks: Sequence[Block]) -> Scores:
        gm = trace(model)
        gains = {}
        for b in blocks:
            total, count = 0.0, 0
            seen: set[int] = set()
            for n in gm.graph.nodes:
                if n.name in b.nodes and n.op == "call_module":
                    w = getattr(gm.get_submodule(n.target), "weight", None)
                    if isinstance(w, torch.Tensor) and w.dim() == 4 and id(w) not in seen:
                        seen.add(id(w))
                        total += float(w.detach().abs().sum())
                        count += w.numel()
            gains[b.name] = total / count if count else 0.0
        return Scores(gains)


@dataclass(frozen=True)
class RandomScorer:
    """The random baseline: a seeded uniform draw per block, in network order."""

    seed: int = 0
    refresh: ClassVar[bool] = False

    def __call__(self, model: Any, blocks: Sequence[Block]) -> Scores:
        rng = random.Random(self.seed)
        return Scores({b.name: rng.random() for b in blocks})
