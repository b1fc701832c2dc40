"""Three small CUDA timers for tuning launches: eager back-to-back calls, CUDA-graph
replays, and the host's side of a launch.

``eager_seconds`` includes the host's launch cost when the host is slower than
the GPU (back-to-back calls keep the GPU waiting for the next launch), which is
what an eager model pays. ``graph_seconds`` replays the calls from one captured
graph, so only GPU time counts: what a model replayed from a graph pays.
``host_seconds`` is the host's time to issue a call, whatever the GPU does:
what a call costs inside an eager model that is bound by its host.
Each returns the median over ``rounds`` of seconds per call. CUDA only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _events_seconds(run: Callable[[], object], calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(samples)


def eager_seconds(fn: Callable[[], object], calls: int = 50, rounds: int = 5) -> float:
    """Seconds per call of ``fn`` launched ``calls`` times back to back from Python."""
    for _ in range(3):
        fn()

    def run() -> None:
        for _ in range(calls):
            fn()

    return _events_seconds(run, calls, rounds)


def graph_seconds(fn: Callable[[], object], calls: int = 20, rounds: int = 5) -> float:
    """Seconds per call of ``fn`` captured ``calls`` times in one CUDA graph and replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    return _events_seconds(graph.replay, calls, rounds)


def host_seconds(fn: Callable[[], object], calls: int = 50, rounds: int = 5) -> float:
    """Host seconds per call of ``fn`` issued ``calls`` times back to back; the GPU is
    synchronised after each round, outside the timing (``calls`` stays far below the
    launch queue's depth, so the host never waits for the GPU inside it)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
        torch.cuda.synchronize()
    return statistics.median(samples)
