"""Inference latencies timed on the GPU, read once the GPU has run them: the host never waits.

A CUDA model returns from ``model(x)`` as soon as its kernels are queued, so a host clock
around the call times the launches, not the inference. A span is a pair of CUDA events
recorded on the current stream before and after the work; its latency (seconds) is read
with ``elapsed_time`` only once the end event has completed (``query``), when the monitor
next looks, so nothing synchronises. Spans complete in the order they were recorded on
one stream; a span not yet complete holds back those recorded after it.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class GpuSpans:
    """Open spans, oldest first, at most ``capacity`` of them (more: the GPU is that far
    behind the host, and the newest are dropped and counted in ``overflow``)."""

    def __init__(self, capacity: int = 4096) -> None:
        import torch  # only a process that asks for GPU timing pays for the import

        if not torch.cuda.is_available():
            raise RuntimeError(
                "GPU timing (track(cuda=True)) needs a CUDA device, and torch sees none; "
                "time a CPU model with track() (the host's clock)"
            )
        self._event = torch.cuda.Event
        self._pending: deque[tuple[Any, Any, str | None]] = deque()
        self.capacity = capacity
        self.overflow = 0

    def start(self) -> Any:
        """Record the start of a span on the current CUDA stream."""
        event = self._event(enable_timing=True)
        event.record()
        return event

    def stop(self, start: Any, deployment: str | None) -> None:
        """Record the span's end after the work queued since ``start``."""
        end = self._event(enable_timing=True)
        end.record()
        if len(self._pending) >= self.capacity:
            self.overflow += 1
            return
        self._pending.append((start, end, deployment))

    def finished(self, wait: bool = False) -> list[tuple[float, str | None]]:
        """(seconds, deployment) of each span the GPU has completed, oldest first, removed
        from the pending ones; ``wait``: wait for every pending span (at close)."""
        done = []
        while self._pending:
            start, end, deployment = self._pending[0]
            if wait:
                end.synchronize()
            elif not end.query():
                break
            self._pending.popleft()
            done.append((start.elapsed_time(end) / 1e3, deployment))
        return done

    def __len__(self) -> int:
        return len(self._pending)
