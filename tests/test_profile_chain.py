"""Pieces timed in one pass with marks between them: the split, the mark cost, the launch
overhead line, and the profile that says how its pieces were timed."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import torch

from profiler import BlockProfile, ModelSpec, TimingOptions, load_model, profile_model
from profiler.chain import (
    CpuChain,
    EagerCudaChain,
    GraphCudaChain,
    launch_overhead,
    mark_cost,
    subtract_marks,
    time_chain,
)
from profiler.records import Measurement
from profiler.timing import measure_pieces, piece_mode

from .cli_helpers import QUICK_PROFILE

SPEC = ModelSpec("resnet20", input_size=(8, 8))
QUICK = TimingOptions(budget_s=0.2, min_rounds=3, max_rounds=20)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none present")


def _spin(seconds: float):
    """Busy-wait work: steadier than sleep for sub-millisecond pieces."""

    def work() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return work


def test_mark_cost_is_the_marked_pass_excess_per_mark() -> None:
    assert mark_cost([10.0, 10.4, 10.2], [8.0, 8.2, 8.1], marks=4) == pytest.approx(0.525)
    # Paired by round: a pass that slows down over the rounds moves both sides alike.
    assert mark_cost([2.0, 4.0, 6.0], [1.0, 3.0, 5.0], marks=1) == pytest.approx(1.0)
    assert mark_cost([8.0], [9.0], marks=3) == 0.0  # noise never makes marks cost negative
    # A difference buried in the scatter of the differences is not subtracted.
    noisy_marked, noisy_plain = [5.0, 1.0, 9.0, 2.0, 8.0], [1.0, 6.0, 2.0, 7.0, 3.0]
    assert mark_cost(noisy_marked, noisy_plain, marks=1) == 0.0
    assert mark_cost([], [1.0], marks=3) == 0.0
    assert subtract_marks([(3.0, 1.0), (0.5,)], 0.75) == [(2.25, 0.25), (0.0,)]


def test_rounds_alternate_which_pass_runs_first() -> None:
    # A pass run second in a round finds warm caches; alternating cancels that.
    order: list[str] = []
    clock = FakeClock()
    chain = CpuChain([lambda: order.append("piece")], clock)
    chain._plain = lambda: order.append("plain") or 0.0  # type: ignore[method-assign]
    for _ in range(2):
        chain.round()
    assert order == ["plain", "piece", "piece", "plain"]


def test_launch_overhead_is_alone_minus_chained() -> None:
    alone = [Measurement((3e-6,)), Measurement((5e-6,))]
    chained = [Measurement((2e-6,)), Measurement((4.5e-6,))]
    assert launch_overhead(alone, chained) == pytest.approx(1.5e-6)
    with pytest.raises(ValueError, match="2 pieces timed alone but 1 chained"):
        launch_overhead(alone, chained[:1])


class FakeClock:
    """Nanoseconds that move only when work runs (or a mark is read: ``per_read``)."""

    def __init__(self, per_read: int = 0) -> None:
        self.now, self.per_read = 0, per_read

    def __call__(self) -> int:
        self.now += self.per_read
        return self.now

    def work(self, ns: int):
        def run() -> None:
            self.now += ns

        return run


def test_cpu_chain_splits_one_pass_into_its_pieces() -> None:
    clock = FakeClock()
    lengths = (2_000_000, 500_000, 1_000_000)
    chain = CpuChain([clock.work(ns) for ns in lengths], clock)
    got = time_chain(chain, warmup=1, min_rounds=5, max_rounds=8)
    assert [m.median_s for m in got.pieces] == pytest.approx([ns / 1e9 for ns in lengths])
    assert all(m.runs == 5 and m.timer == "perf_counter" for m in got.pieces)  # settled at once
    assert got.plain.median_s == pytest.approx(3.5e-3) and got.mark_cost_s == 0.0


def test_cpu_chain_subtracts_what_reading_the_clock_costs() -> None:
    # Every clock read costs 10 us: the marked pass holds 2 outer + 4 inner reads, the
    # plain pass 2, so a mark costs 10 us, taken off each piece.
    clock = FakeClock(per_read=10_000)
    chain = CpuChain([clock.work(ns) for ns in (300_000, 100_000, 50_000)], clock)
    got = time_chain(chain, warmup=0, min_rounds=3, max_rounds=3)
    assert got.mark_cost_s == pytest.approx(10e-6)
    assert [m.median_s for m in got.pieces] == pytest.approx([300e-6, 100e-6, 50e-6])


def test_settle_runs_after_each_pass_outside_the_timing() -> None:
    # On a GPU, settle is a synchronise: the marks read what the host spends issuing each
    # piece, and the queued work it waits for (here 5 ms) is in no figure.
    clock = FakeClock()
    settled: list[int] = []

    def settle() -> None:
        settled.append(clock.now)
        clock.now += 5_000_000

    chain = CpuChain([clock.work(ns) for ns in (200_000, 40_000)], clock, settle=settle)
    got = time_chain(chain, warmup=0, min_rounds=4, max_rounds=4)
    assert len(settled) == 8  # both passes of each round
    assert [m.median_s for m in got.pieces] == pytest.approx([200e-6, 40e-6])
    assert got.marked.median_s == pytest.approx(240e-6) == got.plain.median_s


def test_cpu_chain_round_on_real_time() -> None:
    # Real clock on a shared machine: only what preemption cannot reverse. A piece lasts
    # at least its spin; the marks lie inside the marked pass.
    intervals, marked, plain = CpuChain([_spin(3e-3), _spin(0.3e-3)]).round()
    assert intervals[0] >= 3e-3 and intervals[1] >= 0.3e-3
    assert sum(intervals) <= marked and plain >= 3.3e-3


def test_cpu_chain_subtracts_what_the_marks_cost() -> None:
    # A runner whose marks cost 1 ms each: the pieces come back without it.
    class Costly:
        timer, pieces = "perf_counter", 2

        def round(self):
            return [0.003 + 0.001, 0.001 + 0.001], 0.004 + 3 * 0.001, 0.004

    got = time_chain(Costly(), warmup=0, min_rounds=3, max_rounds=3)
    assert got.mark_cost_s == pytest.approx(0.001)
    assert [m.median_s for m in got.pieces] == pytest.approx([0.003, 0.001])


def test_piece_mode_per_device_and_options() -> None:
    assert piece_mode("cpu", TimingOptions()) == "alone"
    assert piece_mode("cuda", TimingOptions()) == "chained"
    assert piece_mode("cuda", TimingOptions(cuda_graph=True)) == "chained_graph"
    assert piece_mode("cuda", TimingOptions(pieces="alone")) == "alone"
    assert piece_mode("cuda", TimingOptions(l2_flush=True)) == "alone"  # cold: one at a time
    assert piece_mode("cpu", TimingOptions(pieces="chained", cuda_graph=True)) == "chained"
    with pytest.raises(ValueError, match="pieces must be"):
        TimingOptions(pieces="sometimes")


def test_measure_pieces_chained_on_cpu_reports_the_overhead() -> None:
    serial = [_spin(0.5e-3), _spin(4e-3)]
    side = [_spin(0.5e-3)]
    whole = [lambda: [w() for w in serial]]
    opts = TimingOptions(budget_s=0.3, min_rounds=4, max_rounds=6, pieces="chained")
    got = measure_pieces(serial, side, whole, "cpu", opts)
    assert got.mode == "chained"
    assert (len(got.serial), len(got.side), len(got.whole)) == (2, 1, 1)
    assert got.launch_overhead_s is not None and got.mark_cost_s is not None
    # Real time on a shared machine: what preemption cannot reverse.
    assert all(m.median_s >= 0 and m.runs >= 4 for m in [*got.serial, *got.side])
    assert got.whole[0].median_s >= 4.5e-3 and got.whole[0].timer == "perf_counter"
    quick = TimingOptions(budget_s=0.3, min_rounds=4, max_rounds=6)
    alone = measure_pieces(serial, side, whole, "cpu", quick)
    assert alone.mode == "alone" and alone.launch_overhead_s is None


def test_profile_says_how_its_pieces_were_timed(tmp_path) -> None:
    model = load_model(SPEC)
    plain = profile_model(model, SPEC, batch_size=1, device="cpu", options=QUICK, threads=1)
    assert plain.timing == "alone" and plain.launch_overhead_s is None
    opts = TimingOptions(budget_s=0.2, min_rounds=3, max_rounds=20, pieces="chained")
    p = profile_model(model, SPEC, batch_size=1, device="cpu", options=opts, threads=1)
    assert p.timing == "chained"
    assert p.launch_overhead_s is not None and p.mark_cost_s is not None
    d = json.loads(p.to_json())
    assert d["timing"] == "chained" and d["launch_overhead_s"] == p.launch_overhead_s
    back = BlockProfile.from_json(p.to_json())
    assert (back.timing, back.launch_overhead_s, back.mark_cost_s) == (
        p.timing,
        p.launch_overhead_s,
        p.mark_cost_s,
    )
    from service.commands.render import timing_line

    line = timing_line(p)
    assert line is not None and "one forward pass" in line and "launch overhead" in line
    assert timing_line(plain) is None and "--cuda-graph" not in line
    import dataclasses

    eager_gpu = dataclasses.replace(p, device=dataclasses.replace(p.device, kind="cuda"))
    assert "for budgets, use --cuda-graph" in (timing_line(eager_gpu) or "")
    # An older profile without these fields reads as timed alone.
    for k in ("timing", "launch_overhead_s", "mark_cost_s"):
        d.pop(k)
    assert BlockProfile.from_dict(d).timing == "alone"


def _resnet_pieces(device: torch.device):
    model = load_model(ModelSpec("resnet20")).to(device).eval()
    x = torch.randn(1, 3, 32, 32, device=device)
    stages = [model.conv1, model.bn1, torch.nn.ReLU(), model.layer1, model.layer2, model.layer3]
    values = {"x": x}

    def piece(m, src, dst):
        def run():
            values[dst] = m(values[src])

        return run

    names = ["x", *[f"p{i}" for i in range(len(stages))]]
    return [piece(m, a, b) for m, a, b in zip(stages, names, names[1:])], model, x


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("graph", [False, True])
def test_cuda_chain_pieces_add_up_to_the_pass(graph: bool) -> None:
    dev = torch.device("cuda")
    works, _, _ = _resnet_pieces(dev)
    with torch.inference_mode():
        chain = GraphCudaChain(works, dev) if graph else EagerCudaChain(works, dev)
        got = time_chain(chain, min_rounds=20, max_rounds=200, budget_s=2.0)
    total = sum(m.median_s for m in got.pieces)
    assert all(m.timer == "cuda_events" and m.median_s >= 0 for m in got.pieces)
    # The marked pass, less every mark, is the plain pass up to its launch and tail.
    assert total == pytest.approx(got.plain.median_s, rel=0.1)
    # What one event costs depends on the host (10 to 40 us of launch time in eager mode on a
    # virtualised one): bounded by an average piece, not by a figure from one machine.
    assert 0 <= got.mark_cost_s < got.plain.median_s / (len(got.pieces) + 1)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_profile_is_chained_and_reports_launch_overhead(cuda_graph: bool) -> None:
    opts = TimingOptions(budget_s=1.0, min_rounds=10, cuda_graph=cuda_graph)
    p = profile_model(load_model(SPEC), SPEC, device="cuda", options=opts)
    assert p.timing == ("chained_graph" if cuda_graph else "chained")
    assert p.launch_overhead_s is not None and p.mark_cost_s is not None
    assert statistics.fmean([b.latency_s for b in p.blocks]) > 0


def test_chained_gpu_profiles_are_held_to_the_tight_additivity_limit() -> None:
    import dataclasses

    from profiler.quality import QualityLimits, assess

    spec = ModelSpec("resnet20", input_size=(8, 8))
    p = profile_model(load_model(spec), spec, device="cpu", options=QUICK, threads=1)
    total = p.blocks_s + p.rest_s
    on_gpu = dataclasses.replace(
        p,
        device=dataclasses.replace(p.device, kind="cuda"),
        end_to_end=Measurement((total / 1.2,) * 5),  # pieces add up to +20%
    )
    limits = QualityLimits()

    def additivity_flagged(timing: str) -> bool:
        q = assess(dataclasses.replace(on_gpu, timing=timing), [], None, limits)
        return any("blocks + rest differ" in problem for problem in q.problems)

    assert on_gpu.additivity_error == pytest.approx(0.2)
    assert not additivity_flagged("alone")  # one launch per piece: the loose GPU limit
    assert additivity_flagged("chained") and additivity_flagged("chained_graph")


def test_pieces_timed_another_way_are_other_table_entries(tmp_path) -> None:
    from profiler import LatencyTable

    spec = ModelSpec("resnet20", input_size=(8, 8))
    model = load_model(spec)
    chained = TimingOptions(budget_s=0.2, min_rounds=3, max_rounds=20, pieces="chained")
    with LatencyTable(tmp_path / "lut.sqlite") as table:
        kw = dict(device="cpu", threads=1, table=table, store_failed=True)
        profile_model(model, spec, options=QUICK, **kw)
        first = profile_model(model, spec, options=chained, **kw)
        again = profile_model(model, spec, options=chained, **kw)
        alone = profile_model(model, spec, options=QUICK, **kw)
    assert first.from_table == 0  # nothing timed alone is served to a chained profile
    assert again.from_table > 0 and alone.from_table > 0
    assert again.timing == "chained" and alone.timing == "alone"


def test_cli_profile_pieces_option(tmp_path, capsys) -> None:
    from service.cli import main

    out = tmp_path / "p.json"
    argv = list(QUICK_PROFILE)
    argv += ["--no-table", "--json", str(out), "--pieces", "chained"]
    assert main(argv) == 0
    assert "launch overhead" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["timing"] == "chained" and d["launch_overhead_s"] is not None


def _pass_pieces():
    from profiler.blocks import discover
    from profiler.models import eval_mode
    from profiler.profiling import _plan_items

    spec = ModelSpec("mobilenetv2", input_size=(8, 8))
    net = eval_mode(load_model(spec))
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        bg = discover(net, x)
    items, _ = _plan_items(bg, net, x, "float32", False)
    return bg, x, [it.nodes for it in items if it.nodes]


def test_the_pass_is_the_models_own_forward_with_marks_between_pieces() -> None:
    from profiler.cut import graph_pass, regrouped

    bg, x, pieces = _pass_pieces()

    class Seen(list):
        def mark(self, i: int) -> None:
            self.append(i)

    seen = Seen()
    marked = regrouped(bg.gm, pieces, seen.mark)
    with torch.inference_mode():
        want = bg.gm(x)
        assert torch.equal(regrouped(bg.gm, pieces)(x), want)
        assert torch.equal(marked(x), want)
    assert seen == list(range(len(pieces) + 1))
    # Every node of the model runs once: in its piece, or (inputs, parameters) where first read.
    calls = [n for n in marked.graph.nodes if n.op in ("call_module", "call_function")]
    model_calls = [n for n in bg.gm.graph.nodes if n.op in ("call_module", "call_function")]
    assert len(calls) == len(model_calls) + len(pieces) + 1
    one_pass = graph_pass(bg.gm, pieces, [x])
    got = time_chain(CpuChain(one_pass), warmup=1, min_rounds=3, max_rounds=3)
    assert len(got.pieces) == len(pieces) and all(m.median_s > 0 for m in got.pieces)
    # Round by round (medians of separate samples need not add up): the pieces lie inside
    # the marked pass they were timed in.
    for r, marked_s in enumerate(got.marked.samples_s):
        assert sum(m.samples_s[r] for m in got.pieces) <= marked_s


def test_pieces_out_of_running_order_are_refused() -> None:
    from profiler.cut import regrouped

    bg, _, pieces = _pass_pieces()
    with pytest.raises(ValueError, match="not in running order"):
        regrouped(bg.gm, [pieces[1], pieces[0], *pieces[2:]])


def test_a_chained_profile_is_served_from_the_table_whole(tmp_path) -> None:
    from profiler import LatencyTable

    table = LatencyTable(tmp_path / "lut.sqlite")
    opts = TimingOptions(budget_s=0.2, min_rounds=3, max_rounds=20, pieces="chained")
    model = load_model(SPEC)
    # Stored even when a busy machine fails the profile's checks: reuse is what is tested.
    first = profile_model(
        model, SPEC, batch_size=1, options=opts, threads=1, table=table, store_failed=True
    )
    again = profile_model(model, SPEC, batch_size=1, options=opts, threads=1, table=table)
    assert first.from_table == 0 and first.launch_overhead_s is not None
    # Nothing timed the second time: the pass's pieces and its end to end come back together.
    assert again.from_table > 0 and again.launch_overhead_s is None
    assert [b.latency_s for b in again.blocks] == [b.latency_s for b in first.blocks]
    assert again.end_to_end_s == first.end_to_end_s


def test_noise_on_a_quiet_machine_points_at_the_pieces_size() -> None:
    """Timings that scatter or do not add up: where other processes were busy, the fix is a
    quieter machine; where none was (a tiny model, microseconds a piece), more work per
    piece, with the pieces' median named (it told users to find a quieter machine)."""
    import dataclasses

    from profiler import Interference
    from profiler.quality import QualityLimits, assess

    spec = ModelSpec("resnet20", input_size=(8, 8))
    p = profile_model(load_model(spec), spec, device="cpu", options=QUICK, threads=1)
    timed = [b.latency for b in p.blocks]
    strict = QualityLimits(additivity=1e-9, spread=1e-9)  # both fail, whatever was measured

    def fixes(other_cores: float) -> list[str]:
        seen = Interference(1.0, 2, 1, 1.0, other_cores, 0.1, 0.1)
        problems = assess(dataclasses.replace(p, from_table=0), timed, seen, strict).problems
        return [q for q in problems if q.startswith(("blocks + rest", "timings scatter"))]

    quiet, busy = fixes(0.0), fixes(0.9)
    assert len(quiet) == len(busy) == 2
    assert all("no other process here was busy (0.00 cores)" in q for q in quiet)
    assert all("a larger --batch-size or input size" in q for q in quiet)
    assert all("re-run on a quieter machine" in q for q in busy)


def test_timing_progress_ends_full_when_it_stops_early() -> None:
    """Timing stops once the pieces settle or the budget is spent, well before max_rounds;
    its progress said e.g. "timing 35/400" last, and a bar stopped a tenth full. The last
    event of each timing phase now has done == total."""
    spec = ModelSpec("resnet20", input_size=(8, 8))
    events: list[tuple[str, int, int]] = []
    options = TimingOptions(budget_s=0.2, min_rounds=3, max_rounds=400)
    profile_model(
        load_model(spec), spec, options=options, threads=1,
        progress=lambda what, done, total: events.append((what, done, total)),
    )  # fmt: skip
    timing = [e for e in events if e[0].startswith("timing")]
    assert timing and timing[0][2] == 400
    last = {}
    for what, done, total in timing:
        last[what] = (done, total)
    assert all(done == total < 400 for done, total in last.values()), last
