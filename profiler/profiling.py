"""Per-block serial latency in place, end-to-end latency, and the additivity check.

One real forward pass captures every block's input; then each block (and each
removable block's replacement, and each stretch of "rest") is timed on its
captured input, on the target device: on CPU alone, interleaved with the whole
model; on CUDA chained, as one forward pass with timing marks between pieces
(see ``profiler.chain``), so no piece pays launch overhead the whole model
overlaps, and that overhead is reported on its own line.
The sum of blocks and rest is compared with the end-to-end latency: the
additivity error in every profile is what keeps these numbers honest.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from .blocks import BlockGraph, count_ops, discover
from .cut import graph_pass
from .device import device_info, resolve_device, throttle_warning
from .graph import extract, propagate_shapes, signature, tensor_meta, trace
from .interference import InterferenceWatch
from .lookups import direct_lookups
from .memory import (
    ActivationEstimate,
    available_memory,
    bytes_of,
    check_fits,
    estimate_activations,
    fits,
)
from .model_names import is_program
from .models import ModelSpec, eval_mode
from .quality import QualityLimits, assess
from .records import (
    BlockProfile,
    BlockTiming,
    DeviceInfo,
    Interference,
    Measurement,
    PredictionCheck,
    Segment,
)
from .rewire import REWIRED, without_blocks
from .table import LatencyTable
from .timing import PieceTimings, Progress, TimingOptions, measure_pieces, piece_mode

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GROUPS = ("serial", "side", "whole")  # pieces of the forward pass, replacements, whole models
CHECK, REFERENCE = "check", "check:reference"  # the prediction check's two whole models


class _Capture(fx.Interpreter):
    """Runs the graph once and keeps (copies of) the values of the requested nodes."""

    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node]) -> None:
        super().__init__(gm)
        self.keep = keep
        self.values: dict[fx.Node, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        if n in self.keep and isinstance(value, torch.Tensor):
            # Copy: a later in-place op (ReLU(inplace=True)) would otherwise change it.
            self.values[n] = value.clone()
        return value


@dataclass
class _Item:
    """One piece of work to time or look up: ``module`` called on the captured values of
    ``inputs`` (``None``: on the model's input). No module: known without timing
    (an identity replacement costs 0 s)."""

    label: str
    signature: str
    module: nn.Module | None
    inputs: list[fx.Node] | None = None
    outputs: list[fx.Node] | None = None  # pieces of the forward pass publish their results
    measurement: Measurement | None = None
    nodes: list[fx.Node] | None = None  # a piece of the forward pass: the graph nodes it runs
    removed: tuple[str, ...] = ()  # the prediction check's pruned model: the blocks it lacks


def _call(module: nn.Module, inputs: list[torch.Tensor]) -> Callable[[], object]:
    return lambda: module(*inputs)


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def profile_model(
    model: nn.Module,
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    dtype: str = "float32",
    fused: bool = False,
    table: LatencyTable | None = None,
    remeasure: bool = False,
    options: TimingOptions | None = None,
    threads: int | None = None,
    example: torch.Tensor | None = None,
    progress: Progress | None = None,
    on_block: Callable[[BlockTiming], None] | None = None,
    limits: QualityLimits | None = None,
    store_failed: bool = False,
) -> BlockProfile:
    """Measure each block's serial latency (seconds) on ``device``.

    ``example`` is the input batch (shape ``spec.input_shape(batch_size)``);
    random normal data when omitted. With ``table``, measurements of pieces
    already timed on this device are reused unless ``remeasure``; new ones
    are stored only when the profile passes its own checks (``limits``:
    additivity, spread, drift, other processes' CPU use), or always with
    ``store_failed``. The checks are in ``profile.quality``. ``fused``
    measures the model as deployed with fused Conv-BN-ReLU kernels. The
    caller's model is not modified.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dev = resolve_device(device if device is not None else None)
    if dev.type == "cpu" and dtype != "float32":
        raise ValueError(f"dtype {dtype} is only supported on CUDA here; use float32 on CPU")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    # Every CUDA call (events, graph capture, Triton launches) on ``dev``, not the current device.
    on_device = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    try:
        run = _Run(dev, batch_size, dtype, fused, options, progress, limits or QualityLimits())
        with on_device:
            profile, todo = _profile(model, spec, run, table, remeasure, example, on_block)
        if table is not None and todo and (store_failed or profile.quality.ok):  # type: ignore[union-attr]
            table.remember_device(profile.device)
            table.put_many(
                profile.device.fingerprint,
                [(it.signature, it.measurement, it.label) for it in todo],  # type: ignore[misc]
                quality=profile.quality,
            )
        return profile
    finally:
        torch.set_num_threads(previous_threads)


@dataclass(frozen=True)
class _Run:
    """How one profile is taken (the options that do not change what is measured)."""

    dev: torch.device
    batch_size: int
    dtype: str
    fused: bool
    options: TimingOptions | None
    progress: Progress | None
    limits: QualityLimits


def _profile(
    model: nn.Module,
    spec: ModelSpec,
    run: _Run,
    table: LatencyTable | None,
    remeasure: bool,
    example: torch.Tensor | None,
    on_block: Callable[[BlockTiming], None] | None,
) -> tuple[BlockProfile, list[_Item]]:
    """The checked profile, and the items timed in this run (what the table may store)."""
    info = device_info(run.dev)
    model, bg, x = _traced(model, spec, run, example)
    items, layout = _plan_items(bg, model, x, run.dtype, run.fused)
    options = run.options or TimingOptions()
    mode = piece_mode(run.dev, options)
    for it in items:  # pieces timed another way are other table entries
        it.signature = _table_signature(
            it.signature, mode, run.dev.type == "cuda" and options.cuda_graph
        )
    todo, served = _to_time(items, None if remeasure else table, info.fingerprint, mode)
    seen, timed = None, None
    check: list[_Item] = []
    if todo and options.check:
        check, skipped = _check_items(bg, x, todo, mode != "alone")
        if skipped:
            info = dataclasses.replace(info, warnings=(*info.warnings, skipped))
    if todo:
        info, seen, timed = _time_items(bg, x, todo + check, info, run)
    for it in items:
        if it.measurement is None:
            it.measurement = Measurement.exact(0.0, info.fingerprint)
    profile = _assemble(spec, bg, x, items, layout, info, run, served, on_block)
    profile = dataclasses.replace(
        profile,
        timing=mode,
        launch_overhead_s=timed.launch_overhead_s if timed else None,
        mark_cost_s=timed.mark_cost_s if timed else None,
        check=_prediction_check(profile, items, check) if check else None,
    )
    quality = assess(profile, [it.measurement for it in todo], seen, run.limits)  # type: ignore[misc]
    return dataclasses.replace(profile, quality=quality), todo


def _fused(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The deploy-time form of ``model``, its Conv-BN(-activation) chains fused; ValueError
    when it has none to fuse, rather than unfused timings labelled fused."""
    from kernels import FusedConv2d, fuse

    fused = fuse(model)
    if not any(isinstance(m, FusedConv2d) for m in fused.modules()):
        why = (
            "a torch.export program holds operators, not the Conv2d and BatchNorm2d modules "
            "fusion swaps"
            if is_program(spec.name)
            else "no nn.Conv2d is read by an nn.BatchNorm2d alone"
        )
        raise ValueError(
            f"--fused: {spec.name!r} has no Conv-BN chain to fuse ({why}); profile it without "
            "--fused"
        )
    return fused


def _traced(
    model: nn.Module, spec: ModelSpec, run: _Run, example: torch.Tensor | None
) -> tuple[nn.Module, BlockGraph, torch.Tensor]:
    """A copy of ``model`` as it will be timed (device, dtype, eval, fused), its traced
    blocks, and the input batch on the device (random normal, seeded, unless given)."""
    model = eval_mode(copy.deepcopy(model).to(device=run.dev, dtype=DTYPES[run.dtype]))
    if run.fused:
        model = _fused(model, spec)
    if run.progress:
        run.progress("tracing", 0, 1)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        gm = trace(model)
        if run.dev.type == "cpu" and run.batch_size > 1:  # before the batch is made
            one = (  # from a generator of its own: the process's random state is left alone
                example[:1]
                if example is not None
                else torch.randn(spec.input_shape(1), generator=torch.Generator().manual_seed(0))
            )
            _check_memory(gm, model, spec, run, one.to(dtype=DTYPES[run.dtype]))
        if example is None:
            example = torch.randn(spec.input_shape(run.batch_size), generator=gen)
        x = example.to(device=run.dev, dtype=DTYPES[run.dtype])
        bg = discover(gm, x)
    direct_lookups(bg.gm)  # the traced graph as fast as the model it came from
    return model, bg, x


def _check_memory(
    gm: fx.GraphModule, model: nn.Module, spec: ModelSpec, run: _Run, x1: torch.Tensor
) -> None:
    """:class:`BatchTooLarge` before a batch that cannot fit in this machine's memory is
    made: on a CPU it would swap for minutes and die of the OOM killer without a word. The
    rough bound (batch 1 shapes: one small forward) clears ordinary profiles; past it, the
    pieces' real inputs are counted."""
    available = available_memory()
    if available is None:
        return
    propagate_shapes(gm, x1)
    rough = estimate_activations(gm)
    if fits(rough.per_sample, run.batch_size, available):
        return
    bg1 = discover(gm, x1)
    items, _ = _plan_items(bg1, model, x1, run.dtype, run.fused)
    kept = bytes_of(n for it in items for n in (it.inputs or []))
    estimate = ActivationEstimate(kept=kept, live=rough.live)
    doing = f"profiling {spec.name} {tuple(x1.shape[1:])}"
    check_fits(estimate.per_sample, run.batch_size, doing, available)


def _to_time(
    items: list[_Item], table: LatencyTable | None, fingerprint: str, mode: str
) -> tuple[list[_Item], int]:
    """Serve what ``table`` holds; (the items still to time, how many were served)."""
    served = 0
    if table is not None:
        for it in items:
            if it.module is not None and (m := table.get(fingerprint, it.signature)) is not None:
                it.measurement = m
                served += 1
    todo = [it for it in items if it.measurement is None and it.module is not None]
    if mode != "alone" and any(it.nodes for it in todo):
        # Chained, the pieces of the pass and the model's end to end are one measurement.
        fresh = [it for it in items if it.nodes or it.label == "model" or it in todo]
        todo = [it for it in fresh if it.module is not None]
        served -= sum(1 for it in todo if it.measurement is not None)  # timed again after all
    return todo, served


def _check_items(
    bg: BlockGraph, x: torch.Tensor, todo: list[_Item], chained: bool
) -> tuple[list[_Item], str]:
    """What the prediction check times: the traced model without every second block that
    can be bypassed, and (unless the traced model itself is timed in the same rounds, as
    it is alone) the traced model again as its reference. Never stored in the table:
    the check compares figures of one run. Also why there is no check, when the pruned
    copy cannot be built or run (the profile goes on without it)."""
    chosen = [b for b in bg.blocks if b.removable and b.replacement in REWIRED][::2]
    if not chosen:
        return [], ""
    try:
        pruned = without_blocks(bg.gm, chosen)
        with torch.inference_mode():
            pruned(x)
    except Exception as e:  # a diagnostic must not cost the user the profile itself
        names = ", ".join(b.name for b in chosen[:3])
        return [], (
            f"prediction check skipped: the model without blocks {names}... failed "
            f"({type(e).__name__}: {e}); block surgery on those blocks would fail alike"
        )
    items = [_Item(CHECK, "", pruned, removed=tuple(b.name for b in chosen))]
    if chained or not any(it.label == "model" for it in todo):
        items.append(_Item(REFERENCE, "", bg.gm))
    return items, ""


def _prediction_check(
    profile: BlockProfile, items: list[_Item], check: list[_Item]
) -> PredictionCheck:
    pruned, *own = check  # the reference: timed for the check, or the model's end to end
    reference = own[0] if own else next(it for it in items if it.label == "model")
    return PredictionCheck(
        removed=pruned.removed,
        predicted_fraction=profile.predicted_fraction(pruned.removed),
        measured=pruned.measurement,  # type: ignore[arg-type]
        reference=reference.measurement,  # type: ignore[arg-type]
    )


def _table_signature(signature: str, mode: str, cuda_graph: bool) -> str:
    """The table key of a piece: its signature, plus how it was timed when not alone, eager."""
    if mode == "alone" and not cuda_graph:
        return signature
    return _hash(signature, mode, "graph" if cuda_graph else "eager")


def _time_items(
    bg: BlockGraph, x: torch.Tensor, todo: list[_Item], info: DeviceInfo, run: _Run
) -> tuple[DeviceInfo, Interference | None, PieceTimings]:
    """Time ``todo`` in place (filling each item's measurement), watching the CPU meanwhile.

    Pieces of the forward pass (blocks, rest), replacements and whole models are
    timed as ``measure_pieces`` times each group. Chained, the traced model's end to
    end is the plain pass of the same rounds as its pieces (:mod:`profiler.cut`).
    """
    chained = piece_mode(run.dev, run.options or TimingOptions()) != "alone"
    pieces = [it.nodes for it in todo if it.nodes]
    in_pass = {"model"} if chained and pieces else set()
    model_items = [it for it in todo if it.label in in_pass]
    todo = [it for it in todo if it.label not in in_pass]
    works = _bind_inputs(bg, x, todo)
    group = {"block": "serial", "rest": "serial", "replace": "side"}
    kinds = [group.get(it.label.split(":", 1)[0], "whole") for it in todo]
    serial, side, whole = ([w for w, k in zip(works, kinds) if k == g] for g in GROUPS)
    serial_pass = graph_pass(bg.gm, pieces, [x]) if in_pass else None  # type: ignore[arg-type]
    warnings = [w for w in [throttle_warning(run.dev)] if w]
    watch = InterferenceWatch(torch.get_num_threads()).start() if run.dev.type == "cpu" else None
    timed = measure_pieces(
        serial, side, whole, run.dev, run.options, info.fingerprint, run.progress, serial_pass
    )
    seen = watch.stop() if watch is not None else None
    results = {g: iter(getattr(timed, g)) for g in GROUPS}
    for it, k in zip(todo, kinds):
        it.measurement = next(results[k])
    for it in model_items:
        it.measurement = timed.plain
    warnings += [w for w in [throttle_warning(run.dev)] if w and w not in warnings]
    if warnings:
        info = dataclasses.replace(info, warnings=(*info.warnings, *warnings))
    return info, seen, timed


def _assemble(
    spec: ModelSpec,
    bg: BlockGraph,
    x: torch.Tensor,
    items: list[_Item],
    layout: dict[str, tuple[tuple[str, ...], int, int]],
    info: DeviceInfo,
    run: _Run,
    served: int,
    on_block: Callable[[BlockTiming], None] | None,
) -> BlockProfile:
    by_label = {it.label: it.measurement for it in items}
    timings = []
    for b in bg.blocks:
        rep = by_label.get(f"replace:{b.name}") if b.removable else None
        t = BlockTiming(b, by_label[f"block:{b.name}"], rep)  # type: ignore[arg-type]
        timings.append(t)
        if on_block:
            on_block(t)
    rest = tuple(
        Segment(name, names, by_label[f"rest:{name}"], flops, params)  # type: ignore[arg-type]
        for name, (names, flops, params) in layout.items()
    )
    return BlockProfile(
        model=spec.name,
        batch_size=int(x.shape[0]),
        input_shape=tuple(x.shape),
        dtype=run.dtype,
        device=info,
        blocks=tuple(timings),
        rest=rest,
        end_to_end=by_label["model"],  # type: ignore[arg-type]
        eager=by_label["eager"],
        fused=run.fused,
        from_table=served,
        created_at=time.time(),
    )


def _rest_names(bg: BlockGraph) -> dict[str, tuple[str, ...]]:
    """Names for the rest segments: stem, glue after the preceding block, head."""
    order = {n.name: i for i, n in enumerate(bg.gm.graph.nodes)}
    names: dict[str, tuple[str, ...]] = {}
    for seg in bg.rest:
        start = order[seg[-1]]
        before = [b for b in bg.blocks if order[b.output_node] < start]
        after = [b for b in bg.blocks if order[b.output_node] > start]
        if not before:
            name = "stem"
        elif not after:
            name = "head"
        else:
            name = f"after:{before[-1].name}"
        while name in names:  # branches can leave two stretches after the same block
            name += "'"
        names[name] = seg
    return names


def _plan_items(
    bg: BlockGraph, model: nn.Module, x: torch.Tensor, dtype: str, fused: bool
) -> tuple[list[_Item], dict[str, tuple[tuple[str, ...], int, int]]]:
    """Everything to time, with signatures, and each rest segment's (nodes, flops, params) by name."""
    # Blocks and rest in network order, so that one round of timing runs like one
    # forward pass (same cache state as end to end); replacements after them.
    order = {n.name: i for i, n in enumerate(bg.gm.graph.nodes)}
    serial: list[tuple[int, _Item]] = []
    replacements: list[_Item] = []
    for b in bg.blocks:
        nodes = [bg.node(n) for n in b.nodes]
        piece, inputs, outputs = extract(bg.gm, nodes)
        direct_lookups(piece)
        serial.append(
            (
                order[b.output_node],
                _Item(f"block:{b.name}", b.signature, piece, inputs, outputs, nodes=nodes),
            )
        )
        if not b.removable:
            continue
        module, rep_inputs = bg.replacement(b)
        if module is None:
            replacements.append(_Item(f"replace:{b.name}", _hash("identity"), None))
            continue
        metas = [tensor_meta(i) for i in rep_inputs]
        # An adapter without activation keeps the key it had before adapters could end in one.
        activation = [b.adapter_activation] if b.adapter_activation else []
        sig = (
            signature(module, metas, extra="replacement")
            if isinstance(module, fx.GraphModule)
            else _hash("adapter", b.input_shape, b.output_shape, dtype, *activation)
        )
        module = direct_lookups(module.to(x.device))
        replacements.append(_Item(f"replace:{b.name}", sig, module, rep_inputs))
    layout: dict[str, tuple[tuple[str, ...], int, int]] = {}
    for name, names in _rest_names(bg).items():
        nodes = [bg.node(n) for n in names]
        piece, inputs, outputs = extract(bg.gm, nodes)
        direct_lookups(piece)
        sig = signature(piece, [tensor_meta(i) for i in inputs], extra="rest")
        item = _Item(f"rest:{name}", sig, piece, inputs, outputs, nodes=nodes)
        serial.append((order[names[-1]], item))
        flops, _, params = count_ops(bg.gm, [bg.node(n) for n in names])
        layout[name] = (names, flops, params)
    items = [it for _, it in sorted(serial, key=lambda p: p[0])] + replacements
    # End to end: the traced graph the pieces were cut from (the form a pruned model
    # takes too), and the model as given, for reference (eager Python frees
    # intermediates later than fx's generated code, which shows at large batches).
    metas = [tensor_meta(n) for n in bg.gm.graph.nodes if n.op == "placeholder"]
    items.append(_Item("model", signature(bg.gm, metas, extra=f"model|fused={fused}"), bg.gm))
    items.append(_Item("eager", signature(bg.gm, metas, extra=f"eager|fused={fused}"), model))
    return items, layout


def _bind_inputs(bg: BlockGraph, x: torch.Tensor, todo: list[_Item]) -> list[Callable[[], object]]:
    """Bind each item's work to its input values.

    One forward pass captures every needed value. Then the pieces of the
    forward pass (blocks and rest, timed in network order) read their inputs
    from a shared table and publish their outputs into it, so one round of
    timing is a real forward pass cut at block boundaries: each block reads the
    activation its predecessor has just written, cache-hot as in the whole model,
    not a copy captured long before. (Chained, the pieces run inside the model's
    own forward instead: :mod:`profiler.cut`.)
    """
    need = {n for it in todo for n in (it.inputs or [])}
    cap = _Capture(bg.gm, need)
    with torch.inference_mode():
        cap.run(x)
    values: dict[fx.Node, torch.Tensor] = {
        **cap.values,
        **{n: x for n in need if n.op == "placeholder"},
    }

    def work(it: _Item) -> Callable[[], object]:
        module, inputs, outputs = it.module, it.inputs, it.outputs
        if inputs is None:
            return _call(module, [x])  # type: ignore[arg-type]
        if not outputs:
            return _call(module, [values[n] for n in inputs])  # type: ignore[arg-type]

        def run() -> None:
            out = module(*[values[n] for n in inputs])  # type: ignore[misc]
            for node, value in zip(outputs, out if len(outputs) > 1 else (out,)):
                values[node] = value

        return run

    return [work(it) for it in todo]
