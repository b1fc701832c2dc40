"""Pieces of one forward pass timed as the model runs them: marks between pieces, one pass.

Timed alone, each piece of a model pays its own launch and host overhead,
which the whole model overlaps (on a GPU at batch 1, the pieces of a CIFAR
ResNet add up to 20% more than the model). Here the pieces run back to back as
one forward pass, with a timing mark between consecutive pieces and no
synchronisation until the pass is done; a piece's latency is the time from
the mark before it to the mark after it. So the pieces add up to the pass by
construction, and what a piece pays is what it costs inside the whole model.

A pass is a :class:`Pass`: the work that runs it calling ``mark(i)`` at each
boundary, and the same pass without marks. The profiler's pass is the traced
model's own forward (:mod:`profiler.cut`); :func:`pass_of` calls separate works
in turn. A mark is not free (a CUDA event costs the GPU a microsecond or more
under a graph, and 10 to 40 us of host time eager on a virtualised host), so
every round also runs the pass without marks; the difference, divided by the
number of marks, is the cost of one mark, subtracted from every piece.

Three runners share the rounds and the statistics:
- ``CpuChain``: ``perf_counter_ns`` marks (the CPU path of the profiler still
  times pieces alone; this runner is what tests the logic without a GPU);
- ``EagerCudaChain``: CUDA events recorded between pieces launched from Python;
- ``GraphCudaChain``: the pass captured once as a CUDA graph with external
  events recorded inside it (``cudaEventRecordExternal``), replayed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .records import Measurement

Work = Callable[[], object]
Progress = Callable[[str, int, int], None]
MODES = ("alone", "chained", "chained_graph")


class Runner(Protocol):
    """Runs one round: the pass with marks and the pass without, in alternating order."""

    timer: str
    pieces: int

    def round(self) -> tuple[list[float], float, float]:
        """(seconds between consecutive marks, one per piece; the marked pass and the
        plain pass, each timed from outside by the same kind of clock)."""
        ...


@dataclass(frozen=True)
class ChainTiming:
    """What one chained timing found. ``pieces``: each piece's share of the pass, one
    mark's cost subtracted (seconds per pass); ``marked``/``plain``: the whole pass with
    and without marks; ``mark_cost_s``: one mark (:func:`mark_cost`)."""

    pieces: tuple[Measurement, ...]
    marked: Measurement
    plain: Measurement
    mark_cost_s: float


def _in_turn(first: Callable[[], object], second: Callable[[], object], flip: bool) -> tuple:
    """(first(), second()), run in that order or, with ``flip``, the other way round:
    alternating rounds cancel what running first or second does to a pass (caches, clocks)."""
    if flip:
        b = second()
        return first(), b
    a = first()
    return a, second()


def mark_cost(marked: Sequence[float], plain: Sequence[float], marks: int) -> float:
    """Seconds one mark adds: the median over rounds of (marked - plain) / marks.

    Paired by round, so a slow drift of the whole pass (clocks, a neighbour)
    cancels. Zero unless the median difference is positive and outside its
    95% notch (1.57 * IQR / sqrt(n)): noise is not subtracted from the pieces.
    """
    diffs = sorted(m - p for m, p in zip(marked, plain))
    if marks < 1 or not diffs:
        return 0.0
    n = len(diffs)
    med = statistics.median(diffs)
    notch = 1.57 * (diffs[(3 * n) // 4] - diffs[n // 4]) / math.sqrt(n)
    return med / marks if med > notch else 0.0


def subtract_marks(samples: Sequence[Sequence[float]], cost_s: float) -> list[tuple[float, ...]]:
    """Each piece's samples less one mark's cost (the mark that ends the piece), floored at 0."""
    return [tuple(max(0.0, s - cost_s) for s in piece) for piece in samples]


def _notch(samples: Sequence[float]) -> float:
    """Relative half-width of the 95% confidence notch of the median (as in timing)."""
    s = sorted(samples)
    n = len(s)
    med = s[n // 2]
    return 1.57 * (s[(3 * n) // 4] - s[n // 4]) / math.sqrt(n) / med if med > 0 else math.inf


def _settled(samples: list[list[float]], rel_ci: float) -> bool:
    """The pass's split known to ``rel_ci``: the pieces' notches, weighted by their medians,
    against the sum of medians (a tiny piece, a ReLU between blocks, may scatter more
    without moving the split)."""
    meds = [statistics.median(s) for s in samples]
    total = sum(meds)
    if total <= 0:
        return False
    return sum(_notch(s) * m for s, m in zip(samples, meds) if m > 0) / total <= rel_ci


def time_chain(
    runner: Runner,
    *,
    warmup: int = 3,
    min_rounds: int = 12,
    max_rounds: int = 400,
    budget_s: float = 10.0,
    rel_ci: float = 0.01,
    fingerprint: str = "",
    progress: Progress | None = None,
) -> ChainTiming:
    """Rounds of ``runner`` until the pieces settle or the budget is spent."""
    for _ in range(warmup):
        runner.round()
    pieces: list[list[float]] = [[] for _ in range(runner.pieces)]
    marked: list[float] = []
    plain: list[float] = []
    start, r = time.perf_counter(), 0
    for r in range(1, max_rounds + 1):
        intervals, m, p = runner.round()
        for s, v in zip(pieces, intervals, strict=True):
            s.append(v)
        marked.append(m)
        plain.append(p)
        if progress is not None:
            progress("timing in one pass", r, max_rounds)
        if r >= min_rounds and (time.perf_counter() - start > budget_s or _settled(pieces, rel_ci)):
            break
    if progress is not None and r < max_rounds:
        progress("timing in one pass", r, r)  # done early: the bar ends full
    cost = mark_cost(marked, plain, runner.pieces + 1)

    def m(samples: Sequence[float]) -> Measurement:
        return Measurement(tuple(samples), 1, runner.timer, fingerprint)

    return ChainTiming(tuple(m(s) for s in subtract_marks(pieces, cost)), m(marked), m(plain), cost)


@dataclass(frozen=True)
class Pass:
    """One forward pass cut into ``pieces`` pieces.

    ``build(mark)`` returns the work that runs the pass calling ``mark(i)`` at
    boundary ``i`` (0 before the first piece, ``pieces`` after the last);
    ``plain`` runs the same pass without marks.
    """

    pieces: int
    build: Callable[[Callable[[int], None]], Work]
    plain: Work


def pass_of(works: Sequence[Work]) -> Pass:
    """The pass that calls ``works`` in turn (each a piece); used for work beside the
    model (replacements) and where no graph of the model is at hand."""
    works = list(works)
    if not works:
        raise ValueError("nothing to time")

    def build(mark: Callable[[int], None]) -> Work:
        def run() -> None:
            mark(0)
            for i, w in enumerate(works, 1):
                w()
                mark(i)

        return run

    def plain() -> None:
        for w in works:
            w()

    return Pass(len(works), build, plain)


def _as_pass(p: Pass | Sequence[Work]) -> Pass:
    return p if isinstance(p, Pass) else pass_of(p)


class _Chain:
    """A pass and which of its two forms (with marks, without) runs first next round."""

    def __init__(self, p: Pass | Sequence[Work]) -> None:
        self.pass_ = _as_pass(p)
        if self.pass_.pieces < 1:
            raise ValueError("nothing to time")
        self.pieces = self.pass_.pieces
        self.flip = False  # which pass runs first this round


class CpuChain(_Chain):
    """Marks are readings of ``clock`` (integer nanoseconds; ``perf_counter_ns``).

    ``settle`` runs after each pass, outside the timing. With work queued on a GPU and
    ``settle`` a synchronise, the marks read the host's side of an eager pass: how long
    Python takes to issue each piece's kernels, which is what a small-batch model on a
    slow host is bound by (the GPU's side is an :class:`EagerCudaChain` or
    :class:`GraphCudaChain`).
    """

    timer = "perf_counter"

    def __init__(
        self,
        p: Pass | Sequence[Work],
        clock: Callable[[], int] = time.perf_counter_ns,
        settle: Work | None = None,
    ) -> None:
        super().__init__(p)
        self.clock = clock
        self.settle = settle
        self.reads = [0] * (self.pieces + 1)
        self.marked_work = self.pass_.build(self.mark)

    def mark(self, i: int) -> None:
        self.reads[i] = self.clock()

    def round(self) -> tuple[list[float], float, float]:
        self.flip = not self.flip
        marked, plain = _in_turn(self._marked, self._plain, self.flip)
        return marked[0], marked[1], plain

    def _marked(self) -> tuple[list[float], float]:
        o0 = self.clock()
        self.marked_work()
        o1 = self.clock()
        if self.settle is not None:
            self.settle()
        r = self.reads
        return [(b - a) / 1e9 for a, b in zip(r, r[1:])], (o1 - o0) / 1e9

    def _plain(self) -> float:
        p0 = self.clock()
        self.pass_.plain()
        p1 = self.clock()
        if self.settle is not None:
            self.settle()
        return (p1 - p0) / 1e9


def _event(external: bool = False) -> torch.cuda.Event:
    if not external:
        return torch.cuda.Event(enable_timing=True)
    try:
        return torch.cuda.Event(enable_timing=True, external=True)
    except TypeError:
        raise RuntimeError(
            f"torch {torch.__version__} cannot record timing events inside a CUDA graph "
            "(torch.cuda.Event(external=True) is missing); time without --cuda-graph"
        ) from None


def _events(n: int, external: bool = False) -> list[torch.cuda.Event]:
    """``n`` timing events, created now: torch creates a CUDA event at its first record,
    which inside a timed pass would cost the GPU timeline ten microseconds or more."""
    events = [_event(external) for _ in range(n)]
    if not external:
        for e in events:
            e.record()
    return events


def _seconds(a: torch.cuda.Event, b: torch.cuda.Event) -> float:
    return a.elapsed_time(b) / 1e3


class EagerCudaChain(_Chain):
    """CUDA events on the current stream between pieces launched from Python; one sync a round."""

    timer = "cuda_events"

    def __init__(self, p: Pass | Sequence[Work], device: torch.device) -> None:
        super().__init__(p)
        self.device = device
        with torch.cuda.device(device):
            self.outer = _events(4)
            self.marks = _events(self.pieces + 1)
            torch.cuda.synchronize(device)
        self.marked_work = self.pass_.build(self.mark)

    def mark(self, i: int) -> None:
        self.marks[i].record()

    def round(self) -> tuple[list[float], float, float]:
        self.flip = not self.flip
        outer = self.outer

        def marked() -> None:
            outer[0].record()
            self.marked_work()
            outer[1].record()

        def plain() -> None:
            outer[2].record()
            self.pass_.plain()
            outer[3].record()

        with torch.cuda.device(self.device):
            _in_turn(marked, plain, self.flip)
            torch.cuda.synchronize(self.device)
        intervals = [_seconds(a, b) for a, b in zip(self.marks, self.marks[1:])]
        return intervals, _seconds(outer[0], outer[1]), _seconds(outer[2], outer[3])


def _capture(run: Work, device: torch.device) -> torch.cuda.CUDAGraph:
    """``run`` captured as a CUDA graph on ``device`` (warmed up on a side stream first)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph


class GraphCudaChain(_Chain):
    """The pass captured as one CUDA graph with external timing events between pieces
    (recorded as event nodes of the graph), and the same pass captured without them."""

    timer = "cuda_events"

    def __init__(self, p: Pass | Sequence[Work], device: torch.device) -> None:
        super().__init__(p)
        self.device = device
        with torch.cuda.device(device):
            self.marks = _events(self.pieces + 1, external=True)
            self.outer = _events(4)
            self.marked = _capture(self.pass_.build(self.mark), device)
            self.plain = _capture(self.pass_.plain, device)

    def mark(self, i: int) -> None:
        self.marks[i].record()

    def round(self) -> tuple[list[float], float, float]:
        self.flip = not self.flip
        outer = self.outer

        def replay(graph: torch.cuda.CUDAGraph, start: int) -> None:
            outer[start].record()
            graph.replay()
            outer[start + 1].record()

        with torch.cuda.device(self.device):
            _in_turn(lambda: replay(self.marked, 0), lambda: replay(self.plain, 2), self.flip)
            torch.cuda.synchronize(self.device)
        intervals = [_seconds(a, b) for a, b in zip(self.marks, self.marks[1:])]
        return intervals, _seconds(outer[0], outer[1]), _seconds(outer[2], outer[3])


def runner(p: Pass | Sequence[Work], device: torch.device, cuda_graph: bool) -> Runner:
    """The runner for ``device``: CUDA events (in a captured graph when ``cuda_graph``), else CPU."""
    if device.type != "cuda":
        return CpuChain(p)
    return GraphCudaChain(p, device) if cuda_graph else EagerCudaChain(p, device)


def launch_overhead(alone: Sequence[Measurement], chained: Sequence[Measurement]) -> float:
    """Seconds the pieces timed one launch at a time pay beyond the same pieces in one pass:
    sum of medians alone minus sum of medians chained."""
    if len(alone) != len(chained):
        raise ValueError(f"{len(alone)} pieces timed alone but {len(chained)} chained")
    return sum(m.median_s for m in alone) - sum(m.median_s for m in chained)
