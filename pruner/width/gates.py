"""Gates on the channels (the groups' BatchNorm scales), trained closed toward size targets.

During training, after each step, the current size at the open widths is
compared with the target; while it is over, the gradient of the size with
respect to the widths says what one channel of each group costs, and the open
channel with the lowest magnitude per unit of cost closes, against the task
loss that holds useful channels open. The budget is thereby allocated across
layers globally: expensive layers give up channels first, and within a group
the weakest close first. A closed channel outputs zero, so removing it does
not change what the network computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import distributed
from ..distill import kd_loss
from .space import ChannelSpace, CostFn

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Gates:
    """The BatchNorm scales of each channel group, used as its channels' gates.

    A channel's magnitude is the mean |weight| of the group's BatchNorms over
    that channel, in units of the group's initial mean (so groups compare).
    Closing a channel zeroes its BatchNorm weights and biases (and keeps them
    zero), a gate on the channel's output: a closed channel outputs zero and
    can be removed without changing what the network computes. Groups without
    a BatchNorm keep their width.
    """

    def __init__(self, space: ChannelSpace) -> None:
        self.space = space
        # Each group's BatchNorms with the channels of theirs that are the group's.
        self.sites = [
            [
                (bn := space.model.get_submodule(s), torch.tensor(idx, device=bn.weight.device))
                for s, idx in zip(g.scales, g.scale_channels)
            ]
            for g in space.groups
        ]
        self.unit = [
            float(torch.stack([m.weight.detach()[i].abs() for m, i in bns]).mean()) or 1.0
            if bns
            else 1.0
            for bns in self.sites
        ]

        self.closed = [torch.zeros(g.size, dtype=torch.bool) for g in space.groups]

    def magnitudes(self) -> list[torch.Tensor]:
        """Per group, each channel's mean |BatchNorm weight| / the group's initial mean (0 if closed)."""
        out = []
        for gi, bns in enumerate(self.sites):
            if not bns:
                out.append(torch.ones(self.space.groups[gi].size))
                continue
            w = torch.stack([m.weight.detach()[i].abs().float().cpu() for m, i in bns]).mean(0)
            out.append((w / self.unit[gi]).masked_fill(self.closed[gi], 0.0))
        return out

    def widths(self) -> list[float]:
        """Open channels per group."""
        return [float((~c).sum()) for c in self.closed]

    def close(self, group: int, channel: int) -> None:
        self.closed[group][channel] = True

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the weight and bias of every closed channel's BatchNorms (after each step)."""
        for gi, bns in enumerate(self.sites):
            if not bool(self.closed[gi].any()):
                continue
            for m, i in bns:
                keep = (~self.closed[gi]).to(m.weight)
                m.weight[i] *= keep
                if m.bias is not None:
                    m.bias[i] *= keep


@dataclass(frozen=True)
class Target:
    """A size constraint: ``cost(widths) <= ratio * cost(full widths)``."""

    name: str  # "macs" | "params" | "latency"
    ratio: float
    cost: CostFn
    base: float

    def ratio_at(self, n: torch.Tensor) -> float:
        return float(self.cost(n)) / self.base


def size_targets(
    space: ChannelSpace, macs: float | None = None, params: float | None = None
) -> list[Target]:
    """Targets for MACs and/or parameter ratios in (0, 1]."""
    out = []
    for name, ratio, cost, base in (
        ("macs", macs, space.macs, space.base_macs),
        ("params", params, space.params, space.base_params),
    ):
        if ratio is None:
            continue
        if not 0.0 < ratio <= 1.0:
            raise ValueError(
                f"target_{name} is a ratio of the unpruned model in (0, 1], got {ratio}"
            )
        out.append(Target(name, float(ratio), cost, base))
    return out


@dataclass(frozen=True)
class GateRecord:
    """Where gate training ended: per target the ratio at the open widths, channels closed."""

    steps: int
    ratios: dict[str, float]
    closed: int
    open_channels: int


def _task_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    teacher: nn.Module | None,
) -> None:
    """One SGD step on the task loss: KD from ``teacher`` when given, else cross-entropy."""
    out = net(x)
    if teacher is not None:
        with torch.no_grad():
            t = teacher(x)
        loss = kd_loss(out, t, y)
    else:
        loss = nn.functional.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train_gates(
    model: nn.Module,
    gates: Gates,
    targets: Sequence[Target],
    batches: Batches,
    epochs: int = 1,
    lr: float = 0.01,
    ramp: float = 0.5,
    round_to: int = 8,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> GateRecord:
    """Train ``model`` (SGD on the task loss: KD from ``teacher`` when given, else
    cross-entropy) while closing channel gates until ``targets`` hold.

    Each target's ratio is lowered linearly from 1 to its value over the first
    ``ramp`` of the steps. After each step, while the model is over the current
    ratios, the open channel with the lowest magnitude per unit of cost is
    closed; a channel's cost is the gradient of the exceeded ratios with
    respect to its group's width, recomputed every step, so the budget is
    spread over the layers by what each channel costs now. No group closes
    below ``round_to`` channels. Training between steps moves the magnitudes
    the task needs.

    With a process group, each rank trains on its share of every batch and DDP
    averages the gradients, the gates' (the BatchNorm scales) among them: every
    rank holds the same magnitudes and closes the same channels; rank 0's closed
    channels are handed to all at the end even so.
    """
    model.train()
    if teacher is not None:
        teacher.eval()
    weights = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(weights, lr=lr, momentum=0.9, weight_decay=5e-4)
    batches = distributed.shard(batches)
    total = epochs * len(batches) if hasattr(batches, "__len__") else 0
    ramp_steps = max(1, round(ramp * total)) if total else 1
    steps = closed = 0
    with distributed.parallel(model, device, distributed.rank_batch_size(batches)) as net:
        for _ in range(epochs):
            for x, y in batches:
                _task_step(net, opt, x.to(device), y.to(device), teacher)
                steps += 1
                frac = min(1.0, steps / ramp_steps)
                closed += _close_to(gates, targets, frac, round_to)
                gates.apply()
                if progress is not None:
                    progress("gates", steps, total)
    gates.closed = distributed.broadcast_object(gates.closed)
    closed += _close_to(gates, targets, 1.0, round_to)  # however few steps there were
    gates.apply()
    n = gates.widths()
    return GateRecord(
        steps=steps,
        ratios={tg.name: tg.ratio_at(n) for tg in targets},
        closed=closed,
        open_channels=int(sum(n)),
    )


def _close_to(gates: Gates, targets: Sequence[Target], frac: float, round_to: int) -> int:
    """Close the cheapest-to-lose channels until each ratio is at most 1 - frac * (1 - target)."""
    goals = [1.0 - frac * (1.0 - tg.ratio) for tg in targets]
    widths = gates.widths()
    over = [tg.ratio_at(widths) - goal for tg, goal in zip(targets, goals)]
    if all(o <= 0 for o in over):
        return 0
    n = torch.tensor(widths, dtype=torch.float64, requires_grad=True)
    exceeded = [tg.cost(n) / tg.base for tg, o in zip(targets, over) if o > 0]
    (grad,) = torch.autograd.grad(sum(exceeded), n, allow_unused=True)
    if grad is None:
        return 0
    cost = grad.clamp(min=1e-12)
    mags = gates.magnitudes()
    # Every open channel of a prunable group, as (magnitude / cost of its group's channels).
    score = []
    for gi, m in enumerate(mags):
        if not gates.sites[gi]:
            continue
        for c in torch.nonzero(~gates.closed[gi]).flatten().tolist():
            score.append((float(m[c]) / float(cost[gi]), gi, c))
    score.sort()
    count = 0
    for _, gi, c in score:
        if widths[gi] <= round_to:
            continue
        gates.close(gi, c)
        widths[gi] -= 1
        count += 1
        if all(tg.ratio_at(widths) <= goal for tg, goal in zip(targets, goals)):
            break
    return count
