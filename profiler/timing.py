"""Timers: CUDA events on GPU, ``perf_counter_ns`` on CPU; warm-up, adaptive repeats, robust stats.

Several pieces of work are timed together in rounds: every round takes one
sample of each piece, in network order. Interleaving keeps slow drifts (clock
changes, a busy neighbour) from biasing one piece against another, which is
what the additivity check compares; and with pieces in network order, one round
runs like one forward pass, with the same cache state as the whole model. Each
sample times one call, except for pieces shorter than ``min_sample_s``, which
are timed over ``number`` back-to-back calls so timer resolution and call
overhead stay small against them. Rounds stop once every piece's median is
known to within ``rel_ci`` (95% notch: 1.57 * IQR / sqrt(n)) or the time
budget is spent.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .records import Measurement

if TYPE_CHECKING:
    from .chain import Pass

Work = Callable[[], object]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TimingOptions:
    """How to time. All durations in seconds.

    ``l2_flush`` (CUDA) overwrites the L2 cache before each sample and times one
    call per sample: cold-cache latency. ``cuda_graph`` (CUDA) captures each
    piece once and replays the graph, removing CPU launch overhead.
    ``pieces`` says how the pieces of a forward pass are timed: ``alone`` (each
    in its own launches, interleaved in rounds), ``chained`` (one pass with
    marks between pieces; see :mod:`profiler.chain`), or ``auto``: chained on
    CUDA (in one captured graph with ``cuda_graph``), alone on CPU and for
    cold-cache figures (``l2_flush``). ``check`` also times the traced model
    without every second removable block, in the same rounds as the whole model,
    against the profile's own prediction for it (``BlockProfile.check``).
    """

    warmup: int = 3
    min_sample_s: float = 2e-5
    min_rounds: int = 12
    max_rounds: int = 400
    budget_s: float = 10.0
    rel_ci: float = 0.01
    l2_flush: bool = False
    cuda_graph: bool = False
    pieces: str = "auto"
    check: bool = True

    def __post_init__(self) -> None:
        if self.pieces not in ("auto", "alone", "chained"):
            raise ValueError(f"pieces must be auto, alone or chained, got {self.pieces!r}")
        if self.min_rounds < 3 or self.max_rounds < self.min_rounds:
            raise ValueError(
                f"need 3 <= min_rounds <= max_rounds, got {self.min_rounds} and {self.max_rounds}"
            )
        for name in ("budget_s", "min_sample_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(
                    f"{name} must be finite and > 0 seconds, got {getattr(self, name)}"
                )


def _notch(samples: list[float]) -> float:
    """Relative half-width of the 95% confidence notch of the median."""
    s = sorted(samples)
    n = len(s)
    q1, q3 = s[n // 4], s[(3 * n) // 4]
    med = s[n // 2]
    return 1.57 * (q3 - q1) / math.sqrt(n) / med if med > 0 else math.inf


class _CpuClock:
    timer = "perf_counter"

    def sample(self, work: Work, number: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(number):
            work()
        return (time.perf_counter_ns() - t0) / 1e9 / number

    def round(self, works: Sequence[Work], numbers: Sequence[int]) -> list[float]:
        return [self.sample(w, n) for w, n in zip(works, numbers)]


class _CudaClock:
    """CUDA events on the current stream of ``device``; one synchronisation per round."""

    timer = "cuda_events"

    def __init__(self, device: torch.device, l2_flush: bool) -> None:
        self.device = device
        self.flush = None
        if l2_flush:
            l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
            self.flush = torch.empty(2 * max(l2, 1 << 20), dtype=torch.uint8, device=device)

    def sample(self, work: Work, number: int) -> float:
        return self.round([work], [number])[0]

    def round(self, works: Sequence[Work], numbers: Sequence[int]) -> list[float]:
        with torch.cuda.device(self.device):
            return self._round(works, numbers)

    def _round(self, works: Sequence[Work], numbers: Sequence[int]) -> list[float]:
        events = []
        for w, n in zip(works, numbers):
            if self.flush is not None:
                self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                w()
            end.record()
            events.append((start, end, n))
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) / 1e3 / n for s, e, n in events]


def _as_cuda_graph(work: Work, device: torch.device) -> Work:
    """Capture ``work`` once into a CUDA graph and return its replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as graph capture requires
            work()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        work()
    return graph.replay


def measure(
    works: Sequence[Work],
    device: torch.device | str = "cpu",
    options: TimingOptions | None = None,
    fingerprint: str = "",
    progress: Progress | None = None,
) -> list[Measurement]:
    """Time each callable (seconds per call), interleaved in rounds; one Measurement each."""
    options = options or TimingOptions()
    device = torch.device(device)
    if not works:
        return []
    cuda = device.type == "cuda"
    clock = _CudaClock(device, options.l2_flush) if cuda else _CpuClock()
    # Every CUDA call of the measurement on ``device``, whatever the current device is.
    on_device = torch.cuda.device(device) if cuda else contextlib.nullcontext()
    with torch.inference_mode(), on_device:
        if cuda and options.cuda_graph:
            works = [_as_cuda_graph(w, device) for w in works]
        numbers = []
        for w in works:
            for _ in range(options.warmup):
                w()
            if cuda:
                torch.cuda.synchronize(device)
            single = clock.sample(w, 1)
            cold = cuda and options.l2_flush
            numbers.append(
                1
                if cold
                else max(1, min(10_000, math.ceil(options.min_sample_s / max(single, 1e-9))))
            )
        samples: list[list[float]] = [[] for _ in works]
        start = time.perf_counter()
        for r in range(1, options.max_rounds + 1):
            for s, value in zip(samples, clock.round(works, numbers)):
                s.append(value)
            if progress is not None:
                progress("timing", r, options.max_rounds)
            if r >= options.min_rounds and (
                time.perf_counter() - start > options.budget_s
                or max(_notch(s) for s in samples) <= options.rel_ci
            ):
                break
        if progress is not None and r < options.max_rounds:
            progress("timing", r, r)  # done early (settled, or the budget spent): a full bar
    return [
        Measurement(tuple(s), number=n, timer=clock.timer, fingerprint=fingerprint)
        for s, n in zip(samples, numbers)
    ]


def piece_mode(device: torch.device | str, options: TimingOptions) -> str:
    """How pieces of a forward pass are timed on ``device``: one of ``chain.MODES``."""
    on_cuda = torch.device(device).type == "cuda"
    # Cold-cache figures (l2_flush) time each piece alone after a flush; a pass is warm.
    auto_chained = on_cuda and not options.l2_flush
    chained = options.pieces == "chained" or (options.pieces == "auto" and auto_chained)
    if not chained:
        return "alone"
    return "chained_graph" if on_cuda and options.cuda_graph else "chained"


@dataclass(frozen=True)
class PieceTimings:
    """Measurements of one profile's work, in the order it was given.

    ``serial``: the pieces of the forward pass; ``side``: work timed like them
    but outside the pass (replacements); ``whole``: work timed alone (the whole
    model). ``launch_overhead_s``: what the serial pieces timed one launch at a
    time pay beyond the same pieces in one pass (None when timed alone);
    ``mark_cost_s``: the cost of one timing mark, already subtracted; ``plain``:
    the serial pieces' pass without marks, timed in the same rounds, when chained
    (given a ``serial_pass`` of the model, this is the model's end to end).
    """

    serial: list[Measurement]
    side: list[Measurement]
    whole: list[Measurement]
    mode: str
    launch_overhead_s: float | None = None
    mark_cost_s: float | None = None
    plain: Measurement | None = None


def measure_pieces(
    serial: Sequence[Work],
    side: Sequence[Work],
    whole: Sequence[Work],
    device: torch.device | str = "cpu",
    options: TimingOptions | None = None,
    fingerprint: str = "",
    progress: Progress | None = None,
    serial_pass: Pass | None = None,
) -> PieceTimings:
    """Time the pieces of a forward pass (``serial``, in network order, each feeding the
    next), work beside it (``side``) and whole models (``whole``), per ``options.pieces``.

    Alone: one interleaved :func:`measure` of everything. Chained: the whole
    models and the serial pieces alone (for the launch overhead) in one
    :func:`measure`, then the serial pieces in one pass and the side work in
    another (:mod:`profiler.chain`); the profile keeps the chained figures.
    ``serial_pass``, when given, is the pass the serial pieces are chained in (the
    model's own forward with marks, :mod:`profiler.cut`); else they are called in turn.
    """
    from .chain import launch_overhead, pass_of, runner, time_chain

    options = options or TimingOptions()
    device = torch.device(device)
    mode = piece_mode(device, options)
    if mode == "alone":
        got = measure([*serial, *side, *whole], device, options, fingerprint, progress)
        a, b = len(serial), len(serial) + len(side)
        return PieceTimings(got[:a], got[a:b], got[b:], mode)
    alone = measure([*serial, *whole], device, options, fingerprint, progress)
    graph = mode == "chained_graph"
    chained: dict[str, list[Measurement]] = {"serial": [], "side": []}
    cost = plain = None
    with torch.inference_mode():
        passes = {"serial": serial_pass or (pass_of(serial) if serial else None)}
        passes["side"] = pass_of(side) if side else None
        for name, one_pass in passes.items():
            if one_pass is None:
                continue
            got = time_chain(
                runner(one_pass, device, graph),
                warmup=options.warmup,
                min_rounds=options.min_rounds,
                max_rounds=options.max_rounds,
                budget_s=options.budget_s,
                rel_ci=options.rel_ci,
                fingerprint=fingerprint,
                progress=progress,
            )
            chained[name] = list(got.pieces)
            if name == "serial":
                cost, plain = got.mark_cost_s, got.plain
    overhead = launch_overhead(alone[: len(serial)], chained["serial"]) if serial else None
    return PieceTimings(
        chained["serial"], chained["side"], alone[len(serial) :], mode, overhead, cost, plain
    )
