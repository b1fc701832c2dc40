"""What a traced node computes, asked of the fx graph: convolution, norm, activation, add, ...

Predicates accept both fx graphs of ``torch.nn`` modules and torch.export
graphs of ATen operators, so discovery reads either the same way.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .graph import shape_of, tensor_meta

ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Hardswish,
    nn.GELU,
    nn.LeakyReLU,
    nn.Mish,
    nn.ELU,
)
ACTIVATION_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.silu,
    F.hardswish,
    F.gelu,
    F.leaky_relu,
    F.mish,
    F.elu,
    torch.relu,
}
ACTIVATION_METHODS = {"relu", "relu_"}
NORM_MODULES = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)
# Modules that compute nothing in eval mode; a chain runs through them.
PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)
POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
CAT_FUNCTIONS = {torch.cat, torch.concat}
SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split, torch.unbind}
SPLIT_METHODS = {"chunk", "split", "tensor_split", "unbind"}
CONV_FUNCTIONS = {F.conv2d}
LINEAR_FUNCTIONS = {F.linear}
NORM_FUNCTIONS = {F.batch_norm}
POOL_FUNCTIONS = {
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.avg_pool2d,
    F.max_pool2d,
    torch.mean,
    torch.amax,
}
POOL_METHODS = {"mean", "amax"}
CONTAINERS = (
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict",
)

# torch.export programs are graphs of ATen operators.
_aten = torch.ops.aten
ACTIVATION_FUNCTIONS |= {
    getattr(_aten, op).default
    for op in (
        "relu",
        "relu_",
        "hardtanh",
        "hardtanh_",
        "silu",
        "silu_",
        "hardswish",
        "hardswish_",
        "gelu",
        "leaky_relu",
    )
}
ADD_FUNCTIONS |= {_aten.add.Tensor, _aten.add_.Tensor}
MUL_FUNCTIONS |= {_aten.mul.Tensor, _aten.mul_.Tensor}
CAT_FUNCTIONS |= {_aten.cat.default}
SPLIT_FUNCTIONS |= {
    _aten.split.Tensor,
    _aten.split_with_sizes.default,
    _aten.chunk.default,
    _aten.unbind.int,
}
CONV_FUNCTIONS |= {_aten.conv2d.default, _aten.convolution.default}
LINEAR_FUNCTIONS |= {_aten.linear.default}
NORM_FUNCTIONS |= {_aten.batch_norm.default}
POOL_FUNCTIONS |= {
    _aten.mean.dim,
    _aten.amax.default,
    _aten.adaptive_avg_pool2d.default,
    _aten._adaptive_avg_pool2d.default,
    _aten.avg_pool2d.default,
    _aten.max_pool2d.default,
}


def module_of(gm: fx.GraphModule, n: fx.Node) -> nn.Module | None:
    return gm.get_submodule(n.target) if n.op == "call_module" else None


def _calls(n: fx.Node, functions: set, methods: set | tuple = ()) -> bool:
    return (n.op == "call_function" and n.target in functions) or (
        n.op == "call_method" and n.target in methods
    )


def is_activation(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(module_of(gm, n), ACTIVATION_MODULES)
    return _calls(n, ACTIVATION_FUNCTIONS, ACTIVATION_METHODS)


def is_norm(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(module_of(gm, n), NORM_MODULES)
    return _calls(n, NORM_FUNCTIONS)


def is_pass(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A node that returns its input unchanged in eval mode (identity, dropout)."""
    return isinstance(module_of(gm, n), PASS_MODULES)


def is_pool(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A pooling or mean over positions (any reduction a gating branch starts from)."""
    if n.op == "call_module":
        return isinstance(module_of(gm, n), POOL_MODULES)
    return _calls(n, POOL_FUNCTIONS, POOL_METHODS)


def conv_module(gm: fx.GraphModule, n: fx.Node) -> nn.Module | None:
    """The module of a convolution node: nn.Conv2d or a fused leaf with a 4-D weight."""
    m = module_of(gm, n)
    w = getattr(m, "weight", None)
    return m if isinstance(w, torch.Tensor) and w.dim() == 4 else None


def is_conv(gm: fx.GraphModule, n: fx.Node) -> bool:
    return conv_module(gm, n) is not None or _calls(n, CONV_FUNCTIONS)


def is_grouped(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A grouped (e.g. depthwise) convolution: each filter sees fewer channels than come in."""
    if getattr(conv_module(gm, n), "groups", 1) > 1:
        return True
    weight = n.args[1] if n.op == "call_function" and len(n.args) > 1 else None
    w = shape_of(weight) if isinstance(weight, fx.Node) else ()
    x = shape_of(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else ()
    return len(w) == 4 and len(x) == 4 and w[1] < x[1]


def _two_operands(n: fx.Node) -> list[fx.Node]:
    return [a for a in n.args[:2] if isinstance(a, fx.Node)]


def is_add(n: fx.Node) -> bool:
    """An add of two feature maps of one shape (a residual merge)."""
    if not _calls(n, ADD_FUNCTIONS, ("add", "add_")):
        return False
    args = _two_operands(n)
    return (
        len(args) == 2
        and len(shape_of(args[0])) == 4
        and shape_of(args[0]) == shape_of(args[1]) == shape_of(n)
    )


def mul_operands(n: fx.Node) -> list[fx.Node]:
    """The two tensor operands of a multiply whose result is a 4-D feature map, else []."""
    if not _calls(n, MUL_FUNCTIONS, ("mul", "mul_")) or len(shape_of(n)) != 4:
        return []
    args = _two_operands(n)
    return args if len(args) == 2 else []


def cat_operands(n: fx.Node) -> list[fx.Node]:
    """The operands of a concatenation along channels of 4-D feature maps, else []."""
    if not _calls(n, CAT_FUNCTIONS) or len(shape_of(n)) != 4 or not n.args:
        return []
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    parts = n.args[0]
    if dim not in (1, -3) or not isinstance(parts, (list, tuple)):
        return []
    return list(parts) if all(isinstance(p, fx.Node) for p in parts) else []


def is_split(n: fx.Node) -> bool:
    """A split of a tensor into parts (chunk, split, unbind), or taking one part of it."""
    if n.op == "call_function" and n.target is operator.getitem:
        return bool(n.args) and isinstance(n.args[0], fx.Node) and is_split(n.args[0])
    return _calls(n, SPLIT_FUNCTIONS, SPLIT_METHODS)


def is_slice(n: fx.Node) -> bool:
    """Indexing a tensor (``x[:, :k]``), not taking a part of a split."""
    return (
        n.op == "call_function"
        and n.target is operator.getitem
        and bool(n.args)
        and isinstance(n.args[0], fx.Node)
        and not is_split(n.args[0])
    )


_RELU_MODULES = (nn.ReLU,)
_RELU_FUNCTIONS = {F.relu, torch.relu, _aten.relu.default, _aten.relu_.default}
_RELU6_MODULES = (nn.ReLU6,)
_RELU6_FUNCTIONS = {F.relu6}
_HARDTANH_FUNCTIONS = {F.hardtanh, _aten.hardtanh.default, _aten.hardtanh_.default}
_KEEPS_RANGE_FUNCTIONS = {F.max_pool2d, F.adaptive_max_pool2d, _aten.max_pool2d.default}


def output_clamp(gm: fx.GraphModule, n: fx.Node) -> str:
    """The activation whose range ``n``'s value is known to lie in: "relu6" (in [0, 6]),
    "relu" (non-negative) or "" (unknown). Read through concatenations, max pooling,
    identities and dropout, so an Inception or Fire module's output is "relu"."""
    if n.op == "call_module":
        m = module_of(gm, n)
        if isinstance(m, _RELU6_MODULES):
            return "relu6"
        if isinstance(m, _RELU_MODULES):
            return "relu"
        if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d, *PASS_MODULES)):
            return _operand_clamp(gm, n)
        return ""
    if _calls(n, _RELU6_FUNCTIONS):
        return "relu6"
    if _calls(n, _RELU_FUNCTIONS, ACTIVATION_METHODS):
        return "relu"
    if _calls(n, _HARDTANH_FUNCTIONS) and _hardtanh_bounds(n) == (0.0, 6.0):
        return "relu6"
    if _calls(n, _KEEPS_RANGE_FUNCTIONS):
        return _operand_clamp(gm, n)
    parts = cat_operands(n)
    if parts:
        clamps = {output_clamp(gm, p) for p in parts}
        return "" if "" in clamps else ("relu6" if clamps == {"relu6"} else "relu")
    return ""


def _operand_clamp(gm: fx.GraphModule, n: fx.Node) -> str:
    first = n.args[0] if n.args else None
    return output_clamp(gm, first) if isinstance(first, fx.Node) else ""


def _hardtanh_bounds(n: fx.Node) -> tuple[object, object]:
    args = [*n.args[1:3]]
    low = args[0] if len(args) > 0 else n.kwargs.get("min_val", -1.0)
    high = args[1] if len(args) > 1 else n.kwargs.get("max_val", 1.0)
    return low, high


def side_nodes(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes (of a graph, in graph order) that compute no tensor and feed none (shape
    checks, asserts), or whose value nothing reads (a part of a split that the code took
    and never used: timm's Res2Net). Discovery ignores them when it asks which nodes
    read a value; they go with the unit that holds their inputs."""
    side: set[fx.Node] = set()
    for n in reversed(nodes):
        if (
            n.op not in ("output", "placeholder", "get_attr")
            and (tensor_meta(n) is None or not n.users)
            and all(u in side for u in n.users)
        ):
            side.add(n)
    return side


def constant_nodes(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes (of a graph, in graph order) computed from parameters alone, such as a
    layer scale reshaped for broadcasting; like parameters, they go with the unit
    that reads them."""
    const: set[fx.Node] = set()
    for n in nodes:
        if n.op in ("call_function", "call_method", "call_module") and all(
            p.op == "get_attr" or p in const for p in n.all_input_nodes
        ):
            const.add(n)
    return const
