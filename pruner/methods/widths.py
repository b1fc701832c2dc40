"""The width step (HFP): gate every channel group, train the gates toward the targets, fit the
widths exactly, remove the channels, fine-tune with distillation.

Targets are MACs and/or parameter ratios of the model entering the step, and/or
the latency budget through the measured width-latency model. That model sums
convolutions timed alone; the whole model also pays for what it does not time
(normalisation, activations, additions, per-layer overhead), so under a latency
budget each fit is measured before fine-tuning and, while it misses the budget
either way, refitted to a corrected latency target (``WidthOptions.max_fits``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar

from torch import nn

from profiler import TimingOptions, example_input, torch_threads
from profiler.plain import to_plain

from .. import distributed
from ..errors import BudgetError
from ..plan import PrunePlan
from ..rebuild import apply_plan
from ..report import RoundRecord, WidthSection
from ..width import (
    ChannelSpace,
    GateRecord,
    Gates,
    Target,
    WidthChoice,
    WidthLatency,
    channel_ranking,
    check_thinnable,
    fit_widths,
    measure_width_latency,
    size_targets,
    train_gates,
    width_floor,
)
from .refits import kept_fit, next_fit
from .state import PruneState


def width_model(s: PruneState, space: ChannelSpace, base_s: float) -> WidthLatency:
    """Every prunable conv of ``space`` timed at a grid of widths; ``base_s``: the model's latency.

    Timed by rank 0 alone while the other ranks wait (see :meth:`PruneState.measure`).
    """
    run = s.options.run

    def timed() -> WidthLatency:
        with torch_threads(run.latency_threads or run.threads):
            return measure_width_latency(
                space,
                base_s,
                batch_size=run.latency_batch_size,
                round_to=s.options.width.round_to,
                device=run.device,
                options=TimingOptions(budget_s=run.timing_budget_s, cuda_graph=run.cuda_graph),
                table=s.table,
                progress=s.step,
            )

    return distributed.from_main(timed)


@dataclass(frozen=True)
class WidthStep:
    """Thin the channel groups of the student (the unpruned model when no step ran before)."""

    needs_profile: ClassVar[bool] = False
    needs_heldout: ClassVar[bool] = False

    def __call__(self, s: PruneState) -> None:
        after_blocks = s.depth is not None
        if s.student is None:
            s.student = apply_plan(s.teacher, PrunePlan(s.spec))  # a GraphModule, as rebuilt
        s.student.train()
        space = ChannelSpace(s.student, example_input(s.spec))
        budget = s.options.budget
        targets = size_targets(space, budget.macs, budget.params)
        latency = _latency_target(s, space, after_blocks) if budget.latency else None
        if latency is not None:
            targets.append(latency)
        if not targets and after_blocks:
            s.warnings.append("the block pass met the budget on its own: no channels removed")
        elif not targets:
            raise BudgetError(
                "nothing to prune to: give target_macs and/or target_params (ratios in (0, 1]) "
                "or a latency budget below the model's latency"
            )
        else:
            check_thinnable(space, s.options.width.round_to)
        record, gates = _gate(s, space, targets)
        choice, targets, fits = _fit_measured(s, space, gates, targets)
        _warn_short(s, targets, choice)
        s.emit({"event": "selected", "widths": choice.widths, "ratios": choice.ratios})
        before, after = s.recover(bool(targets))
        s.emit({"event": "finetuned", "accuracy_before": before, "accuracy_after": after})
        predicted = latency.cost if latency is not None else None
        s.predicted_s = (
            float(predicted(list(map(float, choice.widths.values())))) if predicted else 0.0
        )
        s.rounds.append(RoundRecord(len(s.rounds), s.budget_s, (), s.predicted_s, before, after))
        s.channels = dict(choice.widths)
        s.measured = None
        nan = float("nan")  # the final model's ratios: the finish counts them
        s.width = WidthSection(
            {t.name: t.ratio for t in targets},
            dict(choice.ratios),
            dict(choice.widths),
            record,
            nan,
            nan,
            len(fits),
            tuple(f.latency_s for f in fits if f.budget_s),
            next(i for i, f in enumerate(fits) if f.choice is choice),
        )


def _latency_target(s: PruneState, space: ChannelSpace, after_blocks: bool) -> Target | None:
    """The latency ratio the budget asks of the student (None when it already fits); sets the
    step's budget (s) from a baseline timed alongside the student."""
    budget, run = s.options.budget, s.options.run
    base_now_s, student_s = s.measure()
    s.budget_s = (
        budget.fraction * base_now_s
        if budget.fraction is not None
        else float(budget.seconds or 0.0)
    )
    # The unpruned student is the baseline: a fraction is its ratio, whatever two timings of
    # the same model say on a noisy machine.
    fresh = budget.fraction is not None and not after_blocks
    ratio = budget.fraction if fresh else s.budget_s / student_s
    # After the block pass, within the tolerance is met (as that pass judges it): a
    # width pass for the last percent would cost a round of gating and fine-tuning.
    slack = 1 + run.tolerance if after_blocks else 1.0
    target = None
    predict = None
    if ratio * slack < 1.0:
        predict = width_model(s, space, student_s)
        floor = width_floor(space, predict, s.options.width.round_to)
        if ratio < floor:
            s.warnings.append(
                f"thinning every channel group to {s.options.width.round_to} channels predicts "
                f"{floor:.3f} of {student_s * 1e3:.3f} ms, above the budget's {ratio:.3f}: "
                "width pruning cannot meet this budget on this device; pruned to the floor"
            )
            ratio = floor
        target = Target("latency", ratio, predict, student_s)
    s.emit(
        {
            "event": "profiled",
            "end_to_end_s": student_s,
            "budget_s": s.budget_s,
            "width_layers": len(predict.layers) if predict else 0,
        }
    )
    return target


def _gate(s: PruneState, space: ChannelSpace, targets: list[Target]) -> tuple[GateRecord, Gates]:
    """Gates trained toward the targets (the student's closed channels zeroed)."""
    run, width = s.options.run, s.options.width
    gates = Gates(space)
    record = GateRecord(0, {}, 0, int(sum(gates.widths())))
    if targets:
        assert s.student is not None
        record = train_gates(
            s.student,
            gates,
            targets,
            s.data.train,
            epochs=width.sparsity_epochs,
            lr=run.lr,
            round_to=width.round_to,
            teacher=s.teacher,
            device=run.device,
            progress=s.step,
        )
    s.emit({"event": "gated", **to_plain(record)})
    return record, gates


@dataclass(frozen=True)
class _Fitted:
    """One fit: its widths, the targets it used, the thinned student, and its latency as
    measured (s) against the budget then (s)."""

    choice: WidthChoice
    targets: list[Target]
    student: nn.Module
    latency_s: float = 0.0
    budget_s: float = 0.0

    @property
    def over(self) -> float:
        return self.latency_s / self.budget_s - 1.0


def _fit_measured(
    s: PruneState, space: ChannelSpace, gates: Gates, targets: list[Target]
) -> tuple[WidthChoice, list[Target], tuple[_Fitted, ...]]:
    """Exact widths for ``targets``, their channels removed from the student; the targets
    the kept fit used, and every fit made (one without a latency target).

    Under a latency target each fit is measured; one more than the tolerance over or under
    the budget is refitted from a copy of the student taken after gating, to the latency
    ratio :func:`~pruner.methods.refits.next_fit` gives (aimed half the tolerance under the
    budget, between what the narrowest widths predict and 1). The student kept is the
    slowest fit within the budget (+ tolerance), else the fastest.
    """
    width, tolerance = s.options.width, s.options.run.tolerance
    ranking, open_ = channel_ranking(space, gates), gates.widths()
    latency = next((t for t in targets if t.name == "latency"), None)
    assert s.student is not None
    if latency is None or width.max_fits == 1:
        choice = _fit(space, ranking, targets, width.round_to, open_)
        return choice, targets, (_Fitted(choice, targets, s.student),)
    gated = copy.deepcopy(s.student)
    entry_base_s, entry_s = s.measured or (1.0, 1.0)  # as _latency_target timed them
    floor = width_floor(space, latency.cost, width.round_to)  # type: ignore[arg-type]
    fits: list[_Fitted] = []
    history: list[tuple[float, float]] = []  # (ratio fitted, ratio measured) per fit
    while True:
        choice = _fit(space, ranking, targets, width.round_to, open_)
        if any(f.choice.widths == choice.widths for f in fits):
            break  # the refit chose widths already measured: nothing new to fit
        base_now_s, measured_s = s.measure()
        fits.append(_Fitted(choice, targets, s.student, measured_s, _budget_now(s, base_now_s)))
        s.emit({"event": "fit", "fit": len(fits) - 1, "latency_ratio": latency.ratio,
                "latency_s": measured_s, "budget_s": fits[-1].budget_s})  # fmt: skip
        # The ratios' unit: the student before thinning, at the speed the baseline ran now.
        unit_s = base_now_s * entry_s / entry_base_s
        history.append((latency.ratio, measured_s / unit_s))
        goal = fits[-1].budget_s / unit_s
        ratio = next_fit(history, goal, tolerance=tolerance, max_fits=width.max_fits, floor=floor)
        if ratio is None:
            break
        latency = replace(latency, ratio=ratio)
        targets = [latency if t.name == "latency" else t for t in targets]
        s.student = copy.deepcopy(gated)
        space = ChannelSpace(s.student, example_input(s.spec))
    kept = fits[kept_fit([f.over for f in fits], tolerance)]
    s.student = kept.student
    return kept.choice, kept.targets, tuple(fits)


def _fit(
    space: ChannelSpace,
    ranking: list,
    targets: list[Target],
    round_to: int,
    open_: list[float],
) -> WidthChoice:
    """Rank 0's exact widths for ``targets``; every rank removes the channels it chose."""
    choice = distributed.from_main(lambda: fit_widths(space, ranking, targets, round_to, open_))
    space.remove(choice.keep)
    return choice


def _budget_now(s: PruneState, base_now_s: float) -> float:
    """The budget (s) a measurement is held to: fractions of the baseline measured now."""
    fraction = s.options.budget.fraction
    return s.budget_s if fraction is None else fraction * base_now_s


def _warn_short(s: PruneState, targets: list[Target], choice: WidthChoice) -> None:
    """A warning per target the fit left short by more than the tolerance, naming what binds."""
    width = s.options.width
    for t in targets:
        if choice.ratios[t.name] >= t.ratio * (1 - width.width_tolerance):
            continue
        others = [o for o in targets if o is not t]
        why = f"channel counts are multiples of {width.round_to}"
        if others:  # the target that binds is the one its ratio reaches
            b = max(others, key=lambda o: choice.ratios[o.name] / o.ratio)
            field_ = "budget" if b.name == "latency" else f"target_{b.name}"
            why = (
                f"with {b.name} at most {b.ratio:.4f}, no model on this channel grid "
                f"keeps more {t.name}; raise {field_} to keep more"
            )
        s.warnings.append(
            f"{t.name} ratio {choice.ratios[t.name]:.4f} is more than "
            f"{width.width_tolerance:.0%} under its target {t.ratio:.4f} ({why})"
        )
