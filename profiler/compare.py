"""Two models timed against each other, and the thread count their timings run under."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.fx as fx
from torch import nn

from .device import device_info
from .lookups import direct_lookups
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
    cuda_graph: bool = False,
) -> tuple[float, float]:
    """Median end-to-end latency (seconds per batch of ``batch_size``) of two models, timed
    interleaved on the same seeded input, so a change in machine load shifts both alike.
    ``cuda_graph``: each model captured as a CUDA graph and replayed (on CUDA)."""
    x = torch.randn(spec.input_shape(batch_size), generator=torch.Generator().manual_seed(0))
    dev = torch.device(device)
    x = x.to(dev)
    a, b = (_copy(m).to(dev).eval() for m in (a, b))
    opts = TimingOptions(budget_s=timing_budget_s, cuda_graph=cuda_graph)
    with torch_threads(threads):
        ma, mb = measure([lambda: a(x), lambda: b(x)], dev, opts, device_info(dev).fingerprint)
    return ma.median_s, mb.median_s


def _copy(model: nn.Module) -> nn.Module:
    """A copy to time: a traced graph's copy gets its direct lookups back (deepcopy drops them)."""
    twin = copy.deepcopy(model)
    return direct_lookups(twin) if isinstance(twin, fx.GraphModule) else twin
