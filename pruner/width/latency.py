"""Latency as a function of channel widths: each conv (with its BatchNorm) timed at a few widths.

For latency-aware filter pruning (HFP with a latency budget) every conv of a
:class:`~pruner.width.ChannelSpace` is timed alone, as ``Conv2d -> BatchNorm2d``
on an input of its real spatial size, at a small grid of input and output
widths (multiples of the rounding step: the narrowest, 1/4, 1/2, 3/4 and all
of the channels). Convs of the same shape share measurements, and the latency
table keeps them per device. Between grid points the latency is interpolated
bilinearly, which is differentiable in the widths, so it can stand in for the
multiplication count in HFP's budget term. The model's latency at widths ``n``
is predicted as its measured latency at full width plus the change of the
interpolated conv latencies.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from profiler import LatencyTable, TimingOptions, device_info, measure

from .space import ChannelSpace, CostLayer, Widths

TABLE_KIND = "conv_bn_width"


def _grid(size: int, fixed: bool, round_to: int) -> tuple[int, ...]:
    if fixed:
        return (size,)
    points = {size, min(size, round_to)}
    for f in (0.25, 0.5, 0.75):
        k = round(size * f / round_to) * round_to
        if round_to <= k < size:
            points.add(k)
    return tuple(sorted(points))


def _interp(grid: Sequence[int], value: Any) -> tuple[int, int, Any]:
    """Segment (i, j) of ``grid`` around ``value`` and the weight of j; linear beyond the ends."""
    if len(grid) == 1:
        return 0, 0, 0.0
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    j = min(max(bisect.bisect_left(grid, v), 1), len(grid) - 1)
    i = j - 1
    return i, j, (value - grid[i]) / (grid[j] - grid[i])


@dataclass(frozen=True)
class LayerLatency:
    """One conv's latency (seconds) on a grid of (input width, output width)."""

    layer: CostLayer
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    seconds: tuple[tuple[float, ...], ...]  # [in index][out index]

    def at(self, n: Widths) -> Any:
        cin, cout = self.layer.widths(n)
        if self.layer.depthwise:
            cin = cout
        i0, i1, a = _interp(self.in_grid, cin)
        j0, j1, b = _interp(self.out_grid, cout)
        s = self.seconds
        top = s[i0][j0] * (1 - b) + s[i0][j1] * b
        bottom = s[i1][j0] * (1 - b) + s[i1][j1] * b
        return top * (1 - a) + bottom * a


@dataclass(frozen=True)
class WidthLatency:
    """Predicted model latency (seconds per batch) as a function of group widths."""

    layers: tuple[LayerLatency, ...]
    base_s: float
    full: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_full_sum", float(self._sum(list(self.full))))

    def _sum(self, n: Widths) -> Any:
        return sum((layer.at(n) for layer in self.layers), 0.0)

    def __call__(self, n: Widths) -> Any:
        return self.base_s + self._sum(n) - self._full_sum  # type: ignore[attr-defined]


def _depthwise(conv: nn.Conv2d) -> bool:
    """One filter per channel: its width follows its input's, and so does its group count."""
    return conv.groups > 1 and conv.groups == conv.out_channels


def _piece(conv: nn.Conv2d, cin: int, cout: int) -> nn.Module:
    groups = cout if _depthwise(conv) else conv.groups
    c = nn.Conv2d(
        cin,
        cout,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups,
        conv.bias is not None,
    )
    return nn.Sequential(c, nn.BatchNorm2d(cout)).eval()


def measure_width_latency(
    space: ChannelSpace,
    base_s: float,
    batch_size: int = 1,
    round_to: int = 8,
    device: str | torch.device = "cpu",
    options: TimingOptions | None = None,
    table: LatencyTable | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> WidthLatency:
    """Time every prunable conv of ``space.model`` at a grid of widths; ``base_s`` is the model's
    measured latency (seconds per batch of ``batch_size``) at full width."""
    dev = torch.device(device)
    fp = device_info(dev).fingerprint
    todo: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    cells: list[tuple[CostLayer, tuple[int, ...], tuple[int, ...], list[list[str]]]] = []
    known: dict[str, float] = {}
    for layer in space.layers:
        if layer.kind != "conv" or not (layer.in_parts or layer.out_parts):
            continue
        conv = space.model.get_submodule(layer.name)
        h, w = space.input_hw[layer.name]
        out_grid = _grid(layer.out_channels, not layer.out_parts, round_to)
        in_grid = (
            out_grid if layer.depthwise else _grid(layer.in_channels, not layer.in_parts, round_to)
        )
        keys = []
        for ci in in_grid:
            row = []
            for co in out_grid:
                cin = co if layer.depthwise else ci
                sig = _signature(conv, cin, co, batch_size, h, w, str(dev))
                row.append(sig)
                if sig in known or sig in todo:
                    continue
                if table is not None and (m := table.get(fp, sig)) is not None:
                    known[sig] = m.median_s
                    continue
                x = torch.randn(batch_size, cin, h, w, device=dev)
                todo[sig] = (_piece(conv, cin, co).to(dev), x)
            keys.append(row)
        cells.append((layer, in_grid, out_grid, keys))
    if todo:
        sigs = list(todo)
        with torch.inference_mode():
            works = [_call(*todo[s]) for s in sigs]
            results = measure(works, dev, options, fp, progress)
        for s, m in zip(sigs, results):
            known[s] = m.median_s
        if table is not None:
            table.put_many(fp, [(s, m, TABLE_KIND) for s, m in zip(sigs, results)])
    layers = tuple(
        LayerLatency(layer, ig, og, tuple(tuple(known[s] for s in row) for row in keys))
        for layer, ig, og, keys in cells
    )
    return WidthLatency(layers, float(base_s), tuple(float(g.size) for g in space.groups))


def _call(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    return lambda: module(x)


def _signature(conv: nn.Conv2d, cin: int, cout: int, batch: int, h: int, w: int, dev: str) -> str:
    parts = (
        TABLE_KIND,
        cin,
        cout,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        _depthwise(conv),
        conv.bias is not None,
        batch,
        h,
        w,
        dev,
    )
    return TABLE_KIND + ":" + hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def width_floor(space: ChannelSpace, predict: WidthLatency, round_to: int) -> float:
    """Predicted latency ratio with every group at its narrowest allowed width."""
    narrow = [float(space.allowed(gi, round_to)[0]) for gi in range(len(space.groups))]
    return float(predict(narrow)) / predict.base_s


def width_yield(space: ChannelSpace, predict: WidthLatency, round_to: int) -> float:
    """Latency fraction saved per fraction of MACs removed, every group thinned to half."""
    half = []
    for gi, g in enumerate(space.groups):
        allowed = space.allowed(gi, round_to)
        half.append(float(min(allowed, key=lambda k: abs(k - g.size / 2))))
    macs_cut = 1.0 - float(space.macs(half)) / space.base_macs
    if macs_cut <= 0:
        return 0.0
    return (1.0 - float(predict(half)) / predict.base_s) / macs_cut
