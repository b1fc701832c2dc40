"""The block step: score -> select -> remove -> fine-tune, in rounds, measured against its budget.

While the measured latency is over the budget, the target is tightened by
``budget / measured`` and more blocks go, up to ``max_rounds``. Latencies are
seconds per batch of ``latency_batch_size`` in end-to-end units (see
:func:`pruner.depth.candidates_from_profile`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import torch.fx as fx
from torch import nn

from profiler import trace
from profiler.plain import to_plain

from .. import distributed
from ..config import DepthOptions
from ..depth import (
    Candidate,
    L1Scorer,
    ProbeScorer,
    RandomScorer,
    RemovalScorer,
    Scorer,
    Selection,
    candidates_from_profile,
    greedy_select,
    min_latency,
    remove_more,
    select_blocks,
    select_in_order,
)
from ..errors import BudgetError
from ..plan import RemovedBlock
from ..report import DepthSection, RoundRecord
from .state import PruneState


class Selector(Protocol):
    """Chooses what to remove so the prediction fits ``target_s`` (seconds); ``forced``: already gone."""

    counts: ClassVar[bool]  # honours DepthOptions.remove_count instead of the budget

    def __call__(
        self,
        cands: Sequence[Candidate],
        rest_s: float,
        target_s: float,
        forced: Sequence[str],
        opts: DepthOptions,
    ) -> Selection: ...


@dataclass(frozen=True)
class ExactDP:
    """The removal set of largest kept gain whose prediction fits (dynamic programme)."""

    counts: ClassVar[bool] = False

    def __call__(self, cands, rest_s, target_s, forced, opts):  # noqa: ANN001, ANN204 - Selector
        return select_blocks(cands, rest_s, target_s, opts.buckets, forced)


@dataclass(frozen=True)
class Greedy:
    """Ascending gain per second saved until the prediction fits."""

    counts: ClassVar[bool] = False

    def __call__(self, cands, rest_s, target_s, forced, opts):  # noqa: ANN001, ANN204 - Selector
        return greedy_select(cands, rest_s, target_s, forced)


@dataclass(frozen=True)
class InOrder:
    """Lowest gain first until the prediction fits, or exactly ``remove_count`` blocks."""

    label: str
    counts: ClassVar[bool] = True

    def __call__(self, cands, rest_s, target_s, forced, opts):  # noqa: ANN001, ANN204 - Selector
        order = [c.name for c in sorted(cands, key=lambda c: c.gain)]
        return select_in_order(
            cands, rest_s, target_s, order, self.label, opts.remove_count, forced
        )


def probes(s: PruneState) -> Scorer:
    """DBP's probes, fit on the training split and scored on the validation split."""
    depth = s.options.depth
    return ProbeScorer(
        s.data.train,
        s.data.val,
        s.spec.num_classes,
        max_fit=depth.calibration_samples,
        max_eval=depth.heldout_samples,
        device=s.options.run.device,
        progress=s.step,
    )


def removals(s: PruneState) -> Scorer:
    """The whole model's held-out loss rise without each block; adapters fit on the training split."""
    return RemovalScorer(
        s.data.val,
        s.data.train,
        max_eval=s.options.depth.heldout_samples,
        device=s.options.run.device,
        progress=s.step,
    )


def l1(s: PruneState) -> Scorer:
    return L1Scorer()


def seeded_random(s: PruneState) -> Scorer:
    return RandomScorer(s.options.run.seed)


# Scorers that read the held-out (val) split; the others score weights or draw at random.
_SCORE_ON_HELDOUT = (probes, removals)


@dataclass(frozen=True)
class BlockStep:
    """Remove blocks: ``scorer`` says what each is worth, ``select`` what goes."""

    scorer: Callable[[PruneState], Scorer]
    select: Selector
    needs_profile: ClassVar[bool] = True

    @property
    def needs_heldout(self) -> bool:
        return self.scorer in _SCORE_ON_HELDOUT

    def __call__(self, s: PruneState) -> None:
        _BlockPass(self, s).run()


class _BlockPass:
    """One block step's rounds over one prune state."""

    def __init__(self, step: BlockStep, s: PruneState) -> None:
        assert s.profile is not None  # the skeleton profiles for steps that need it
        self.s, self.select, self.opts = s, step.select, s.options.depth
        self.fraction = (
            s.depth_fraction if s.depth_fraction is not None else s.options.budget.fraction
        )
        self.blocks = {t.block.name: t.block for t in s.profile.blocks}
        self.budget_s, self.floor = self._budget()
        self.scorer = step.scorer(s)
        self.gains: dict[str, float] = {}
        self._score(s.teacher, 0)
        self.removed: list[str] = []
        self.rounds: list[RoundRecord] = []

    def _score(self, model: nn.Module, round_: int) -> None:
        """Score the blocks ``model`` still has for round ``round_``, and say so in a
        ``scored`` event; blocks an earlier round removed keep a gain of 0."""
        self.scores = self.scorer(model, list(self.blocks.values()))
        self.gains = {**dict.fromkeys(self.gains, 0.0), **self.scores.gains}
        self.s.emit(
            {
                "event": "scored",
                "round": round_,
                "scores": to_plain(self.scores.probes),
                "removals": to_plain(self.scores.removals),
            }
        )

    def _budget(self) -> tuple[float, float]:
        """The budget (s) at profile time and the least any removal reaches (s)."""
        s, profile = self.s, self.s.profile
        assert profile is not None
        base_s = profile.end_to_end_s
        seconds = s.options.budget.seconds
        budget_s = base_s * self.fraction if self.fraction is not None else float(seconds or 0.0)
        cands, rest_s, _ = candidates_from_profile(profile, {})
        floor = min_latency(rest_s, cands)
        if budget_s < floor:
            raise BudgetError(
                f"latency budget {budget_s * 1e3:.3f} ms is below {floor * 1e3:.3f} ms, what the "
                f"unremovable part of {s.spec.name} costs on this device (baseline "
                f"{base_s * 1e3:.3f} ms); the smallest feasible budget is "
                f"{_up(floor / base_s)} of the baseline, or {_up(floor * 1e3)} ms"
            )
        s.emit(
            {
                "event": "profiled",
                "end_to_end_s": base_s,
                "budget_s": budget_s,
                "floor_s": floor,
                "additivity_error": profile.additivity_error,
                "prediction_check_error": profile.check.error if profile.check else None,
                "from_table": profile.from_table,
            }
        )
        return budget_s, floor

    def candidates(self) -> tuple[Candidate, ...]:
        assert self.s.profile is not None
        return candidates_from_profile(self.s.profile, self.gains)[0]

    def run(self) -> None:
        s = self.s
        if self.opts.iterative:
            k = self.opts.iterative_rounds  # >= 1, DepthOptions checks
            base_s = s.profile.end_to_end_s  # type: ignore[union-attr]
            targets = [base_s * (self.budget_s / base_s) ** ((i + 1) / k) for i in range(k)]
        else:
            targets = [self.budget_s]
        student: fx.GraphModule = trace(copy.deepcopy(s.teacher))
        i = 0
        while True:
            target = targets[i] if i < len(targets) else targets[-1]
            if i > 0 and self.opts.iterative and i < len(targets) and self.scorer.refresh:
                self._score(student, i)  # iterative mode: the pruned model, scored afresh
            # Without iterative_finetune the rounds before the last rescore the pruned model as
            # it is, so the scores see what the removals cost together at one fine-tune's price.
            tune = self.opts.iterative_finetune or i + 1 >= len(targets)
            student, record = self._round(i, target, student, tune)
            i += 1
            if i < len(targets):
                self.rounds.append(record)
                continue
            tightened = self._measured(record, targets[-1])
            if tightened is None:
                break
            targets.append(tightened)
        self._leave(student)

    def _round(
        self, i: int, target: float, student: fx.GraphModule, tune: bool = True
    ) -> tuple[fx.GraphModule, RoundRecord]:
        """Select to ``target`` (s), remove, fine-tune (when ``tune``): the round's record, not
        yet measured."""
        s = self.s
        self.selection = distributed.from_main(  # every rank removes what rank 0 selected
            lambda: self.select(self.candidates(), self._rest(), target, self.removed, self.opts)
        )
        new = [n for n in self.selection.removed if n not in self.removed]
        predicted = self.selection.predicted_latency_s
        s.emit(
            {
                "event": "selected",
                "round": i,
                "target_s": target,
                "removed": new,
                "predicted_latency_s": predicted,
            }
        )
        s.step("surgery", i, i + 1)
        s.student = remove_more(student, [self.blocks[n] for n in new], s.spec, s.data.train)
        self.removed.extend(new)
        before, after = s.recover(tune and bool(new))
        s.emit(
            {"event": "finetuned", "round": i, "accuracy_before": before, "accuracy_after": after}
        )
        return s.student, RoundRecord(i, target, tuple(new), predicted, before, after)

    def _rest(self) -> float:
        assert self.s.profile is not None
        return candidates_from_profile(self.s.profile, {})[1]

    def _measured(self, record: RoundRecord, last_target: float) -> float | None:
        """Measure the student; the next, tighter target (s), or None when done."""
        s, run = self.s, self.s.options.run
        base_now_s, measured_s = s.measure()
        check_s = self._check(base_now_s)
        self.rounds.append(replace(record, measured_latency_s=measured_s))
        s.emit(
            {
                "event": "measured",
                "round": record.round,
                "latency_s": measured_s,
                "baseline_s": base_now_s,
                "budget_s": check_s,
            }
        )
        if measured_s <= check_s * (1 + run.tolerance) or len(self.rounds) >= self.opts.max_rounds:
            return None
        if self.opts.remove_count is not None and self.select.counts:
            return None  # the baselines remove a fixed count; measuring is all that is left
        tightened = last_target * check_s / measured_s
        if tightened < self.floor:
            s.warnings.append(
                f"measured {measured_s * 1e3:.3f} ms is over the budget and nothing more can go"
            )
            return None
        return tightened

    def _check(self, base_now_s: float) -> float:
        """The budget (s) the measurement is held to: fractions of the baseline measured now."""
        return self.budget_s if self.fraction is None else self.fraction * base_now_s

    def _leave(self, student: fx.GraphModule) -> None:
        """Hand the pruned student and what the pass found to the state."""
        s = self.s
        assert s.profile is not None and s.measured is not None
        base_now_s, measured_s = s.measured
        check_s = self._check(base_now_s)
        if s.depth_fraction is not None and measured_s > check_s * (1 + s.options.run.tolerance):
            s.warnings.append(s.over_budget(measured_s, check_s))  # the finish checks the last pass
        gone = set(self.removed)
        ordered = [t.block.name for t in s.profile.blocks if t.block.name in gone]
        s.student = student
        s.removed = tuple(
            RemovedBlock(n, self.blocks[n].replacement, self.blocks[n].adapter_activation)
            for n in ordered
        )
        s.budget_s = self.budget_s
        s.predicted_s = self.selection.predicted_latency_s
        s.rounds.extend(self.rounds)
        scale = candidates_from_profile(s.profile, {})[2]
        check = s.profile.check.error if s.profile.check is not None else None
        s.depth = DepthSection(
            self.scores.probes,
            self.candidates(),
            scale,
            self.fraction,
            check,
            removals=self.scores.removals,
        )


def _up(x: float) -> str:
    """``x`` rounded up to 3 decimals: a budget it names is never just under what it must meet."""
    return f"{math.ceil(x * 1000 - 1e-9) / 1000:.3f}"
