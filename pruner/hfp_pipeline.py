"""Filter pruning end to end: ``--method hfp`` and ``--method dbp+hfp``.

hfp: gate every channel group, train the gates toward the targets (MACs
and/or parameter ratios, and/or a latency budget through the measured
width-latency model), fit the widths exactly, remove the channels, fine-tune
with distillation, measure.

dbp+hfp: the block pipeline first takes the model part of the way (how far:
:func:`split_budget`, from what each pass saves on this device), then the
width pass thins what remains to the one budget. The plan holds both the
removed blocks and the widths.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from profiler import (
    BlockProfile,
    ModelSpec,
    TimingOptions,
    device_info,
)

from .hfp import (
    ChannelSpace,
    GateRecord,
    Gates,
    Target,
    channel_ranking,
    fit_widths,
    size_targets,
    train_gates,
)
from .pipeline import (
    EventFn,
    ModelStats,
    ProgressFn,
    PruneConfig,
    PruneReport,
    RoundRecord,
    _run,
    candidates_from_profile,
    flops_params,
    load_inputs,
    measure_pair,
    open_table,
    over_budget,
    profile_baseline,
    recover,
    torch_threads,
    write_artefacts,
)
from .plan import PrunePlan, RemovedBlock
from .select import BudgetError, min_latency
from .surgery import apply_plan, example_input, load_pruned
from .train import evaluate


@dataclass(frozen=True)
class BudgetSplit:
    """How dbp+hfp divides one latency budget between its two passes.

    ``depth`` is the block pass's budget (a fraction of the baseline latency),
    ``width`` the latency ratio the width pass takes of what the blocks leave;
    their product is the budget. The yields are the latency fraction each pass
    saves per fraction of multiplications it removes on this device: removing
    every removable block, and thinning every channel group to half.
    """

    depth: float
    width: float
    block_yield: float
    width_yield: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_budget(
    budget: float,
    *,
    depth_floor: float,
    width_floor: float,
    block_yield: float,
    width_yield: float,
    depth_share: float | None = None,
) -> BudgetSplit:
    """Divide ``budget`` (fraction of the baseline latency) between blocks and widths.

    Where thinning saves less latency per multiplication than removing blocks
    (a CPU at batch 1: the removed channels mostly ran in parallel with the kept
    ones), the blocks take the budget alone, down to 5% above their floor
    (``depth_floor``, every stage keeping one block), and the widths only what
    is left. Otherwise, or with an explicit ``depth_share``, the width pass
    takes ``budget ** (1 - share)`` (share 0.5 by default), never more than
    halfway from 1 to ``width_floor`` (every group at its narrowest).
    """
    ceiling = min(1.0, depth_floor * 1.05)  # the least the block pass is asked for
    if depth_share is None and width_yield < block_yield:
        depth = max(budget, ceiling)
        reason = (
            f"removing blocks saves more latency per multiplication removed than thinning "
            f"({block_yield:.2f} against {width_yield:.2f}): blocks take the budget"
            + (f" down to {depth:.3f}, widths the rest" if depth > budget else " alone")
        )
    else:
        share = 0.5 if depth_share is None else depth_share
        width = min(1.0, max(budget ** (1.0 - share), width_floor + 0.5 * (1.0 - width_floor)))
        depth = max(budget / width, ceiling)
        reason = (
            f"--depth-share {depth_share}"
            if depth_share is not None
            else f"thinning saves as much latency per multiplication removed as removing "
            f"blocks ({width_yield:.2f} against {block_yield:.2f}): the passes share the cut"
        )
    return BudgetSplit(depth, min(1.0, budget / depth), block_yield, width_yield, reason)


def block_yield(profile: BlockProfile) -> float:
    """Latency fraction saved per fraction of MACs removed, removing every removable block."""
    cands, _, _ = candidates_from_profile(profile, {})
    saved = sum(c.latency_s - c.replacement_s for c in cands if c.removable)
    macs = sum(t.block.macs for t in profile.blocks)
    macs += sum(seg.flops // 2 for seg in profile.rest)
    cut = sum(t.block.macs for t in profile.blocks if t.block.removable)
    if macs <= 0 or cut <= 0:
        return 0.0
    return (saved / profile.end_to_end_s) / (cut / macs)


def width_yield(space: ChannelSpace, predict: Any, round_to: int) -> float:
    """Latency fraction saved per fraction of MACs removed, every group thinned to half."""
    half = []
    for gi, g in enumerate(space.groups):
        allowed = space.allowed(gi, round_to)
        half.append(float(min(allowed, key=lambda k: abs(k - g.size / 2))))
    macs_cut = 1.0 - float(space.macs(half)) / space.base_macs
    if macs_cut <= 0:
        return 0.0
    return (1.0 - float(predict(half)) / predict.base_s) / macs_cut


def _width_model(space: ChannelSpace, base_s: float, config: PruneConfig, step: ProgressFn) -> Any:
    from .width_latency import measure_width_latency

    with open_table(config) as table, torch_threads(config.latency_threads or config.threads):
        return measure_width_latency(
            space,
            base_s,
            batch_size=config.latency_batch_size,
            round_to=config.round_to,
            device=config.device,
            options=TimingOptions(budget_s=config.timing_budget_s),
            table=table,
            progress=step,
        )


def _floor(space: ChannelSpace, predict: Any, round_to: int) -> float:
    narrow = [float(space.allowed(gi, round_to)[0]) for gi in range(len(space.groups))]
    return float(predict(narrow)) / predict.base_s


def run_width(config: PruneConfig, step: ProgressFn, emit: EventFn, t_start: float) -> PruneReport:
    """Run ``config`` (method "hfp" or "dbp+hfp"); write plan, checkpoint, export and report."""
    out = Path(config.out)
    spec, teacher, data, test = load_inputs(config)
    teacher.eval()
    warnings: list[str] = []
    rounds: list[RoundRecord] = []
    removed: tuple[RemovedBlock, ...] = ()
    depth: dict[str, Any] = {}

    if config.method == "dbp+hfp":
        assert config.budget is not None  # PruneConfig checks it
        profile = profile_baseline(teacher, spec, config, step)
        full = apply_plan(teacher, PrunePlan(spec))
        full_space = ChannelSpace(full, example_input(spec))
        full_widths = _width_model(full_space, profile.end_to_end_s, config, step)
        cands, rest_s, _ = candidates_from_profile(profile, {})
        split = split_budget(
            config.budget,
            depth_floor=min_latency(rest_s, cands) / profile.end_to_end_s,
            width_floor=_floor(full_space, full_widths, config.round_to),
            block_yield=block_yield(profile),
            width_yield=width_yield(full_space, full_widths, config.round_to),
            depth_share=config.depth_share,
        )
        emit({"event": "split", **split.to_dict()})
        frac = split.depth
        del full, full_space
        depth_config = dataclasses.replace(
            config, method="dbp", budget=frac, out=str(out / "depth"), export=False
        )
        report = _run(depth_config, step, emit, time.perf_counter(), profile)
        student = load_pruned(report.checkpoint_path)
        plan = PrunePlan.from_json(Path(report.plan_path).read_text())
        removed = plan.removed
        rounds.extend(report.rounds)
        warnings.extend(report.warnings)
        depth = {
            "budget": frac,
            "split": split.to_dict(),
            "report": str(out / "depth" / "report.json"),
        }
    else:
        student = apply_plan(teacher, PrunePlan(spec))  # a GraphModule, as load_pruned rebuilds
    student.train()

    # Targets: size ratios of the model entering the width pass, and/or the latency budget.
    x = example_input(spec)
    space = ChannelSpace(student, x)
    targets = size_targets(space, config.target_macs, config.target_params)
    budget_s = 0.0
    predict = None
    if config.budget is not None or config.budget_ms is not None:
        step("measuring", 0, 1)
        base_now_s, student_s = measure_pair(teacher, student, spec, config)
        budget_s = (
            config.budget * base_now_s if config.budget is not None else config.budget_ms / 1e3
        )
        ratio = budget_s / student_s
        # After the block pass, within the tolerance is met (as that pass judges it): a
        # width pass for the last percent would cost a round of gating and fine-tuning.
        slack = 1 + config.tolerance if config.method == "dbp+hfp" else 1.0
        if ratio * slack < 1.0:
            predict = _width_model(space, student_s, config, step)
            floor = _floor(space, predict, config.round_to)
            if ratio < floor:
                warnings.append(
                    f"thinning every channel group to {config.round_to} channels predicts "
                    f"{floor:.3f} of {student_s * 1e3:.3f} ms, above the budget's {ratio:.3f}: "
                    "width pruning cannot meet this budget on this device; pruned to the floor"
                )
                ratio = floor
            targets.append(Target("latency", ratio, predict, student_s))
        emit(
            {
                "event": "profiled",
                "end_to_end_s": student_s,
                "budget_s": budget_s,
                "width_layers": len(predict.layers) if predict else 0,
            }
        )
    if not targets and config.method == "dbp+hfp":
        warnings.append("the block pass met the budget on its own: no channels removed")
    elif not targets:
        raise BudgetError(
            "nothing to prune to: give --target-macs and/or --target-params (ratios in (0, 1]) "
            "or a latency budget below the model's latency"
        )

    # Gates, trained toward the targets; then exact widths, folded gates, physical removal.
    gates = Gates(space)
    record = GateRecord(0, {}, 0, int(sum(gates.widths())))
    if targets:
        record = train_gates(
            student,
            gates,
            targets,
            data.train,
            epochs=config.sparsity_epochs,
            lr=config.lr,
            round_to=config.round_to,
            teacher=teacher,
            device=config.device,
            progress=step,
        )
    emit({"event": "gated", **record.to_dict()})
    strength = channel_ranking(space, gates)
    choice = fit_widths(space, strength, targets, config.round_to, gates.widths())
    space.remove(choice.keep)
    for t in targets:
        if choice.ratios[t.name] < t.ratio * (1 - config.width_tolerance):
            others = [o for o in targets if o is not t]
            why = f"channel counts are multiples of {config.round_to}"
            if others:  # the target that binds is the one its ratio reaches
                b = max(others, key=lambda o: choice.ratios[o.name] / o.ratio)
                flag = "--budget" if b.name == "latency" else f"--target-{b.name}"
                why = (
                    f"with {b.name} at most {b.ratio:.4f}, no model on this channel grid "
                    f"keeps more {t.name}; raise {flag} to keep more"
                )
            warnings.append(
                f"{t.name} ratio {choice.ratios[t.name]:.4f} is more than "
                f"{config.width_tolerance:.0%} under its target {t.ratio:.4f} ({why})"
            )
    emit({"event": "selected", "widths": choice.widths, "ratios": choice.ratios})
    acc_before, acc_after = recover(student, teacher, data, test, config, bool(targets))
    emit({"event": "finetuned", "accuracy_before": acc_before, "accuracy_after": acc_after})

    step("measuring", 0, 1)
    base_now_s, measured_s = measure_pair(teacher, student, spec, config)
    budget_check_s = budget_s
    if config.budget is not None:
        budget_check_s = config.budget * base_now_s
    predicted_s = float(predict(list(map(float, choice.widths.values())))) if predict else 0.0
    met = budget_check_s == 0.0 or measured_s <= budget_check_s * (1 + config.tolerance)
    if not met:
        warnings.append(over_budget(measured_s, budget_check_s, config))
    rounds.append(
        RoundRecord(len(rounds), budget_s, (), predicted_s, acc_before, acc_after, measured_s)
    )
    emit({"event": "measured", "latency_s": measured_s, "baseline_s": base_now_s})

    plan = PrunePlan(
        spec=spec,
        removed=removed,
        predicted_latency_s=predicted_s,
        budget_s=budget_s,
        batch_size=config.latency_batch_size,
        method=config.method,
        channels=dict(choice.widths),
    )
    plan_path, ckpt, export_path = write_artefacts(
        out, plan, student, data.info.name, acc_after, config, warnings
    )
    base_flops, base_params = flops_params(teacher, spec)
    pr_flops, pr_params = flops_params(student, spec)
    base_macs, pr_macs = macs(teacher, spec), macs(student, spec)
    report = PruneReport(
        model=spec.name,
        dataset=data.info.name,
        method=config.method,
        budget_s=budget_s,
        budget_check_s=budget_check_s,
        predicted_latency_s=predicted_s,
        removed_blocks=tuple(r.name for r in removed),
        baseline=ModelStats(
            base_now_s, evaluate(teacher, test, config.device).accuracy, base_flops, base_params
        ),  # fmt: skip
        pruned=ModelStats(measured_s, acc_after, pr_flops, pr_params),
        accuracy_before_finetune=rounds[0].accuracy_before_finetune,
        speedup=base_now_s / measured_s if measured_s > 0 else float("nan"),
        budget_met=met,
        additivity_scale=1.0,
        scores=(),
        candidates=(),
        rounds=tuple(rounds),
        plan_path=str(plan_path),
        checkpoint_path=str(ckpt),
        export_path=export_path,
        device=device_info(config.device).to_dict(),
        config=config.to_dict(),
        seconds=time.perf_counter() - t_start,
        warnings=tuple(warnings),
        width={
            "targets": {t.name: t.ratio for t in targets},
            "ratios": dict(choice.ratios),
            "widths": dict(choice.widths),
            "gates": record.to_dict(),
            "macs_ratio": pr_macs / base_macs if base_macs else float("nan"),
            "params_ratio": pr_params / base_params if base_params else float("nan"),
            **({"depth": depth} if depth else {}),
        },
    )
    (out / "report.json").write_text(report.to_json())
    emit({"event": "done", "report": str(out / "report.json"), "speedup": report.speedup})
    return report


def macs(model: nn.Module, spec: ModelSpec) -> float:
    """Multiply-accumulates per image, counted by torch's FLOP counter (independent of HFP's)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(example_input(spec))
    return counter.get_total_flops() / 2
