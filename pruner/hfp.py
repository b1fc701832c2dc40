"""Holistic filter pruning (HFP): exact parameter and multiplication targets by gradient descent.

Channels that can only go together (a conv's filters, the BatchNorm after it,
the next conv's input channels, every producer of a residual stream) form one
group; Torch-Pruning's ``DependencyGraph`` finds the groups. The BatchNorm
scales of a group are its channels' gates.

The network's size is a polynomial in the groups' widths: a conv costs
``k_h*k_w * H_out*W_out * n_in/groups * n_out`` multiplications and
``k_h*k_w * n_in/groups * n_out`` weights. During training, after each step,
the current size at the open widths is compared with the target; while it is
over, the gradient of the size with respect to the widths says what one
channel of each group costs, and every gate shrinks (soft-thresholding, gate
and bias together) in proportion to that cost, against the task loss that
holds useful channels open. The pruning budget is thereby allocated across
layers globally: expensive layers give up channels first, and within a group
the weakest close first.

Then each group keeps its strongest channels, counts rounded to a multiple (8
by default) and fitted exactly to the target by a greedy exchange, and the
channels are removed physically by the dependency graph. A closed channel
outputs zero, so removing it does not change what the network computes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .select import BudgetError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# Group widths: a float64 tensor (differentiable costs) or a list of floats (fast exact costs).
Widths = torch.Tensor | Sequence[float]
CostFn = Callable[[Widths], Any]


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as e:  # a core dependency; only a broken install lacks it
        raise ImportError("filter pruning needs Torch-Pruning: pip install torch-pruning") from e
    return torch_pruning


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels: ``root`` is the conv whose output channels index the group."""

    root: str
    size: int
    scales: tuple[str, ...]  # the group's BatchNorms: their weights gate the channels
    members: tuple[str, ...]


@dataclass(frozen=True)
class CostLayer:
    """A module whose size depends on group widths; group index -1 means a fixed width."""

    name: str
    kind: str  # "conv" | "linear" | "bn"
    in_channels: int
    out_channels: int
    in_group: int
    out_group: int
    kernel: int = 1
    pixels: int = 1
    conv_groups: int = 1
    bias: bool = False

    @property
    def depthwise(self) -> bool:
        return (
            self.kind == "conv" and self.conv_groups > 1 and self.conv_groups == self.out_channels
        )

    def widths(self, n: Widths) -> tuple[Any, Any]:
        cin = n[self.in_group] if self.in_group >= 0 else float(self.in_channels)
        cout = n[self.out_group] if self.out_group >= 0 else float(self.out_channels)
        return cin, cout

    def macs(self, n: Widths) -> Any:
        cin, cout = self.widths(n)
        if self.kind == "bn":
            return 0.0
        if self.depthwise:
            return self.kernel * self.pixels * cout
        return self.kernel * self.pixels * cin * cout / self.conv_groups

    def params(self, n: Widths) -> Any:
        cin, cout = self.widths(n)
        if self.kind == "bn":
            return 2 * cout
        weights = (
            self.kernel * cout if self.depthwise else self.kernel * cin * cout / self.conv_groups
        )
        return weights + (cout if self.bias else 0.0)


class ChannelSpace:
    """The prunable channel groups of ``model`` and its MACs and params as functions of their widths.

    ``example`` is one input batch (B, C, H, W); MACs are per image. The last
    layer (the classifier) keeps its outputs. The dependency graph holds
    ``model``'s own modules: :meth:`remove` prunes that very model.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        tp = _tp()
        self.model = model
        self.input_shape = tuple(example[:1].shape)
        self.input_hw: dict[str, tuple[int, int]] = {}  # each conv's input (H, W)
        names = {m: n for n, m in model.named_modules()}
        order: list[nn.Module] = []
        pixels: dict[nn.Module, int] = {}

        def record(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            order.append(m)
            pixels[m] = int(out[0, 0].numel()) if out.dim() == 4 else 1
            if out.dim() == 4:
                self.input_hw[names[m]] = (int(inp[0].shape[-2]), int(inp[0].shape[-1]))

        hooks = [
            m.register_forward_hook(record)
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(example[:1])
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        if not order:
            raise ValueError("the model has no Conv2d or Linear layer: nothing to prune")
        head = order[-1]  # what the model outputs is not the pruner's to change
        with torch.enable_grad():
            self.dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example[:1], verbose=False
            )
        groups: list[ChannelGroup] = []
        out_group: dict[nn.Module, int] = {}
        in_group: dict[nn.Module, int] = {}
        for grp in self.dg.get_all_groups(ignored_layers=[head], root_module_types=[nn.Conv2d]):
            root = grp[0].dep.target.module
            gi = len(groups)
            scales, members = [], []
            for item in grp:
                m, fn = item.dep.target.module, item.dep.handler
                if not isinstance(m, nn.Module) or m not in names:
                    continue
                members.append(names[m])
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    out_group[m] = gi
                    scales.append(names[m])
                elif self.dg.is_out_channel_pruning_fn(fn):
                    out_group[m] = gi
                elif self.dg.is_in_channel_pruning_fn(fn):
                    in_group[m] = gi
            groups.append(
                ChannelGroup(
                    root=names[root],
                    size=int(root.out_channels),
                    scales=tuple(dict.fromkeys(scales)),
                    members=tuple(dict.fromkeys(members)),
                )
            )
        self.groups = tuple(groups)
        layers: list[CostLayer] = []
        for m in model.modules():
            name = names[m]
            if isinstance(m, nn.Conv2d):
                og = out_group.get(m, -1)
                ig = og if (m.groups > 1 and m.groups == m.out_channels) else in_group.get(m, -1)
                layers.append(
                    CostLayer(
                        name, "conv", m.in_channels, m.out_channels, ig, og,
                        m.kernel_size[0] * m.kernel_size[1], pixels.get(m, 0), m.groups,
                        m.bias is not None,
                    )
                )  # fmt: skip
            elif isinstance(m, nn.Linear):
                layers.append(
                    CostLayer(
                        name, "linear", m.in_features, m.out_features,
                        in_group.get(m, -1), out_group.get(m, -1), bias=m.bias is not None,
                    )
                )  # fmt: skip
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                layers.append(
                    CostLayer(name, "bn", m.num_features, m.num_features, -1, out_group.get(m, -1))
                )
        self.layers = tuple(layers)
        self.full = [float(g.size) for g in self.groups]
        total = sum(p.numel() for p in model.parameters())
        self.fixed_params = 0.0
        self.fixed_params = total - float(self.params(self.full))
        self.base_macs = float(self.macs(self.full))
        self.base_params = float(total)

    def macs(self, n: Widths) -> Any:
        """Multiply-accumulates per image at group widths ``n`` (G values; a tensor stays differentiable)."""
        return sum((layer.macs(n) for layer in self.layers), 0.0)

    def params(self, n: Widths) -> Any:
        """Parameter count at group widths ``n`` (G values; a tensor stays differentiable)."""
        return sum((layer.params(n) for layer in self.layers), 0.0) + self.fixed_params

    def allowed(self, group: int, round_to: int) -> list[int]:
        """Widths group ``group`` may keep: multiples of ``round_to`` below its size, and its size."""
        g = self.groups[group]
        if not g.scales:  # no BatchNorm to gate it: the group keeps its width
            return [g.size]
        return sorted({k for k in range(round_to, g.size, round_to)} | {g.size})

    def remove(self, keep: dict[str, Sequence[int]]) -> None:
        """Physically keep only the listed channels of each named group (by root) in ``self.model``."""
        by_root = {g.root: g for g in self.groups}
        for root, idxs in keep.items():
            if root not in by_root:
                raise ValueError(f"no channel group rooted at {root!r}; groups: {sorted(by_root)}")
            g = by_root[root]
            kept = set(int(i) for i in idxs)
            drop = [i for i in range(g.size) if i not in kept]
            if not drop:
                continue
            module = self.model.get_submodule(root)
            pruner = self.dg.get_pruner_of_module(module)
            self.dg.get_pruning_group(module, pruner.prune_out_channels, drop).prune()


# ---------------------------------------------------------------------------- gates


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
        self.sites = [[space.model.get_submodule(s) for s in g.scales] for g in space.groups]
        self.unit = [
            float(torch.stack([m.weight.detach().abs() for m in bns]).mean()) or 1.0 if bns else 1.0
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
            w = torch.stack([m.weight.detach().abs().float().cpu() for m in bns]).mean(0)
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
            for m in bns:
                keep = (~self.closed[gi]).to(m.weight)
                m.weight.mul_(keep)
                if m.bias is not None:
                    m.bias.mul_(keep)


# ---------------------------------------------------------------------------- targets


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
                f"--target-{name} is a ratio of the unpruned model in (0, 1], got {ratio}"
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "ratios": dict(self.ratios),
            "closed": self.closed,
            "open_channels": self.open_channels,
        }


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
    """
    from .finetune import kd_loss

    model.train()
    if teacher is not None:
        teacher.eval()
    weights = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(weights, lr=lr, momentum=0.9, weight_decay=5e-4)
    total = epochs * len(batches) if hasattr(batches, "__len__") else 0
    ramp_steps = max(1, round(ramp * total)) if total else 1
    steps = closed = 0
    for _ in range(epochs):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(x)
                loss = kd_loss(out, t, y)
            else:
                loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            frac = min(1.0, steps / ramp_steps)
            closed += _close_to(gates, targets, frac, round_to)
            gates.apply()
            if progress is not None:
                progress("gates", steps, total)
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


# ---------------------------------------------------------------------------- exact widths


@dataclass(frozen=True)
class WidthChoice:
    """Kept channels per group (by root name), and each target's ratio at those widths."""

    keep: dict[str, tuple[int, ...]]
    ratios: dict[str, float]
    widths: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"widths": dict(self.widths), "ratios": dict(self.ratios)}


def channel_ranking(space: ChannelSpace, gates: Gates | None = None) -> list[torch.Tensor]:
    """Per group, channel strength: its gate magnitude (higher = keep first)."""
    return (gates or Gates(space)).magnitudes()


def _fits(ratios: Sequence[float], goals: Sequence[float]) -> bool:
    """Every cost ratio at or under its goal."""
    return all(r <= g for r, g in zip(ratios, goals))


def _shortfall(ratios: Sequence[float], goals: Sequence[float]) -> float:
    """How far under their goals the ratios sit, summed relative to each goal."""
    return sum((g - r) / g for r, g in zip(ratios, goals))


def _moved(allowed: Sequence[Sequence[int]], m: list[float], gi: int, d: int) -> list[float] | None:
    """``m`` with group ``gi`` moved ``d`` allowed widths; None past either end."""
    a = allowed[gi]
    idx = a.index(int(m[gi])) + d
    if not 0 <= idx < len(a):
        return None
    out = list(m)
    out[gi] = float(a[idx])
    return out


def _strength_between(strength: Sequence[torch.Tensor], gi: int, k_from: int, k_to: int) -> float:
    """The strength of group ``gi``'s channels ranked between widths ``k_from`` and ``k_to``."""
    lo, hi = sorted((k_from, k_to))
    return float(strength[gi][lo:hi].sum())


def fit_widths(
    space: ChannelSpace,
    strength: Sequence[torch.Tensor],
    targets: Sequence[Target],
    round_to: int = 8,
    start: Sequence[float] | None = None,
) -> WidthChoice:
    """Widths (multiples of ``round_to``, or a group's full size) meeting every target exactly.

    From ``start`` (default: each group's channels with nonzero strength,
    rounded up), greedily drop the weakest ``round_to`` channels of the group
    that loses the least strength per unit of cost over target until every
    target holds; then add back the strongest channels that still fit, so each
    ratio ends as close under its target as the rounding allows. Raises
    :class:`BudgetError` when even the narrowest model is over a target.
    """
    if round_to < 1:
        raise ValueError(f"--round-to must be >= 1 channel, got {round_to}")
    allowed = [space.allowed(gi, round_to) for gi in range(len(space.groups))]
    order = [torch.argsort(s, descending=True, stable=True) for s in strength]
    sorted_strength = [s[o] for s, o in zip(strength, order)]
    if start is None:
        start = [float((s > 0).sum()) for s in strength]
    # Each group from the smallest allowed width that holds its live channels.
    n = [float(next(k for k in a if k >= min(start[gi], a[-1]))) for gi, a in enumerate(allowed)]
    narrow = [float(a[0]) for a in allowed]
    for tg in targets:
        if tg.ratio_at(narrow) > tg.ratio + 1e-12:
            raise BudgetError(
                f"target {tg.name} ratio {tg.ratio:.4f} is below {tg.ratio_at(narrow):.4f}, what the "
                f"model costs with every channel group at its narrowest ({round_to} channels); "
                f"raise the target or lower --round-to"
            )

    goals = [tg.ratio for tg in targets]

    def step_value(gi: int, k_from: int, k_to: int) -> float:
        return _strength_between(sorted_strength, gi, k_from, k_to)

    def costs(m: list[float]) -> list[float]:
        return [tg.ratio_at(m) for tg in targets]

    def fits(c: list[float]) -> bool:
        return _fits(c, goals)

    def shortfall(c: list[float]) -> float:
        return _shortfall(c, goals)

    def step(m: list[float], gi: int, d: int) -> list[float] | None:
        return _moved(allowed, m, gi, d)

    def shrink(m: list[float], hold: int | None = None, spare: bool = False) -> list[float] | None:
        """Step groups (never ``hold``) down until every target holds; None if none can.

        Steps are ranked by strength lost per cost saved; with ``spare``, by what they
        cut beyond each target's excess per excess removed (so a trade between targets
        can pay).
        """
        while True:
            now = costs(m)
            over = [i for i, tg in enumerate(targets) if now[i] > tg.ratio]
            if not over:
                return m
            # Best strength lost per cost saved; but when some step alone brings every target
            # under, take the one of those that loses least, so a big last step cannot overshoot.
            best, best_pick = math.inf, None
            final, final_pick = math.inf, None
            for gi in range(len(allowed)):
                trial = None if gi == hold else step(m, gi, -1)
                if trial is None:
                    continue
                after = costs(trial)
                saved = sum(now[i] - after[i] for i in over)
                if saved <= 0:
                    continue
                lost = step_value(gi, int(trial[gi]), int(m[gi]))
                if spare:  # waste: whatever a target loses beyond what it is over by
                    excess = [max(now[i] - tg.ratio, 0.0) for i, tg in enumerate(targets)]
                    cut = [now[i] - after[i] for i in range(len(targets))]
                    lost = 1e-9 * lost + sum(
                        max(c - e, 0.0) / tg.ratio for c, e, tg in zip(cut, excess, targets)
                    )
                    saved = sum(min(c, e) / tg.ratio for c, e, tg in zip(cut, excess, targets))
                    if saved <= 0:
                        continue
                if lost / saved < best:
                    best, best_pick = lost / saved, trial
                if fits(after) and lost < final:
                    final, final_pick = lost, trial
            m = final_pick or best_pick
            if m is None:
                return None

    shrunk = shrink(n)
    if shrunk is None:
        raise BudgetError(f"cannot meet targets {[(t.name, t.ratio) for t in targets]}")
    n = shrunk

    def grow(m: list[float]) -> list[float]:
        """Add back what fits, strongest channels per unit of cost first."""
        while True:
            now = costs(m)
            best, pick = -math.inf, None
            for gi in range(len(allowed)):
                trial = step(m, gi, +1)
                if trial is None or not fits(after := costs(trial)):
                    continue
                added = max(sum(after[i] - now[i] for i in range(len(targets))), 1e-12)
                value = step_value(gi, int(m[gi]), int(trial[gi])) / added
                if value > best:
                    best, pick = value, trial
            if pick is None:
                return m
            m = pick

    n = grow(n)
    # Rounding can leave a target short by more than one small step: exchange steps between
    # groups while that brings the ratios closer to the targets. Either up to three steps down
    # in one group for one up in another (or the greedy fill), or one step up in a group that
    # is costly to widen (a residual stream) paid for by the cheapest steps down elsewhere.
    for _ in range(4 * len(allowed)):
        now = costs(n)
        if all((tg.ratio - now[i]) / tg.ratio <= 0.005 for i, tg in enumerate(targets)):
            break
        best_sf, pick = shortfall(now) - 1e-9, None
        for gi in range(len(allowed)):
            down: list[float] | None = n
            for depth in range(3):  # up to three steps down in one group...
                down = step(down, gi, -1)
                if down is None:
                    break
                # ...for one step up elsewhere, or whatever the greedy fill adds back.
                ups = [step(down, gj, +1) if gj != gi else None for gj in range(len(allowed))]
                for trial in [*ups, grow(down) if depth == 0 else None]:
                    if trial is None or trial[gi] >= n[gi] or not fits(after := costs(trial)):
                        continue
                    if (sf := shortfall(after)) < best_sf:
                        best_sf, pick = sf, trial
        for gj in range(len(allowed)):
            up = step(n, gj, +1)
            for spare in (False, True) if len(targets) > 1 else (False,):
                trial = shrink(up, hold=gj, spare=spare) if up is not None else None
                if trial is not None and (sf := shortfall(costs(trial := grow(trial)))) < best_sf:
                    best_sf, pick = sf, trial
        if pick is None:
            break
        n = grow(pick)
    if any((tg.ratio - c) / tg.ratio > 0.02 for c, tg in zip(costs(n), targets)):
        n = grow(anneal(n, costs, allowed, goals, sorted_strength))
    keep = {}
    for gi, g in enumerate(space.groups):
        k = int(n[gi])
        keep[g.root] = tuple(sorted(int(i) for i in order[gi][:k]))
    ratios = {tg.name: tg.ratio_at(n) for tg in targets}
    ratios.setdefault("macs", float(space.macs(n)) / space.base_macs)
    ratios.setdefault("params", float(space.params(n)) / space.base_params)
    return WidthChoice(
        keep=keep,
        ratios=ratios,
        widths={g.root: int(n[gi]) for gi, g in enumerate(space.groups)},
    )


def anneal(
    n: list[float],
    costs: Callable[[list[float]], list[float]],
    allowed: Sequence[Sequence[int]],
    goals: Sequence[float],
    strength: Sequence[torch.Tensor],
    steps: int = 20000,
    seed: int = 0,
) -> list[float]:
    """Widths from ``n`` whose cost ratios sit within 1% under every goal, if a walk finds them.

    Joint targets (MACs and params) pull widths in different directions: params
    live in the deep layers, MACs in the early ones, so the greedy exchange can
    stop well under one target. This walks one allowed step at a time, accepting
    worse moves with a falling probability (simulated annealing), on: what is over
    a goal (heavily), what is under a goal by more than 1%, and a little for strength
    lost. Deterministic for a given ``seed``; returns the closest fitting widths seen.
    """
    rng = random.Random(seed)
    total = float(sum(float(s.sum()) for s in strength)) or 1.0

    def kept(m: list[float]) -> float:
        return sum(float(s[: int(k)].sum()) for s, k in zip(strength, m)) / total

    def energy(c: list[float], keep: float) -> float:
        over = sum(max(r - g, 0.0) / g for r, g in zip(c, goals))
        short = sum(max(0.99 * g - r, 0.0) / g for r, g in zip(c, goals))
        return 10.0 * over + short + 1e-3 * (1.0 - keep)

    best, best_short = list(n), _shortfall(costs(n), goals)
    m, keep = list(n), kept(n)
    e = energy(costs(m), keep)
    temperature = 0.05
    for _ in range(steps):
        gi = rng.randrange(len(allowed))
        trial = _moved(allowed, m, gi, rng.choice((-1, 1)))
        if trial is None:
            continue
        delta = _strength_between(strength, gi, int(m[gi]), int(trial[gi])) / total
        trial_keep = keep + (delta if trial[gi] > m[gi] else -delta)
        c = costs(trial)
        e_trial = energy(c, trial_keep)
        if e_trial <= e or rng.random() < math.exp((e - e_trial) / temperature):
            m, keep, e = trial, trial_keep, e_trial
            if _fits(c, goals) and _shortfall(c, goals) < best_short:
                best, best_short = list(m), _shortfall(c, goals)
                if all(r >= 0.99 * g for r, g in zip(c, goals)):
                    break
        temperature *= 0.9995
    return best


def thin(model: nn.Module, widths: dict[str, int], example: torch.Tensor) -> nn.Module:
    """Shrink ``model`` in place to the given group widths (first channels kept).

    Rebuilds the shapes of a pruned model from its plan; its weights come from
    the state_dict afterwards.
    """
    space = ChannelSpace(model, example)
    sizes = {g.root: g.size for g in space.groups}
    unknown = sorted(set(widths) - set(sizes))
    if unknown:
        raise ValueError(f"plan names channel groups {unknown} the model does not have")
    space.remove({root: range(k) for root, k in widths.items() if k < sizes[root]})
    return model
