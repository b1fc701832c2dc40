"""Latency-budgeted block pruning end to end.

profile (reusing the latency table) -> score (DBP probes) -> select (DP) ->
remove -> fine-tune (KD from the unpruned model) -> measure; while the measured
latency is over the budget, tighten the target, remove more and repeat.

Latencies are seconds per batch of ``latency_batch_size`` on this device. The
per-piece latencies of a profile add up to a little more or less than the
measured end-to-end latency (its additivity error); selection works on piece
latencies scaled by ``end_to_end / (blocks + rest)`` so predictions are in
end-to-end seconds, the unit of the budget.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from profiler import (
    Block,
    BlockProfile,
    LatencyTable,
    ModelSpec,
    TimingOptions,
    count_ops,
    device_info,
    discover,
    load_model,
    measure,
    profile_model,
    read_checkpoint,
    save_checkpoint,
    trace,
)

from .data import DataBundle, load_data
from .discrimination import BlockScore, score_blocks
from .finetune import finetune
from .plan import PrunePlan, RemovedBlock
from .select import BudgetError, Candidate, Selection, min_latency, select_blocks, select_in_order
from .surgery import example_input, fit_adapters, remove_blocks
from .train import evaluate

ProgressFn = Callable[[str, int, int], None]
EventFn = Callable[[dict[str, Any]], None]
METHODS = ("dbp", "greedy", "random", "l1", "hfp", "dbp+hfp")
WIDTH_METHODS = ("hfp", "dbp+hfp")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune, to which budget, and how.

    Exactly one of ``budget`` (a fraction of the baseline's measured latency,
    in (0, 1]) and ``budget_ms`` (milliseconds) is set. ``method``: "dbp"
    (DBP gains, exact DP), "greedy" (DBP gains, ratio greedy), "random" or
    "l1" (lowest mean |weight| first) removal baselines; ``remove_count``
    makes the baselines remove exactly that many blocks instead of stopping
    at the budget. ``limit`` caps train and test samples (quick runs);
    ``latency_threads`` (default: ``threads``) are the CPU threads for
    profiling and measuring only; ``test_samples`` evaluates accuracy on the first that many test samples only.
    ``table`` is the latency table path ("" for none, None for the default).

    Filter pruning ("hfp", "dbp+hfp"): ``target_macs`` / ``target_params``
    are ratios of the unpruned model in (0, 1]; "hfp" takes them and/or a
    budget, "dbp+hfp" needs ``budget`` (the depth pass takes ``depth_share``
    of the cut; None: chosen from what each pass buys on this device, see
    :func:`pruner.hfp_pipeline.split_budget`). Channel counts are multiples of ``round_to``; the gates train
    for ``sparsity_epochs``; a ratio more than
    ``width_tolerance`` under its target is reported as a warning.
    """

    model: str
    checkpoint: str
    data: str
    out: str
    budget: float | None = None
    budget_ms: float | None = None
    method: str = "dbp"
    iterative: bool = False
    iterative_rounds: int = 3
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.01
    latency_batch_size: int = 1
    threads: int | None = None
    latency_threads: int | None = None
    device: str = "cpu"
    data_root: str | None = None
    limit: int | None = None
    seed: int = 0
    calibration_samples: int = 2000
    heldout_samples: int = 1000
    table: str | None = None
    timing_budget_s: float = 10.0
    tolerance: float = 0.03
    max_rounds: int = 3
    buckets: int = 1000
    remove_count: int | None = None
    test_samples: int | None = None
    export: bool = True
    progress_bar: bool = False
    target_macs: float | None = None
    target_params: float | None = None
    round_to: int = 8
    sparsity_epochs: int = 1
    depth_share: float | None = None
    width_tolerance: float = 0.02

    def __post_init__(self) -> None:
        sized = self.target_macs is not None or self.target_params is not None
        if self.budget is not None and self.budget_ms is not None:
            raise ValueError("give only one of --budget (fraction) and --budget-ms")
        if self.budget is None and self.budget_ms is None and not (self.method == "hfp" and sized):
            raise ValueError(
                "give --budget (fraction) or --budget-ms"
                + (", or --target-macs/--target-params" if self.method == "hfp" else "")
            )
        if sized and self.method not in WIDTH_METHODS:
            raise ValueError(
                f"--target-macs/--target-params are for --method hfp or dbp+hfp, not {self.method!r}"
            )
        for name in ("target_macs", "target_params"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v <= 1.0:
                raise ValueError(
                    f"--{name.replace('_', '-')} is a ratio of the unpruned model in (0, 1], got {v}"
                )
        if self.method == "dbp+hfp" and self.budget is None:
            raise ValueError("--method dbp+hfp needs --budget (a fraction of the baseline latency)")
        if self.round_to < 1:
            raise ValueError(f"--round-to must be >= 1 channel, got {self.round_to}")
        if self.depth_share is not None and not 0.0 <= self.depth_share <= 1.0:
            raise ValueError(f"depth_share must be in [0, 1], got {self.depth_share}")
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise ValueError(
                f"--budget is a fraction of the baseline latency in (0, 1], got {self.budget}"
            )
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ValueError(f"--budget-ms must be > 0 ms, got {self.budget_ms}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {self.epochs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        return cls(**d)


@dataclass(frozen=True)
class ModelStats:
    """One model: measured latency (seconds per batch), test accuracy in [0, 1], FLOPs, params."""

    latency_s: float
    accuracy: float
    flops: int
    params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelStats:
        return cls(float(d["latency_s"]), float(d["accuracy"]), int(d["flops"]), int(d["params"]))


@dataclass(frozen=True)
class RoundRecord:
    """One removal round: target (s), what it removed, prediction (s), accuracy before/after fine-tuning."""

    round: int
    target_s: float
    removed: tuple[str, ...]
    predicted_latency_s: float
    accuracy_before_finetune: float
    accuracy_after_finetune: float
    measured_latency_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["removed"] = list(self.removed)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundRecord:
        return cls(**{**d, "removed": tuple(d["removed"])})


@dataclass(frozen=True)
class PruneReport:
    """Everything a prune run found; ``report.json`` is its ``to_dict``.

    ``budget_s`` is the budget at profile time. For fraction budgets the
    check at the end compares against ``budget_check_s`` = fraction x the
    baseline latency measured interleaved with the pruned model (so a change
    in machine load between profile and check shifts both alike); for
    millisecond budgets the two are equal.
    """

    model: str
    dataset: str
    method: str
    budget_s: float
    budget_check_s: float
    predicted_latency_s: float
    removed_blocks: tuple[str, ...]
    baseline: ModelStats
    pruned: ModelStats
    accuracy_before_finetune: float
    speedup: float
    budget_met: bool
    additivity_scale: float
    scores: tuple[BlockScore, ...]
    candidates: tuple[Candidate, ...]
    rounds: tuple[RoundRecord, ...]
    plan_path: str
    checkpoint_path: str
    export_path: str
    device: dict[str, Any]
    config: dict[str, Any]
    seconds: float
    warnings: tuple[str, ...] = ()
    created_at: float = field(default_factory=time.time)
    width: dict[str, Any] = field(default_factory=dict)  # filter pruning: targets, ratios, widths

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "method": self.method,
            "budget_s": self.budget_s,
            "budget_check_s": self.budget_check_s,
            "predicted_latency_s": self.predicted_latency_s,
            "removed_blocks": list(self.removed_blocks),
            "baseline": self.baseline.to_dict(),
            "pruned": self.pruned.to_dict(),
            "accuracy_before_finetune": self.accuracy_before_finetune,
            "speedup": self.speedup,
            "budget_met": self.budget_met,
            "additivity_scale": self.additivity_scale,
            "scores": [s.to_dict() for s in self.scores],
            "candidates": [c.to_dict() for c in self.candidates],
            "rounds": [r.to_dict() for r in self.rounds],
            "plan_path": self.plan_path,
            "checkpoint_path": self.checkpoint_path,
            "export_path": self.export_path,
            "device": self.device,
            "config": self.config,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
            "created_at": self.created_at,
            "width": self.width,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneReport:
        return cls(
            model=d["model"],
            dataset=d["dataset"],
            method=d["method"],
            budget_s=float(d["budget_s"]),
            budget_check_s=float(d["budget_check_s"]),
            predicted_latency_s=float(d["predicted_latency_s"]),
            removed_blocks=tuple(d["removed_blocks"]),
            baseline=ModelStats.from_dict(d["baseline"]),
            pruned=ModelStats.from_dict(d["pruned"]),
            accuracy_before_finetune=float(d["accuracy_before_finetune"]),
            speedup=float(d["speedup"]),
            budget_met=bool(d["budget_met"]),
            additivity_scale=float(d["additivity_scale"]),
            scores=tuple(BlockScore.from_dict(s) for s in d["scores"]),
            candidates=tuple(Candidate.from_dict(c) for c in d["candidates"]),
            rounds=tuple(RoundRecord.from_dict(r) for r in d["rounds"]),
            plan_path=d["plan_path"],
            checkpoint_path=d["checkpoint_path"],
            export_path=d["export_path"],
            device=dict(d["device"]),
            config=dict(d["config"]),
            seconds=float(d["seconds"]),
            warnings=tuple(d.get("warnings", ())),
            created_at=float(d.get("created_at", 0.0)),
            width=dict(d.get("width", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> PruneReport:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------- helpers


def candidates_from_profile(
    profile: BlockProfile, gains: dict[str, float]
) -> tuple[tuple[Candidate, ...], float, float]:
    """Candidates in end-to-end seconds, the scaled rest (s), and the scale applied."""
    pieces = profile.blocks_s + profile.rest_s
    scale = profile.end_to_end_s / pieces if pieces > 0 else 1.0
    cands = tuple(
        Candidate(
            name=t.block.name,
            stage=t.block.stage,
            latency_s=t.latency_s * scale,
            replacement_s=(t.replacement_latency_s or 0.0) * scale,
            gain=gains.get(t.block.name, 0.0),
            removable=t.block.removable,
        )
        for t in profile.blocks
    )
    return cands, profile.rest_s * scale, scale


def l1_gains(model: nn.Module, profile: BlockProfile) -> dict[str, float]:
    """Mean |weight| over each block's parameters (the lowest-L1-norm baseline's scores)."""
    gm = trace(model)
    out = {}
    for t in profile.blocks:
        total, count = 0.0, 0
        seen: set[int] = set()
        for n in gm.graph.nodes:
            if n.name in t.block.nodes and n.op == "call_module":
                w = getattr(gm.get_submodule(n.target), "weight", None)
                if isinstance(w, torch.Tensor) and w.dim() == 4 and id(w) not in seen:
                    seen.add(id(w))
                    total += float(w.detach().abs().sum())
                    count += w.numel()
        out[t.block.name] = total / count if count else 0.0
    return out


def flops_params(model: nn.Module, spec: ModelSpec) -> tuple[int, int]:
    """(FLOPs per image, parameter count) of ``model``."""
    gm = discover(copy.deepcopy(model).eval(), example_input(spec)).gm
    flops, _, _ = count_ops(gm, list(gm.graph.nodes))
    return int(flops), sum(p.numel() for p in model.parameters())


def remove_more(
    gm: fx.GraphModule, blocks: Sequence[Block], spec: ModelSpec, calibration: Any
) -> fx.GraphModule:
    """Remove ``blocks`` (records from the unpruned model's profile) from ``gm`` in place.

    Each is found again in ``gm`` by its output node, which surgery never renames,
    and failing that by its name.
    """
    if not blocks:
        return gm
    bg = discover(gm, example_input(spec))  # traces gm to itself: node names hold
    by_output = {b.output_node: b for b in bg.blocks}
    by_name = {b.name: b for b in bg.blocks}
    chosen = [by_output.get(b.output_node) or by_name.get(b.name) for b in blocks]
    missing = [b.name for b, c in zip(blocks, chosen) if c is None]
    if missing:
        raise ValueError(f"blocks {missing} are no longer blocks of the pruned model")
    adapters = fit_adapters(bg.gm, chosen, calibration)
    return remove_blocks(bg.gm, chosen, adapters)


def first_samples(batches: Any, n: int | None) -> Any:
    """The first ``n`` samples of re-iterable ``batches`` (all of them when n is None)."""
    if n is None:
        return batches

    class _First:
        def __iter__(self):  # noqa: ANN204 - a generator of (x, y) batches
            seen = 0
            for x, y in batches:
                if seen >= n:
                    return
                yield x[: n - seen], y[: n - seen]
                seen += len(y)

    return _First()


def _check_inputs(spec: ModelSpec, data: DataBundle, config: PruneConfig) -> None:
    info = data.info
    if info.num_classes != spec.num_classes:
        raise ValueError(
            f"dataset {config.data!r} has {info.num_classes} classes, but the model in "
            f"{config.checkpoint!r} has {spec.num_classes} outputs"
        )
    if info.in_channels != spec.in_channels or tuple(info.input_size) != tuple(spec.input_size):
        raise ValueError(
            f"dataset {config.data!r} has {info.in_channels}x{info.input_size[0]}x{info.input_size[1]} "
            f"images, but the model in {config.checkpoint!r} expects "
            f"{spec.in_channels}x{spec.input_size[0]}x{spec.input_size[1]}"
        )


def _select(
    config: PruneConfig,
    cands: Sequence[Candidate],
    rest_s: float,
    target_s: float,
    forced: Sequence[str],
    order: Sequence[str],
) -> Selection:
    if config.method == "dbp":
        return select_blocks(cands, rest_s, target_s, config.buckets, forced)
    if config.method == "greedy":
        from .select import greedy_select

        return greedy_select(cands, rest_s, target_s, forced)
    return select_in_order(
        cands, rest_s, target_s, order, config.method, config.remove_count, forced
    )


def load_inputs(config: PruneConfig) -> tuple[ModelSpec, nn.Module, DataBundle, Any]:
    """The checkpoint's spec and model, the data, and the test subset; checked against each other."""
    spec = read_checkpoint(config.checkpoint).spec
    if config.model not in ("", spec.name):
        raise ValueError(
            f"checkpoint {config.checkpoint!r} holds model {spec.name!r}, not {config.model!r}"
        )
    teacher = load_model(spec, checkpoint=config.checkpoint)
    data = load_data(
        config.data,
        root=config.data_root,
        batch_size=config.batch_size,
        seed=config.seed,
        limit=config.limit,
    )
    _check_inputs(spec, data, config)
    return spec, teacher, data, first_samples(data.test, config.test_samples)


@contextlib.contextmanager
def open_table(config: PruneConfig) -> Iterator[LatencyTable | None]:
    """The latency table ``config`` names (None when ``table=""`` turns it off), closed after."""
    table = LatencyTable(config.table) if config.table != "" else None
    try:
        yield table
    finally:
        if table is not None:
            table.close()


def recover(
    student: nn.Module,
    teacher: nn.Module,
    data: DataBundle,
    test: Any,
    config: PruneConfig,
    tune: bool = True,
) -> tuple[float, float]:
    """Test accuracy of ``student`` before and after distillation fine-tuning (when ``tune``)."""
    before = evaluate(student, test, config.device).accuracy
    if not (tune and config.epochs > 0):
        return before, before
    finetune(
        student,
        teacher,
        data.train,
        data.val,
        config.epochs,
        lr=config.lr,
        device=config.device,
        progress=config.progress_bar,
    )
    return before, evaluate(student, test, config.device).accuracy


def over_budget(measured_s: float, budget_s: float, config: PruneConfig) -> str:
    """The warning for a measured latency over its budget (seconds)."""
    return (
        f"measured latency {measured_s * 1e3:.3f} ms is over the budget "
        f"{budget_s * 1e3:.3f} ms (+{config.tolerance:.0%} tolerance)"
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (unchanged when None); restore them after."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_pair(
    a: nn.Module, b: nn.Module, spec: ModelSpec, config: PruneConfig
) -> tuple[float, float]:
    """Median end-to-end latency (s) of two models, timed interleaved on the same input."""
    x = torch.randn(
        spec.input_shape(config.latency_batch_size), generator=torch.Generator().manual_seed(0)
    )
    dev = torch.device(config.device)
    x = x.to(dev)
    a, b = copy.deepcopy(a).to(dev).eval(), copy.deepcopy(b).to(dev).eval()
    opts = TimingOptions(budget_s=config.timing_budget_s)
    with torch_threads(config.latency_threads or config.threads):
        ma, mb = measure([lambda: a(x), lambda: b(x)], dev, opts, device_info(dev).fingerprint)
    return ma.median_s, mb.median_s


def write_artefacts(
    out: Path,
    plan: PrunePlan,
    student: nn.Module,
    dataset: str,
    test_accuracy: float,
    config: PruneConfig,
    warnings: list[str],
) -> tuple[Path, Path, str]:
    """Write ``plan.json``, ``pruned.pt`` (spec, plan, state_dict) and, when ``config.export``,
    ``pruned.pt2`` into ``out``; their paths ("" when not exported). A failed export is a
    warning appended to ``warnings``: the checkpoint is the artefact."""
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / "plan.json"
    plan_path.write_text(plan.to_json())
    ckpt = save_checkpoint(
        out / "pruned.pt",
        plan.spec,
        student,
        plan_json=plan.to_json(),
        dataset=dataset,
        test_accuracy=test_accuracy,
        budget_s=plan.budget_s,
    )
    export_path = ""
    if config.export:
        from .surgery import export_pruned

        try:
            export_path = str(
                export_pruned(student, plan.spec, out / "pruned.pt2", config.latency_batch_size)
            )
        except Exception as e:  # export is a convenience: the checkpoint is the artefact
            warnings.append(f"torch.export failed: {type(e).__name__}: {e}")
    return plan_path, ckpt, export_path


# ---------------------------------------------------------------------------- the pipeline


def run_pipeline(
    config: PruneConfig,
    progress: ProgressFn | None = None,
    on_event: EventFn | None = None,
) -> PruneReport:
    """Prune ``config.checkpoint`` to the latency budget; write plan, checkpoint, export, report.

    ``progress(what, done, total)`` reports steps; ``on_event(dict)`` gets one
    JSON-ready dict per milestone (``event`` = profiled, scored, selected,
    finetuned, measured, done).
    """
    t_start = time.perf_counter()
    emit = on_event or (lambda e: None)
    step = progress or (lambda what, done, total: None)
    with torch_threads(config.threads):
        if config.method in WIDTH_METHODS:
            from .hfp_pipeline import run_width

            return run_width(config, step, emit, t_start)
        return _run(config, step, emit, t_start)


def profile_baseline(
    model: nn.Module, spec: ModelSpec, config: PruneConfig, step: ProgressFn
) -> BlockProfile:
    """Per-block serial latency of ``model`` as ``config`` asks (the table serves what it holds)."""
    step("profiling", 0, 1)
    with open_table(config) as table:
        return profile_model(
            model,
            spec,
            batch_size=config.latency_batch_size,
            device=config.device,
            table=table,
            options=TimingOptions(budget_s=config.timing_budget_s),
            threads=config.latency_threads or config.threads,
            progress=step,
        )


def _run(
    config: PruneConfig,
    step: ProgressFn,
    emit: EventFn,
    t_start: float,
    profile: BlockProfile | None = None,
) -> PruneReport:
    """The block pipeline; ``profile``: the baseline's, when the caller has already taken it."""
    out = Path(config.out)
    spec, teacher, data, test = load_inputs(config)
    warnings: list[str] = []

    # 1. Profile the baseline (the table serves what this device has already timed).
    profile = profile or profile_baseline(teacher, spec, config, step)
    base_s = profile.end_to_end_s
    budget_s = base_s * config.budget if config.budget is not None else config.budget_ms / 1e3
    cands, rest_s, scale = candidates_from_profile(profile, {})
    floor = min_latency(rest_s, cands)
    if budget_s < floor:
        raise BudgetError(
            f"latency budget {budget_s * 1e3:.3f} ms is below {floor * 1e3:.3f} ms, what the "
            f"unremovable part of {spec.name} costs on this device (baseline {base_s * 1e3:.3f} ms); "
            f"the smallest feasible --budget is {floor / base_s:.3f}"
        )
    emit(
        {
            "event": "profiled",
            "end_to_end_s": base_s,
            "budget_s": budget_s,
            "floor_s": floor,
            "additivity_error": profile.additivity_error,
            "from_table": profile.from_table,
        }
    )

    # 2. Scores of the unpruned model.
    def gains_of(model: nn.Module) -> tuple[tuple[BlockScore, ...], dict[str, float]]:
        if config.method in ("dbp", "greedy"):
            scores = score_blocks(
                model,
                data.train,
                data.val,
                spec.num_classes,
                max_fit=config.calibration_samples,
                max_eval=config.heldout_samples,
                device=config.device,
                progress=step,
            )
            return scores, {s.name: s.gain for s in scores}
        if config.method == "l1":
            return (), l1_gains(model, profile)
        rng = random.Random(config.seed)
        return (), {t.block.name: rng.random() for t in profile.blocks}

    scores, gains = gains_of(teacher)
    emit({"event": "scored", "scores": [s.to_dict() for s in scores]})

    def candidates() -> tuple[Candidate, ...]:
        return candidates_from_profile(profile, gains)[0]

    def order() -> list[str]:
        return [c.name for c in sorted(candidates(), key=lambda c: gains.get(c.name, 0.0))]

    # 3-5. Rounds of select -> remove -> fine-tune.
    if config.iterative:
        k = max(1, config.iterative_rounds)
        targets = [base_s * (budget_s / base_s) ** ((i + 1) / k) for i in range(k)]
    else:
        targets = [budget_s]
    student: fx.GraphModule = trace(copy.deepcopy(teacher))
    by_name = {t.block.name: t.block for t in profile.blocks}
    removed: list[str] = []
    rounds: list[RoundRecord] = []
    selection: Selection | None = None
    test_acc_before = 0.0
    measured_s = base_now_s = float("nan")
    budget_check_s = budget_s
    i = 0
    while True:
        target = targets[i] if i < len(targets) else targets[-1]
        if i > 0 and config.iterative and i < len(targets) and config.method in ("dbp", "greedy"):
            # Iterative mode: refresh the scores on the pruned model; removed blocks keep 0.
            scores, fresh = gains_of(student)
            gains = {name: fresh.get(name, 0.0) for name in gains}
        selection = _select(config, candidates(), rest_s, target, removed, order())
        new = [n for n in selection.removed if n not in removed]
        emit(
            {
                "event": "selected",
                "round": i,
                "target_s": target,
                "removed": new,
                "predicted_latency_s": selection.predicted_latency_s,
            }
        )
        step("surgery", i, i + 1)
        student = remove_more(student, [by_name[n] for n in new], spec, data.train)
        removed.extend(new)
        test_acc_before, test_acc = recover(student, teacher, data, test, config, bool(new))
        emit(
            {
                "event": "finetuned",
                "round": i,
                "accuracy_before": test_acc_before,
                "accuracy_after": test_acc,
            }
        )
        record = RoundRecord(
            i, target, tuple(new), selection.predicted_latency_s, test_acc_before, test_acc
        )
        i += 1
        if i < len(targets):
            rounds.append(record)
            continue
        # 6. Measure; over the budget: tighten the target and remove more.
        step("measuring", 0, 1)
        base_now_s, measured_s = measure_pair(teacher, student, spec, config)
        budget_check_s = budget_s if config.budget is None else config.budget * base_now_s
        rounds.append(RoundRecord(**{**asdict(record), "measured_latency_s": measured_s}))
        emit(
            {
                "event": "measured",
                "round": i - 1,
                "latency_s": measured_s,
                "baseline_s": base_now_s,
                "budget_s": budget_check_s,
            }
        )
        if (
            measured_s <= budget_check_s * (1 + config.tolerance)
            or len(rounds) >= config.max_rounds
        ):
            break
        if config.remove_count is not None and config.method in ("random", "l1"):
            break  # the baselines remove a fixed count; measuring is all that is left
        tightened = targets[-1] * budget_check_s / measured_s
        if tightened < floor:
            warnings.append(
                f"measured {measured_s * 1e3:.3f} ms is over the budget and nothing more can go"
            )
            break
        targets.append(tightened)
    if measured_s > budget_check_s * (1 + config.tolerance):
        warnings.append(over_budget(measured_s, budget_check_s, config))

    # 7. Write plan, checkpoint, export and report.
    assert selection is not None
    ordered = [t.block.name for t in profile.blocks if t.block.name in set(removed)]
    plan = PrunePlan(
        spec=spec,
        removed=tuple(RemovedBlock(n, by_name[n].replacement) for n in ordered),
        predicted_latency_s=selection.predicted_latency_s,
        budget_s=budget_s,
        batch_size=config.latency_batch_size,
        method=config.method,
    )
    test_after = rounds[-1].accuracy_after_finetune
    plan_path, ckpt, export_path = write_artefacts(
        out, plan, student, data.info.name, test_after, config, warnings
    )
    base_flops, base_params = flops_params(teacher, spec)
    pr_flops, pr_params = flops_params(student, spec)
    base_acc = evaluate(teacher, test, config.device).accuracy
    report = PruneReport(
        model=spec.name,
        dataset=data.info.name,
        method=config.method,
        budget_s=budget_s,
        budget_check_s=budget_check_s,
        predicted_latency_s=selection.predicted_latency_s,
        removed_blocks=tuple(ordered),
        baseline=ModelStats(base_now_s, base_acc, base_flops, base_params),
        pruned=ModelStats(measured_s, test_after, pr_flops, pr_params),
        accuracy_before_finetune=rounds[0].accuracy_before_finetune,
        speedup=base_now_s / measured_s if measured_s > 0 else float("nan"),
        budget_met=measured_s <= budget_check_s * (1 + config.tolerance),
        additivity_scale=scale,
        scores=tuple(scores),
        candidates=candidates(),
        rounds=tuple(rounds),
        plan_path=str(plan_path),
        checkpoint_path=str(ckpt),
        export_path=export_path,
        device=profile.device.to_dict(),
        config=config.to_dict(),
        seconds=time.perf_counter() - t_start,
        warnings=tuple(warnings),
    )
    (out / "report.json").write_text(report.to_json())
    emit(
        {
            "event": "done",
            "report": str(out / "report.json"),
            "speedup": report.speedup,
            "budget_met": report.budget_met,
        }
    )
    return report
