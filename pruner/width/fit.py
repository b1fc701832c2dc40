"""Exact widths: each group keeps its strongest channels, counts on a grid of multiples, fitted to the targets.

From the widths gate training left, a greedy pass steps groups down (least
strength lost per unit of cost first) until every target holds, then adds back
what still fits; exchanges between groups close what rounding left short; a
seeded annealing walk handles joint targets the exchange cannot reach.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import BudgetError
from .gates import Gates, Target
from .space import ChannelSpace


@dataclass(frozen=True)
class WidthChoice:
    """Kept channels per group (by root name), and each target's ratio at those widths."""

    keep: dict[str, tuple[int, ...]]
    ratios: dict[str, float]
    widths: dict[str, int] = field(default_factory=dict)


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


def check_thinnable(space: ChannelSpace, round_to: int) -> None:
    """``BudgetError`` when no channel group of ``space`` can lose a channel (no conv, or
    no BatchNorm to gate one, or none wider than ``round_to``)."""
    if all(len(space.allowed(gi, round_to)) == 1 for gi in range(len(space.groups))):
        raise BudgetError(
            "no channel group of this model can be thinned: filter pruning gates a conv's "
            "filters by the BatchNorm after it, and no group has one or is wider than "
            f"{round_to} channels (round_to). Remove blocks instead: --method removal (or dbp)"
        )


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
    ratio ends as close under its target as the rounding allows (where no step down
    saves, from the narrowest model up). Raises :class:`BudgetError` when even the
    narrowest model is over a target.
    """
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1 channel, got {round_to}")
    allowed = [space.allowed(gi, round_to) for gi in range(len(space.groups))]
    order = [torch.argsort(s, descending=True, stable=True) for s in strength]
    fit = _Fit(allowed, targets, [s[o] for s, o in zip(strength, order)])
    if start is None:
        start = [float((s > 0).sum()) for s in strength]
    # Each group from the smallest allowed width that holds its live channels.
    n = [float(next(k for k in a if k >= min(start[gi], a[-1]))) for gi, a in enumerate(allowed)]
    narrow = [float(a[0]) for a in allowed]
    check_thinnable(space, round_to)
    for tg in targets:
        if tg.ratio_at(narrow) > tg.ratio + 1e-12:
            raise BudgetError(
                f"target {tg.name} ratio {tg.ratio:.4f} is below {tg.ratio_at(narrow):.4f}, what the "
                f"model costs with every channel group at its narrowest ({round_to} channels); "
                f"raise the target or lower round_to"
            )
    # A measured latency grid need not fall with width (a kernel can be slower at fewer
    # channels, or timing noise says so): where no step down saves, the search grows back
    # from the narrowest model, which the check above says fits.
    shrunk = fit.shrink(n) or narrow
    n = fit.exchange(fit.grow(shrunk))
    if any((tg.ratio - c) / tg.ratio > 0.02 for c, tg in zip(fit.costs(n), targets)):
        n = fit.grow(anneal(n, fit.costs, allowed, fit.goals, fit.strength))
    keep = {}
    for gi, g in enumerate(space.groups):
        keep[g.root] = tuple(sorted(int(i) for i in order[gi][: int(n[gi])]))
    ratios = {tg.name: tg.ratio_at(n) for tg in targets}
    ratios.setdefault("macs", float(space.macs(n)) / space.base_macs)
    ratios.setdefault("params", float(space.params(n)) / space.base_params)
    return WidthChoice(
        keep=keep,
        ratios=ratios,
        widths={g.root: int(n[gi]) for gi, g in enumerate(space.groups)},
    )


class _Fit:
    """The search of :func:`fit_widths`: widths move one allowed step at a time on the grid.

    ``strength`` holds each group's channel strengths sorted strongest first.
    """

    def __init__(
        self,
        allowed: Sequence[Sequence[int]],
        targets: Sequence[Target],
        strength: Sequence[torch.Tensor],
    ) -> None:
        self.allowed, self.targets, self.strength = allowed, targets, strength
        self.goals = [tg.ratio for tg in targets]

    def costs(self, m: list[float]) -> list[float]:
        return [tg.ratio_at(m) for tg in self.targets]

    def fits(self, c: list[float]) -> bool:
        return _fits(c, self.goals)

    def shortfall(self, c: list[float]) -> float:
        return _shortfall(c, self.goals)

    def step(self, m: list[float], gi: int, d: int) -> list[float] | None:
        return _moved(self.allowed, m, gi, d)

    def step_value(self, gi: int, k_from: int, k_to: int) -> float:
        return _strength_between(self.strength, gi, k_from, k_to)

    def shrink(
        self, m: list[float] | None, hold: int | None = None, spare: bool = False
    ) -> list[float] | None:
        """Step groups (never ``hold``) down until every target holds; None if none can.

        Steps are ranked by strength lost per cost saved; with ``spare``, by what they
        cut beyond each target's excess per excess removed (so a trade between targets
        can pay).
        """
        while m is not None:
            now = self.costs(m)
            over = [i for i, tg in enumerate(self.targets) if now[i] > tg.ratio]
            if not over:
                return m
            m = self._shrink_step(m, now, over, hold, spare)
        return None

    def _shrink_step(
        self, m: list[float], now: list[float], over: list[int], hold: int | None, spare: bool
    ) -> list[float] | None:
        # Best strength lost per cost saved; but when some step alone brings every target
        # under, take the one of those that loses least, so a big last step cannot overshoot.
        best, best_pick = math.inf, None
        final, final_pick = math.inf, None
        for gi in range(len(self.allowed)):
            trial = None if gi == hold else self.step(m, gi, -1)
            if trial is None:
                continue
            after = self.costs(trial)
            saved = sum(now[i] - after[i] for i in over)
            if saved <= 0:
                continue
            lost = self.step_value(gi, int(trial[gi]), int(m[gi]))
            if spare:
                lost, saved = self._waste(now, after, lost)
                if saved <= 0:
                    continue
            if lost / saved < best:
                best, best_pick = lost / saved, trial
            if self.fits(after) and lost < final:
                final, final_pick = lost, trial
        return final_pick or best_pick

    def _waste(self, now: list[float], after: list[float], lost: float) -> tuple[float, float]:
        """(whatever a target loses beyond what it is over by, the excess removed), both relative."""
        excess = [max(now[i] - tg.ratio, 0.0) for i, tg in enumerate(self.targets)]
        cut = [now[i] - after[i] for i in range(len(self.targets))]
        waste = 1e-9 * lost + sum(
            max(c - e, 0.0) / tg.ratio for c, e, tg in zip(cut, excess, self.targets)
        )
        saved = sum(min(c, e) / tg.ratio for c, e, tg in zip(cut, excess, self.targets))
        return waste, saved

    def grow(self, m: list[float]) -> list[float]:
        """Add back what fits, strongest channels per unit of cost first."""
        while True:
            now = self.costs(m)
            best, pick = -math.inf, None
            for gi in range(len(self.allowed)):
                trial = self.step(m, gi, +1)
                if trial is None or not self.fits(after := self.costs(trial)):
                    continue
                added = max(sum(after[i] - now[i] for i in range(len(self.targets))), 1e-12)
                value = self.step_value(gi, int(m[gi]), int(trial[gi])) / added
                if value > best:
                    best, pick = value, trial
            if pick is None:
                return m
            m = pick

    def exchange(self, n: list[float]) -> list[float]:
        """Trade steps between groups while that brings the ratios closer to the targets.

        Rounding can leave a target short by more than one small step. Either up to
        three steps down in one group for one up in another (or the greedy fill), or
        one step up in a group that is costly to widen (a residual stream) paid for by
        the cheapest steps down elsewhere.
        """
        for _ in range(4 * len(self.allowed)):
            now = self.costs(n)
            if all((tg.ratio - now[i]) / tg.ratio <= 0.005 for i, tg in enumerate(self.targets)):
                break
            best_sf, pick = self._trade_down(n, self.shortfall(now) - 1e-9)
            best_sf, pick = self._trade_up(n, best_sf, pick)
            if pick is None:
                break
            n = self.grow(pick)
        return n

    def _trade_down(self, n: list[float], best_sf: float) -> tuple[float, list[float] | None]:
        pick = None
        for gi in range(len(self.allowed)):
            down: list[float] | None = n
            for depth in range(3):  # up to three steps down in one group...
                down = self.step(down, gi, -1)
                if down is None:
                    break
                # ...for one step up elsewhere, or whatever the greedy fill adds back.
                ups = [
                    self.step(down, gj, +1) if gj != gi else None for gj in range(len(self.allowed))
                ]
                for trial in [*ups, self.grow(down) if depth == 0 else None]:
                    if (
                        trial is None
                        or trial[gi] >= n[gi]
                        or not self.fits(after := self.costs(trial))
                    ):
                        continue
                    if (sf := self.shortfall(after)) < best_sf:
                        best_sf, pick = sf, trial
        return best_sf, pick

    def _trade_up(
        self, n: list[float], best_sf: float, pick: list[float] | None
    ) -> tuple[float, list[float] | None]:
        for gj in range(len(self.allowed)):
            up = self.step(n, gj, +1)
            for spare in (False, True) if len(self.targets) > 1 else (False,):
                trial = self.shrink(up, hold=gj, spare=spare) if up is not None else None
                if (
                    trial is not None
                    and (sf := self.shortfall(self.costs(trial := self.grow(trial)))) < best_sf
                ):
                    best_sf, pick = sf, trial
        return best_sf, pick


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
