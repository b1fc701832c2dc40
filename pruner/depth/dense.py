"""Zero-contribution removal of dense layers.

A removed dense layer's output is dropped from every concatenation that reads
it. The concatenations get narrower, so what reads them loses the same input
channels, physically: norms keep only the surviving channels' parameters and
statistics, and the convolution or linear layer that mixes them keeps only
the surviving input channels. Nothing is added to the graph, so the
replacement costs 0 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx
from torch import nn

from profiler.channels import ChannelReaders, channel_readers, norm_tensors
from profiler.graph import attr_value, shape_of
from profiler.ops import cat_operands


def drop_contributions(gm: fx.GraphModule, outputs: Sequence[fx.Node]) -> None:
    """Drop ``outputs`` (dense layers' output nodes) from the concatenations of ``gm``, in place.

    ``gm`` must carry shapes (``tensor_meta``, as :func:`profiler.discover` leaves
    them). The layers' own nodes are left for dead-code elimination. Raises
    :class:`profiler.channels.ChannelError` when the channels cannot be dropped.
    """
    if not outputs:
        return
    dropped = set(outputs)
    readers = channel_readers(gm, list({u: None for y in outputs for u in y.users}))
    keep = _keep_masks(gm, readers, dropped)
    for n in readers.per_channel:
        _slice_norm(gm, n, keep[n.args[0]])
    for n in readers.mixing:
        _slice_inputs(gm, n, keep[n.args[0]])
    for c in readers.concats:
        c.args = ([p for p in cat_operands(c) if p not in dropped], *c.args[1:])


def _keep_masks(
    gm: fx.GraphModule, readers: ChannelReaders, dropped: set[fx.Node]
) -> dict[fx.Node, torch.Tensor]:
    """For each node the channels flow through, which of its channels (bool, one per
    channel of its current output) survive."""
    keep: dict[fx.Node, torch.Tensor] = {}

    def mask(n: fx.Node) -> torch.Tensor:
        return keep.get(n, torch.ones(shape_of(n)[1], dtype=torch.bool))

    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    concats = set(readers.concats)
    for n in sorted([*readers.concats, *readers.per_channel, *readers.passing], key=order.get):
        if n in concats:
            parts = cat_operands(n)
            keep[n] = torch.cat(
                [
                    torch.zeros(shape_of(p)[1], dtype=torch.bool) if p in dropped else mask(p)
                    for p in parts
                ]
            )
        else:
            keep[n] = mask(n.args[0])
    return keep


def _set(gm: fx.GraphModule, target: str, value: object) -> None:
    owner, _, name = target.rpartition(".")
    setattr(gm.get_submodule(owner) if owner else gm, name, value)


def _sliced(t: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    return t.detach().index_select(dim, keep.nonzero().flatten().to(t.device)).clone()


def _slice_attr(gm: fx.GraphModule, target: str, keep: torch.Tensor, dim: int) -> None:
    value = attr_value(gm, target)
    assert isinstance(value, torch.Tensor)
    sliced = _sliced(value, keep, dim)
    _set(gm, target, nn.Parameter(sliced) if isinstance(value, nn.Parameter) else sliced)


def _slice_norm(gm: fx.GraphModule, n: fx.Node, keep: torch.Tensor) -> None:
    """A per-channel norm keeps the parameters and statistics of the surviving channels."""
    if n.op == "call_function":  # F.batch_norm on graph attributes
        for a in norm_tensors(n):
            if isinstance(a, fx.Node):
                _slice_attr(gm, str(a.target), keep, 0)
        return
    old = gm.get_submodule(str(n.target))
    assert isinstance(old, nn.BatchNorm2d)
    new = nn.BatchNorm2d(
        int(keep.sum()), old.eps, old.momentum, old.affine, old.track_running_stats
    )
    state = {k: (_sliced(v, keep, 0) if v.dim() == 1 else v) for k, v in old.state_dict().items()}
    new.load_state_dict(state)
    device = next(iter(state.values()), keep).device
    _set(gm, str(n.target), new.to(device).train(old.training))


def _slice_inputs(gm: fx.GraphModule, n: fx.Node, keep: torch.Tensor) -> None:
    """A convolution or linear layer keeps the input channels that survive."""
    if n.op == "call_function":  # F.linear, aten.conv2d: the weight is a graph attribute
        _slice_attr(gm, str(n.args[1].target), keep, 1)
        return
    old = gm.get_submodule(str(n.target))
    if isinstance(old, nn.Conv2d):
        new: nn.Module = nn.Conv2d(
            int(keep.sum()),
            old.out_channels,
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            old.groups,
            old.bias is not None,
            old.padding_mode,
        )
    else:
        assert isinstance(old, nn.Linear)
        new = nn.Linear(int(keep.sum()), old.out_features, old.bias is not None)
    new = new.to(old.weight.device, old.weight.dtype).train(old.training)
    with torch.no_grad():
        new.weight.copy_(_sliced(old.weight, keep, 1))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _set(gm, str(n.target), new)
