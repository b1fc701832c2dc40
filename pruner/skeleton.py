"""The one pruning skeleton (``pruner.prune`` and ``pruner.prune_checkpoint``): profile the baseline once, run the method's steps, finish once.

``prune`` works in memory and writes nothing; ``prune_checkpoint`` loads a
checkpoint and a dataset, prunes, and writes ``plan.json``, ``pruned.pt``
(spec, plan, state_dict), ``pruned.pt2`` (torch.export) and ``report.json``.
Latencies are seconds per batch of ``latency_batch_size`` on this device.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from profiler import (
    PREDICTION_TOLERANCE,
    BlockProfile,
    LatencyTable,
    ModelSpec,
    QualityLimits,
    TimingOptions,
    device_info,
    load_model,
    model_cost,
    module_device,
    profile_model,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    torch_threads,
)
from profiler.files import writable_dir, write_text

from . import distributed
from .adapt import META_KEY as ADAPTATION_META
from .adapt import recorded_adaptation
from .batch_memory import check_batch_fits
from .config import (
    DEFAULT_METHOD,
    Budget,
    DepthOptions,
    PruneConfig,
    PruneOptions,
    RunOptions,
    WidthOptions,
    options_flat,
)
from .data import DataBundle, load_data
from .methods import REGISTRY, EventFn, ProgressFn, PruneState, first_samples, method
from .plan import PrunePlan
from .rebuild import export_pruned
from .report import ModelStats, PruneReport
from .train import evaluate


@dataclass(frozen=True)
class PruneResult:
    """The pruned model (a GraphModule), its plan (replays on the spec and a state_dict), the report."""

    model: nn.Module
    plan: PrunePlan
    report: PruneReport


def prune(
    model: nn.Module,
    spec: ModelSpec,
    data: DataBundle,
    budget: float | Budget,
    *,
    method: str = DEFAULT_METHOD,
    epochs: int = 2,
    table: LatencyTable | None = None,
    on_event: EventFn | None = None,
    progress: ProgressFn | None = None,
    run: RunOptions | None = None,
    depth: DepthOptions | None = None,
    width: WidthOptions | None = None,
) -> PruneResult:
    """Prune ``model`` (built from ``spec``; not modified) in memory; nothing is written.

    ``budget``: a fraction of the measured latency in (0, 1], or a :class:`Budget` in
    seconds, MACs or params ratios. ``epochs`` of distillation fine-tuning follow each
    removal. ``table`` serves block and width timings this device has already taken.
    ``progress(what, done, total)`` reports steps; ``on_event(dict)`` gets one JSON-ready
    dict per milestone (profiled, scored, split, selected, gated, finetuned, measured, done).
    ``run``, ``depth``, ``width``: the other options (defaults otherwise). Images of
    another shape than ``spec`` takes are adapted to it (see :mod:`pruner.adapt`).
    """
    data, _ = data.for_model(spec.in_channels, spec.input_size)
    options = PruneOptions(
        method=method,
        budget=budget if isinstance(budget, Budget) else Budget(fraction=budget),
        run=dataclasses.replace(run or RunOptions(), epochs=epochs),
        depth=depth or DepthOptions(),
        width=width or WidthOptions(),
    )
    return run_method(model, spec, data, options, table, on_event, progress)


def run_method(
    model: nn.Module,
    spec: ModelSpec,
    data: DataBundle,
    options: PruneOptions,
    table: LatencyTable | None = None,
    on_event: EventFn | None = None,
    progress: ProgressFn | None = None,
) -> PruneResult:
    """:func:`prune` with its options in one :class:`PruneOptions`."""
    t_start = time.perf_counter()
    steps = method(options.method)
    device = resolve_device(options.run.device)  # a clear error where there is no GPU
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if module_device(model) != device:  # every model of the run lives where it runs
        model = copy.deepcopy(model).to(device)
    s = PruneState(
        spec=spec,
        teacher=model.eval(),
        data=data,
        test=first_samples(data.test, options.run.test_samples),
        options=options,
        table=table,
        emit=on_event or (lambda e: None),
        step=progress or (lambda what, done, total: None),
    )
    if steps.needs_heldout:
        check_heldout(data.val, options.method)
    with torch_threads(options.run.threads):
        if steps.needs_profile:
            s.profile = profile_baseline(s)
            s.warnings += profile_warnings(s.profile)
        for step in steps.steps:
            step(s)
        return finish(s, t_start)


def check_heldout(val: Any, method_name: str) -> None:
    """Refuse an empty held-out split now, not after the baseline profile (minutes on a
    large model). A source that cannot tell its length is left to the scorer."""
    try:
        empty = len(val) == 0
    except TypeError:
        return
    if empty:
        raise ValueError(
            f"method {method_name!r} scores blocks on the held-out split, which is empty: too "
            "few training samples to hold any out (raise --limit), or give a dataset with a "
            f"val split; methods {', '.join(n for n, m in REGISTRY.items() if not m.needs_heldout)} "
            "need none"
        )


def profile_baseline(s: PruneState) -> BlockProfile:
    """Per-block serial latency of the baseline (the table serves what it holds).

    With a process group rank 0 profiles while the others wait in the broadcast:
    never timed beside ranks computing on the same device.
    """
    run = s.options.run
    s.step("profiling", 0, 1)
    return distributed.from_main(
        lambda: profile_model(
            s.teacher,
            s.spec,
            batch_size=run.latency_batch_size,
            device=run.device,
            table=s.table,
            options=TimingOptions(budget_s=run.timing_budget_s, cuda_graph=run.cuda_graph),
            threads=run.latency_threads or run.threads,
            progress=s.step,
        )
    )


def profile_warnings(profile: BlockProfile) -> list[str]:
    """The baseline profile's failed checks: the latencies the selection weighs are suspect."""
    q, check = profile.quality, profile.check
    out = (
        []
        if q is None or q.ok
        else [f"the baseline profile failed its checks, so its latencies are suspect: {p}"
              for p in q.problems]
    )  # fmt: skip
    if check is not None and abs(check.error) > PREDICTION_TOLERANCE:
        out.append(
            f"the baseline profile predicted the model without {len(check.removed)} blocks "
            f"{check.error:+.1%} off its measured latency, so the selection's predictions are "
            "rough: the rounds measure what they build and remove more when it misses the budget"
        )
    return out


def speed_change_warning(
    profile: BlockProfile, baseline_s: float, predicted_s: float, pruned_s: float
) -> str | None:
    """A warning when the baseline timed at the end (``baseline_s``, seconds) is off its
    profiled latency by more than the profiler's drift limit: the machine's speed changed
    between the two.

    The speed-up and the budget check compare models timed interleaved and hold; the
    prediction (``predicted_s``, 0 when none) is on the profile's scale, so the warning
    gives it and the measured ``pruned_s`` as fractions of their own baselines.
    """
    profiled_s = profile.end_to_end.median_s  # the traced model, as the finish times it
    moved = baseline_s / profiled_s - 1.0
    if abs(moved) <= QualityLimits().drift:
        return None
    text = (
        f"the baseline measured {baseline_s * 1e3:.3f} ms at the end against "
        f"{profiled_s * 1e3:.3f} ms in its profile ({moved:+.0%}): the machine's speed changed "
        "between the two (load, clocks or another tenant). The speed-up and the budget check "
        "time both models interleaved and hold"
    )
    if predicted_s > 0:
        text += (
            "; the prediction is on the profile's scale, so compare fractions: "
            f"{predicted_s / profile.end_to_end_s:.1%} of the baseline predicted, "
            f"{pruned_s / baseline_s:.1%} measured"
        )
    return text


def budget_drift_warning(budget_s: float, check_s: float) -> str | None:
    """A warning, for a run without a profile, when the budget the last pass aimed at
    (``budget_s``: the fraction of the baseline timed as it started, seconds) and the one
    checked at the end (``check_s``: the same fraction of the baseline timed then) differ
    by more than the profiler's drift limit: the machine's speed changed in between."""
    if not (budget_s and check_s):
        return None
    moved = check_s / budget_s - 1.0
    if abs(moved) <= QualityLimits().drift:
        return None
    return (
        f"the baseline measured {moved:+.0%} at the end against when the last pass started "
        f"(the budget {budget_s * 1e3:.3f} ms then, {check_s * 1e3:.3f} ms at the check): the "
        "machine's speed changed between the two (load, clocks or another tenant). The budget "
        "check times both models interleaved and holds"
    )


def finish(s: PruneState, t_start: float) -> PruneResult:
    """Measure the student against the budget, count what both models cost, build the report."""
    run, fraction = s.options.run, s.options.budget.fraction
    assert s.student is not None
    if s.measured is None:
        base_now_s, measured_s = s.measure()
        s.emit({"event": "measured", "latency_s": measured_s, "baseline_s": base_now_s})
    base_now_s, measured_s = s.measured  # type: ignore[misc]
    check_s = fraction * base_now_s if fraction is not None else s.budget_s
    met = check_s == 0.0 or measured_s <= check_s * (1 + run.tolerance)
    if not met:
        s.warnings.append(s.over_budget(measured_s, check_s))
    if s.profile:
        moved = speed_change_warning(s.profile, base_now_s, s.predicted_s, measured_s)
    else:
        moved = budget_drift_warning(s.budget_s, check_s) if fraction is not None else None
    if moved:
        s.warnings.append(moved)
    if s.rounds[-1].measured_latency_s is None:
        s.rounds[-1] = dataclasses.replace(s.rounds[-1], measured_latency_s=measured_s)
    base, cost = model_cost(s.teacher, s.spec), model_cost(s.student, s.spec)
    width = s.width and dataclasses.replace(
        s.width, macs_ratio=cost.macs / base.macs, params_ratio=cost.params / base.params
    )
    plan = PrunePlan(
        spec=s.spec,
        removed=s.removed,
        predicted_latency_s=s.predicted_s,
        budget_s=s.budget_s,
        batch_size=run.latency_batch_size,
        method=s.options.method,
        channels=dict(s.channels),
    )
    base_acc = evaluate(s.teacher, s.test, run.device).accuracy
    acc = s.rounds[-1].accuracy_after_finetune
    report = PruneReport(
        model=s.spec.name,
        dataset=s.data.info.name,
        method=s.options.method,
        budget_s=s.budget_s,
        budget_check_s=check_s,
        predicted_latency_s=s.predicted_s,
        removed_blocks=plan.removed_names,
        baseline=ModelStats(base_now_s, base_acc, base.flops, base.params, base.macs),
        pruned=ModelStats(measured_s, acc, cost.flops, cost.params, cost.macs),
        accuracy_before_finetune=s.rounds[0].accuracy_before_finetune,
        speedup=base_now_s / measured_s if measured_s > 0 else float("nan"),
        budget_met=met,
        rounds=tuple(s.rounds),
        device=(s.profile.device if s.profile else device_info(run.device)).to_dict(),
        config=options_flat(s.options),
        seconds=time.perf_counter() - t_start,
        warnings=tuple(s.warnings),
        profiled_latency_s=s.profile.end_to_end_s if s.profile else None,
        depth=s.depth,
        width=width,
        split=s.split,
    )
    s.emit({"event": "done", "speedup": report.speedup, "budget_met": report.budget_met})
    return PruneResult(s.student, plan, report)


# ---------------------------------------------------------------------------- from and to disk


def prune_checkpoint(
    config: PruneConfig,
    progress: ProgressFn | None = None,
    on_event: EventFn | None = None,
) -> PruneReport:
    """Prune ``config.io.checkpoint`` on ``config.io.data``; write plan, checkpoint, export and
    report into ``config.io.out``. The ``done`` event comes once the files are written and
    names ``report.json``.

    With a process group every rank prunes (see :mod:`pruner.distributed`) and
    returns the report; rank 0 alone opens the latency table, reports progress and
    events, and writes the files.
    """
    t_start = time.perf_counter()
    io, run = config.io, config.options.run
    if not distributed.is_main():
        progress, on_event = None, None
    emit = on_event or (lambda e: None)
    held: list[dict[str, Any]] = []
    distributed.from_main(lambda: writable_dir(io.out))  # refused now, not after the work
    with torch_threads(run.threads):
        spec, teacher, data, inherited = load_inputs(config)
        with open_table(io.table if distributed.is_main() else "") as table:
            result = run_method(
                teacher,
                spec,
                data,
                config.options,
                table,
                lambda e: held.append(e) if e["event"] == "done" else emit(e),
                progress,
            )
    out = Path(io.out)
    files, warnings = distributed.from_main(
        lambda: write_artefacts(out, result, data.info.name, config, inherited)
    )
    report = dataclasses.replace(
        result.report,
        **files,
        config=config.to_flat(),
        warnings=result.report.warnings + tuple(warnings),
        seconds=time.perf_counter() - t_start,
    )
    if distributed.is_main():
        write_text(out / "report.json", report.to_json())  # never through a planted link
    emit({**held[-1], "report": str(out / "report.json")})
    return report


def load_inputs(
    config: PruneConfig,
) -> tuple[ModelSpec, nn.Module, DataBundle, dict[str, Any]]:
    """The checkpoint's spec and model, the data fed to it as it was trained on it, and the
    meta the pruned checkpoint inherits (how its inputs are normalised and adapted)."""
    io = config.io
    ckpt = read_checkpoint(io.checkpoint)
    spec = ckpt.spec
    if io.model not in ("", spec.name):
        raise ValueError(
            f"checkpoint {io.checkpoint!r} holds model {spec.name!r}, not {io.model!r}"
        )
    teacher = load_model(spec, checkpoint=io.checkpoint)
    data = load_data(
        io.data,
        root=io.data_root,
        batch_size=io.batch_size,
        seed=config.options.run.seed,
        limit=io.limit,
    )
    info = data.info
    if info.num_classes != spec.num_classes:
        raise ValueError(
            f"dataset {io.data!r} has {info.num_classes} classes, but the model in "
            f"{io.checkpoint!r} has {spec.num_classes} outputs"
        )
    meta = ckpt.meta or {}
    fed, adaptation = data.for_model(spec.in_channels, spec.input_size, recorded_adaptation(meta))
    # The unpruned model is evaluated at this batch; the fine-tuning step is checked in fit().
    check_batch_fits(teacher, fed.test, config.options.run.device, False, f"pruning {spec.name}")
    inherited = {k: meta[k] for k in ("normalisation",) if k in meta}
    return spec, teacher, fed, {**inherited, ADAPTATION_META: adaptation.to_dict()}


@contextlib.contextmanager
def open_table(path: str | None) -> Iterator[LatencyTable | None]:
    """The latency table at ``path`` (None: the default one; "": none), closed after."""
    table = LatencyTable(path) if path != "" else None
    try:
        yield table
    finally:
        if table is not None:
            table.close()


def write_artefacts(
    out: Path,
    result: PruneResult,
    dataset: str,
    config: PruneConfig,
    inherited: dict[str, Any] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Write ``plan.json``, ``pruned.pt`` and, when ``config.io.export``, ``pruned.pt2`` into
    ``out``: their paths as report fields ("" when not exported), and a warning when the
    export failed (the checkpoint is the artefact)."""
    out.mkdir(parents=True, exist_ok=True)
    plan, report = result.plan, result.report
    write_text(out / "plan.json", plan.to_json())
    ckpt = save_checkpoint(
        out / "pruned.pt",
        plan.spec,
        result.model,
        plan_json=plan.to_json(),
        dataset=dataset,
        test_accuracy=report.pruned.accuracy,
        budget_s=plan.budget_s,
        pruned_from=str(Path(config.io.checkpoint).resolve()),  # to prune again, to another budget
        **(inherited or {}),
    )
    files = {"plan_path": str(out / "plan.json"), "checkpoint_path": str(ckpt), "export_path": ""}
    warnings = []
    if config.io.export:
        batch = config.options.run.latency_batch_size
        try:
            files["export_path"] = str(
                export_pruned(result.model, plan.spec, out / "pruned.pt2", batch)
            )
        except Exception as e:  # export is a convenience: the checkpoint is the artefact
            warnings.append(f"torch.export failed: {type(e).__name__}: {e}")
    return files, warnings
