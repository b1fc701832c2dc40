"""Latency-budgeted block selection: an exact dynamic programme (numba) and a greedy baseline.

Every block is kept (costing its serial latency, earning its discrimination
gain) or, when removable, removed (costing its replacement's latency, earning
nothing). Selection maximises the kept gain subject to

    rest + sum(kept latencies) + sum(replacement latencies) <= budget

and to every resolution stage keeping at least one block. Gains are clipped at
zero: a block whose probe got worse must not make removing it look rewarding
(removing it is merely free). The DP works on latency discretised into buckets
of ``(budget - rest) / buckets`` seconds, each cost rounded *up*, so whatever it
chooses is within the budget in real seconds too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from ..errors import BudgetError

NEG = -1.0e300  # "infeasible" in the DP table
TIE = 1e-9  # value of keeping a block beyond its gain: ties go to keeping


@dataclass(frozen=True)
class Candidate:
    """One block as selection sees it; latencies in seconds."""

    name: str
    stage: int
    latency_s: float
    replacement_s: float
    gain: float
    removable: bool


@dataclass(frozen=True)
class Selection:
    """Which blocks to remove, the predicted latency (seconds) and the kept (clipped) gain."""

    removed: tuple[str, ...]
    predicted_latency_s: float
    kept_gain: float
    budget_s: float
    method: str
    solve_s: float = 0.0


def predict_latency(rest_s: float, candidates: Sequence[Candidate], removed: set[str]) -> float:
    """Predicted latency (seconds): rest + kept blocks + replacements of removed blocks."""
    return rest_s + sum(c.replacement_s if c.name in removed else c.latency_s for c in candidates)


def min_latency(rest_s: float, candidates: Sequence[Candidate]) -> float:
    """The least latency (seconds) any allowed removal reaches: every stage keeps one block."""
    total = rest_s
    for stage in sorted({c.stage for c in candidates}):
        cs = [c for c in candidates if c.stage == stage]
        total += sum(c.replacement_s if c.removable else c.latency_s for c in cs)
        if all(c.removable for c in cs):
            total += min(c.latency_s - c.replacement_s for c in cs)
    return total


def _check_budget(rest_s: float, candidates: Sequence[Candidate], budget_s: float) -> None:
    floor = min_latency(rest_s, candidates)
    if budget_s < floor:
        fixed = rest_s + sum(c.latency_s for c in candidates if not c.removable)
        raise BudgetError(
            f"latency budget {budget_s * 1e3:.3f} ms is below {floor * 1e3:.3f} ms, the least this "
            f"model reaches by removing blocks (rest and unremovable blocks alone cost "
            f"{fixed * 1e3:.3f} ms, plus replacements and one block per stage); raise the budget"
        )


@njit(cache=True)
def dp_solve(
    keep_cost: np.ndarray,
    remove_cost: np.ndarray,
    value: np.ndarray,
    stage_end: np.ndarray,
    capacity: int,
) -> tuple[float, np.ndarray]:
    """Exact 0/1 choice per item maximising kept value within ``capacity`` (integer costs).

    Items are in stage order. ``remove_cost[i] < 0`` means item i cannot be
    removed; ``stage_end[i]`` marks the last item of a stage, where at least one
    item of that stage must have been kept. Returns (best value, removed mask);
    the value is NEG when nothing is feasible. O(n * capacity) time.
    """
    n = keep_cost.shape[0]
    cap = capacity
    dp = np.full((cap + 1, 2), NEG)
    dp[0, 0] = 0.0
    # Back-pointers per item and state: previous bucket, previous flag, whether removed.
    prev_c = np.zeros((n, cap + 1, 2), dtype=np.int32)
    prev_f = np.zeros((n, cap + 1, 2), dtype=np.int8)
    removed = np.zeros((n, cap + 1, 2), dtype=np.int8)
    for i in range(n):
        new = np.full((cap + 1, 2), NEG)
        for c in range(cap + 1):
            for f in range(2):
                cur = dp[c, f]
                if cur == NEG:
                    continue
                # Keep first: on equal value, keeping wins (fewer removals).
                nc = c + keep_cost[i]
                if nc <= cap and cur + value[i] > new[nc, 1]:
                    new[nc, 1] = cur + value[i]
                    prev_c[i, nc, 1] = c
                    prev_f[i, nc, 1] = f
                    removed[i, nc, 1] = 0
                if remove_cost[i] >= 0:
                    nc = c + remove_cost[i]
                    if nc <= cap and cur > new[nc, f]:
                        new[nc, f] = cur
                        prev_c[i, nc, f] = c
                        prev_f[i, nc, f] = f
                        removed[i, nc, f] = 1
        if stage_end[i]:
            # Leaving a stage: only states that kept a block of it survive, with the flag reset.
            for c in range(cap + 1):
                new[c, 0] = new[c, 1]
                prev_c[i, c, 0] = prev_c[i, c, 1]
                prev_f[i, c, 0] = prev_f[i, c, 1]
                removed[i, c, 0] = removed[i, c, 1]
                new[c, 1] = NEG
        dp = new
    return _backtrack(dp, prev_c, prev_f, removed)


@njit(cache=True)
def _backtrack(
    dp: np.ndarray, prev_c: np.ndarray, prev_f: np.ndarray, removed: np.ndarray
) -> tuple[float, np.ndarray]:
    """The best final state of ``dp`` (buckets x flag) and, following the back-pointers
    from it, which items it removed: (value, mask), mask all zeros when none is feasible."""
    n, cap = removed.shape[0], dp.shape[0] - 1
    best = NEG
    bc, bf = -1, 0
    for c in range(cap + 1):
        for f in range(2):
            if dp[c, f] > best:
                best = dp[c, f]
                bc, bf = c, f
    mask = np.zeros(n, dtype=np.int8)
    if bc < 0:
        return best, mask
    c, f = bc, bf
    for i in range(n - 1, -1, -1):
        mask[i] = removed[i, c, f]
        pc, pf = prev_c[i, c, f], prev_f[i, c, f]
        c, f = pc, pf
    return best, mask


def _ordered(candidates: Sequence[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: c.stage)  # stable: network order within a stage


def select_blocks(
    candidates: Sequence[Candidate],
    rest_s: float,
    budget_s: float,
    buckets: int = 1000,
    forced: Sequence[str] = (),
) -> Selection:
    """Exact DP selection: the removal set of largest kept gain whose predicted latency fits.

    ``forced`` names blocks that must be removed (an earlier round removed them).
    Raises :class:`BudgetError` when the budget is below :func:`min_latency`.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    cands = _ordered(candidates)
    forced_set = set(forced)
    unknown = forced_set - {c.name for c in cands}
    if unknown:
        raise ValueError(f"forced removals name unknown blocks: {sorted(unknown)}")
    _check_budget(rest_s, cands, budget_s)
    room = budget_s - rest_s
    width = room / buckets if room > 0 else 1.0

    def units(seconds: float) -> int:
        # Round up (with a hair of slack for float noise): the real cost never exceeds the buckets.
        return int(math.ceil(max(seconds, 0.0) / width - 1e-9))

    keep = np.array(
        [units(c.latency_s) if c.name not in forced_set else buckets + 1 for c in cands],
        dtype=np.int64,
    )
    remove = np.array(
        [units(c.replacement_s) if c.removable else -1 for c in cands], dtype=np.int64
    )
    # A hair of value per kept block: among equally good choices, remove the fewest blocks.
    value = np.array([max(c.gain, 0.0) + TIE for c in cands], dtype=np.float64)
    stage_end = np.array(
        [i == len(cands) - 1 or cands[i + 1].stage != c.stage for i, c in enumerate(cands)],
        dtype=np.bool_,
    )
    t0 = time.perf_counter()
    best, mask = dp_solve(keep, remove, value, stage_end, buckets)
    solve_s = time.perf_counter() - t0
    if best == NEG:
        raise BudgetError(
            f"latency budget {budget_s * 1e3:.3f} ms cannot be met at {buckets} latency buckets "
            "(rounding each cost up to a bucket leaves no room); raise the budget or the buckets"
        )
    removed = {c.name for c, m in zip(cands, mask) if m}
    removed = _keep_what_fits(rest_s, cands, budget_s, removed, forced_set)
    return Selection(
        removed=tuple(c.name for c in candidates if c.name in removed),
        predicted_latency_s=predict_latency(rest_s, candidates, removed),
        kept_gain=float(sum(max(c.gain, 0.0) for c in candidates if c.name not in removed)),
        budget_s=budget_s,
        method="dp",
        solve_s=solve_s,
    )


def _keep_what_fits(
    rest_s: float,
    cands: Sequence[Candidate],
    budget_s: float,
    removed: set[str],
    forced: set[str],
) -> set[str]:
    """Put back removed blocks, most gain first, while the exact prediction stays in budget.

    The DP rounds every cost up to a whole bucket, so with many blocks the rounding
    can exclude a choice that fits exactly (at a budget equal to the full latency,
    keeping everything); this repairs that. Keeping a block never breaks a stage.
    """
    removed = set(removed)
    for c in sorted(
        (c for c in cands if c.name in removed and c.name not in forced),
        key=lambda c: (-max(c.gain, 0.0), c.latency_s - c.replacement_s),
    ):
        if predict_latency(rest_s, cands, removed - {c.name}) <= budget_s:
            removed.discard(c.name)
    return removed


def _stage_ok(cands: Sequence[Candidate], removed: set[str], name: str) -> bool:
    """Whether removing ``name`` as well still leaves a kept block in its stage."""
    stage = next(c.stage for c in cands if c.name == name)
    return any(c.stage == stage and c.name not in removed and c.name != name for c in cands)


def select_in_order(
    candidates: Sequence[Candidate],
    rest_s: float,
    budget_s: float,
    order: Sequence[str],
    method: str,
    count: int | None = None,
    forced: Sequence[str] = (),
) -> Selection:
    """Remove removable blocks in the given order until the prediction fits the budget
    (or, with ``count``, exactly that many), skipping removals that would empty a stage."""
    removed = set(forced)
    by_name = {c.name: c for c in candidates}
    for name in order:
        done = (
            len(removed) >= count
            if count is not None
            else (predict_latency(rest_s, candidates, removed) <= budget_s)
        )
        if done:
            break
        c = by_name[name]
        if c.removable and name not in removed and _stage_ok(candidates, removed, name):
            removed.add(name)
    return Selection(
        removed=tuple(c.name for c in candidates if c.name in removed),
        predicted_latency_s=predict_latency(rest_s, candidates, removed),
        kept_gain=float(sum(max(c.gain, 0.0) for c in candidates if c.name not in removed)),
        budget_s=budget_s,
        method=method,
    )


def greedy_select(
    candidates: Sequence[Candidate], rest_s: float, budget_s: float, forced: Sequence[str] = ()
) -> Selection:
    """Baseline: remove blocks by ascending gain per second saved until the budget holds."""
    _check_budget(rest_s, candidates, budget_s)

    def ratio(c: Candidate) -> float:
        saved = c.latency_s - c.replacement_s
        return max(c.gain, 0.0) / saved if saved > 0 else math.inf

    order = [c.name for c in sorted(candidates, key=ratio) if c.removable]
    return select_in_order(candidates, rest_s, budget_s, order, "greedy", forced=forced)
