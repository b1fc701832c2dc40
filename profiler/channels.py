"""Where a concatenated feature map's channels go, until an operation mixes them.

Dropping a dense layer's contribution removes its channels from every
concatenation that reads it. What reads those concatenations must then lose
the same input channels: norms lose their per-channel parameters, the
convolution or linear layer that mixes channels loses input channels, and
elementwise operations and poolings pass the narrower tensor on. This module
finds that set of nodes, or says why the channels cannot be dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from .graph import shape_of
from .ops import (
    CONV_FUNCTIONS,
    LINEAR_FUNCTIONS,
    NORM_FUNCTIONS,
    cat_operands,
    conv_module,
    is_activation,
    is_pass,
    is_pool,
    module_of,
    side_nodes,
)

FLATTEN_METHODS = ("flatten",)
FLATTEN_FUNCTIONS = {torch.flatten, torch.ops.aten.flatten.using_ints}
# aten.convolution's groups argument sits elsewhere (after transposed and output padding).
CONVOLUTION = torch.ops.aten.convolution.default


class ChannelError(ValueError):
    """The channels reach an operation that cannot lose input channels; the message says which."""


@dataclass(frozen=True)
class ChannelReaders:
    """The nodes a set of channels flows through, each in graph order.

    ``concats`` take the channels as operands or pass them on; ``per_channel`` are
    norms whose parameters are indexed by channel; ``passing`` compute per channel
    without parameters (activations, poolings, flatten of a 1x1 map); ``mixing``
    are the convolutions (groups = 1) and linear layers that read them.
    """

    concats: tuple[fx.Node, ...]
    per_channel: tuple[fx.Node, ...]
    passing: tuple[fx.Node, ...]
    mixing: tuple[fx.Node, ...]


def _called_once(gm: fx.GraphModule, n: fx.Node) -> bool:
    return sum(m.op == "call_module" and m.target == n.target for m in gm.graph.nodes) == 1


def _attr_arg(n: fx.Node, i: int) -> bool:
    return len(n.args) > i and isinstance(n.args[i], fx.Node) and n.args[i].op == "get_attr"


def norm_tensors(n: fx.Node) -> list[object]:
    """The per-channel arguments of a functional batch norm: running mean and variance,
    weight and bias, passed by position or by name (None where absent)."""
    names = ("running_mean", "running_var", "weight", "bias")
    return [n.args[i] if len(n.args) > i else n.kwargs.get(k) for i, k in enumerate(names, 1)]


def _is_functional_conv(n: fx.Node) -> bool:
    """A convolution (groups = 1) whose weight is a graph attribute: torch.export's aten.conv2d."""
    if n.op != "call_function" or n.target not in CONV_FUNCTIONS or not _attr_arg(n, 1):
        return False
    groups = n.args[6] if len(n.args) > 6 else n.kwargs.get("groups", 1)
    return groups == 1 and n.target is not CONVOLUTION


def _is_functional_norm(n: fx.Node) -> bool:
    """``F.batch_norm`` whose per-channel tensors are all graph attributes (or absent)."""
    if n.op != "call_function" or n.target not in NORM_FUNCTIONS:
        return False
    tensors = [a for a in norm_tensors(n) if a is not None]
    return all(isinstance(a, fx.Node) and a.op == "get_attr" for a in tensors)


def _kind(gm: fx.GraphModule, t: fx.Node, u: fx.Node) -> str:
    """How ``u`` treats the channels of ``t`` that it reads: concat, per_channel, passing,
    mixing; raises ChannelError when it cannot lose them."""
    if cat_operands(u):
        return "concat"
    reads_data = bool(u.args) and u.args[0] is t
    m = module_of(gm, u)
    if reads_data and isinstance(m, nn.BatchNorm2d) and _called_once(gm, u):
        return "per_channel"
    if reads_data and _is_functional_norm(u):
        return "per_channel"
    conv = conv_module(gm, u)
    if reads_data and isinstance(conv, nn.Conv2d) and conv.groups == 1 and _called_once(gm, u):
        return "mixing"
    if reads_data and _is_functional_conv(u):
        return "mixing"
    linear = isinstance(m, nn.Linear) and _called_once(gm, u)
    linear = linear or (
        u.op == "call_function" and u.target in LINEAR_FUNCTIONS and _attr_arg(u, 1)
    )
    if reads_data and linear and len(shape_of(t)) == 2:
        return "mixing"
    same_channels = len(shape_of(u)) >= 2 and shape_of(u)[1] == shape_of(t)[1]
    per_element = is_activation(gm, u) or is_pass(gm, u) or is_pool(gm, u)
    flatten = (
        (u.op == "call_function" and u.target in FLATTEN_FUNCTIONS)
        or (u.op == "call_method" and u.target in FLATTEN_METHODS)
        or isinstance(m, nn.Flatten)
    )
    if reads_data and same_channels and (per_element or flatten):
        return "passing"
    raise ChannelError(f"its channels reach {u.name!r}, which cannot drop input channels")


def channel_readers(gm: fx.GraphModule, concats: list[fx.Node]) -> ChannelReaders:
    """Follow the channels of ``concats`` (concatenation nodes) to what mixes them."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    side = side_nodes(list(gm.graph.nodes))
    found: dict[str, set[fx.Node]] = {k: set() for k in ("concat", "per_channel", "passing")}
    found["mixing"] = set()
    found["concat"].update(concats)
    stack = list(concats)
    while stack:
        t = stack.pop()
        for u in t.users:
            if u in side:
                continue
            if u.op == "output":
                raise ChannelError("its channels reach the model's output")
            kind = _kind(gm, t, u)
            if u not in found[kind]:
                found[kind].add(u)
                if kind != "mixing":
                    stack.append(u)

    def ordered(kind: str) -> tuple[fx.Node, ...]:
        return tuple(sorted(found[kind], key=order.__getitem__))

    return ChannelReaders(
        ordered("concat"), ordered("per_channel"), ordered("passing"), ordered("mixing")
    )
