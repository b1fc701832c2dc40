"""Swap every Conv2d -> BatchNorm2d (-> ReLU/ReLU6) chain of a model for one FusedConv2d.

Chains are found on the torch.fx graph, so only real data flow counts: a
chain is fused only where each edge has a single user. A Conv-BN whose BN
output feeds several nodes is still folded, without the activation.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

from .conv_bn_relu import FusedConv2d

# call_function / call_method targets that are a plain ReLU or ReLU6 of their first argument.
_RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6"}
_RELU_METHODS = {"relu": "relu", "relu_": "relu"}


class LeafTracer(fx.Tracer):
    """The default tracer, plus: modules marked ``prunerd_leaf`` stay one node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return getattr(m, "prunerd_leaf", False) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` with :class:`LeafTracer`."""
    graph = LeafTracer().trace(model)
    return fx.GraphModule(model, graph, model.__class__.__name__)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def _activation(gm: fx.GraphModule, node: fx.Node, src: fx.Node) -> str | None:
    """The activation ``node`` applies to ``src`` ("relu"/"relu6"), or None if it is anything else."""
    if not node.args or node.args[0] is not src:
        return None
    extra = list(node.args[1:]) + [v for k, v in node.kwargs.items() if k != "inplace"]
    if node.op == "call_module":
        m = _module(gm, node)
        if type(m) is nn.ReLU:
            return "relu"
        if type(m) is nn.ReLU6:
            return "relu6"
        return None
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        # F.relu(x, inplace) may carry inplace positionally; anything else is not a plain activation.
        ok = all(isinstance(v, bool) for v in extra)
        return _RELU_FUNCTIONS[node.target] if ok else None
    if node.op == "call_method" and node.target in _RELU_METHODS and not extra:
        return _RELU_METHODS[str(node.target)]
    return None


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def fuse(model: nn.Module, backend: str = "auto") -> fx.GraphModule:
    """A fused copy of ``model`` in eval mode; ``model`` itself is left untouched.

    Each fused chain becomes one ``call_module`` node whose module (a
    :class:`FusedConv2d`) sits at the conv's qualified name; the BN modules
    that no longer run are removed. Outputs equal the original's within float
    rounding (BN uses its running statistics, as in eval mode).
    """
    model = copy.deepcopy(model).eval()
    gm = trace(model)
    for node in list(gm.graph.nodes):
        conv = _module(gm, node)
        if type(conv) is not nn.Conv2d or len(node.users) != 1:
            continue
        bn_node = next(iter(node.users))
        if not _foldable(conv, _module(gm, bn_node)) or bn_node.args[:1] != (node,):
            continue
        act_node, act = None, None
        if len(bn_node.users) == 1:
            user = next(iter(bn_node.users))
            act = _activation(gm, user, bn_node)
            act_node = user if act is not None else None
        fused = FusedConv2d.from_conv_bn(conv, gm.get_submodule(str(bn_node.target)), act, backend)
        _replace_submodule(gm, str(node.target), fused)
        last = act_node or bn_node
        last.replace_all_uses_with(node)
        if act_node is not None:
            gm.graph.erase_node(act_node)
        gm.graph.erase_node(bn_node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _replace_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, module)


def count_fused(model: nn.Module) -> int:
    """Number of :class:`FusedConv2d` modules in ``model``."""
    return sum(isinstance(m, FusedConv2d) for m in model.modules())
