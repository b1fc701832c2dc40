"""Two models timed against each other, and the thread count their timings run under."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from .device import device_info
from .models import ModelSpec
from .timing import TimingOptions, measure


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
    a: nn.Module,
    b: nn.Module,
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    timing_budget_s: float = 10.0,
    threads: int | None = None,
) -> tuple[float, float]:
    """Median end-to-end latency (seconds per batch of ``batch_size``) of two models, timed
    interleaved on the same seeded input, so a change in machine load shifts both alike."""
    x = torch.randn(spec.input_shape(batch_size), generator=torch.Generator().manual_seed(0))
    dev = torch.device(device)
    x = x.to(dev)
    a, b = copy.deepcopy(a).to(dev).eval(), copy.deepcopy(b).to(dev).eval()
    opts = TimingOptions(budget_s=timing_budget_s)
    with torch_threads(threads):
        ma, mb = measure([lambda: a(x), lambda: b(x)], dev, opts, device_info(dev).fingerprint)
    return ma.median_s, mb.median_s
