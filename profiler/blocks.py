"""Find a network's blocks with torch.fx: residual units, inverted residuals, Conv-BN-act chains.

Discovery works from the graph, not from class names, so it applies to models
prunerd has never seen:

1. Residual units come from their merge (add) nodes: the unit spans every node
   on a path from the add's immediate dominator (the fork) to the add, plus a
   trailing activation traced inside the same module. The shortcut is the add
   operand with fewer nodes behind it; it is the fork itself for an identity
   shortcut. A span that contains another unit is left to its inner units.
2. Outside residual units, every convolution starts a chain that takes in the
   single-user BatchNorm and activation after it.
3. Chains traced inside the same (non-container, non-leaf) module, with nothing
   else in it, are one unit: MobileNetV2's inverted residuals without shortcut,
   or a user's own ConvBlock class.

Everything outside blocks (stem, pooling, head, glue) is "rest", cut into
contiguous segments so it can be timed too.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .graph import (
    attr_value,
    extract,
    module_stack,
    propagate_shapes,
    scopes,
    shape_of,
    signature,
    tensor_meta,
    trace,
    value_inputs,
)
from .records import Block

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
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
CONV_FUNCTIONS = {F.conv2d}
LINEAR_FUNCTIONS = {F.linear}
NORM_FUNCTIONS = {F.batch_norm}
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
CONV_FUNCTIONS |= {_aten.conv2d.default, _aten.convolution.default}
LINEAR_FUNCTIONS |= {_aten.linear.default}
NORM_FUNCTIONS |= {_aten.batch_norm.default}


@dataclass
class BlockGraph:
    """A traced model with shapes, its blocks and the rest.

    ``rest`` lists the segments outside blocks as tuples of node names, in
    graph order; ``first`` and ``last`` of those are usually the stem and head.
    """

    gm: fx.GraphModule
    blocks: tuple[Block, ...]
    rest: tuple[tuple[str, ...], ...]

    def node(self, name: str) -> fx.Node:
        return self._nodes[name]

    def __post_init__(self) -> None:
        self._nodes = {n.name: n for n in self.gm.graph.nodes}

    def piece(self, names: tuple[str, ...]) -> tuple[fx.GraphModule, list[fx.Node]]:
        """A standalone module computing the given nodes, and the nodes that feed it."""
        gm, inputs, _ = extract(self.gm, [self._nodes[n] for n in names])
        return gm, inputs

    def replacement(self, block: Block) -> tuple[nn.Module | None, list[fx.Node]]:
        """What stands in a removed block's place, ready to time on the block's input.

        Identity: ``None`` (it costs nothing: the graph just rewires). Shortcut:
        the shortcut branch and any trailing activation. Adapter: a 1x1 conv.
        """
        inp = self._nodes[block.input_node]
        if block.replacement == "shortcut":
            merge = self._nodes[block.merge_node]
            short = self._nodes[block.shortcut_node]
            tail = [self._nodes[n] for n in block.nodes[block.nodes.index(block.merge_node) + 1 :]]
            branch = [
                self._nodes[n]
                for n in block.nodes
                if n in _ancestors_within(short, set(block.nodes), self._nodes)
            ]
            gm, inputs, _ = extract(
                self.gm,
                [*branch, *tail],
                substitute={merge: short},
                outputs=[tail[-1] if tail else short],
            )
            return gm, inputs
        if block.replacement == "adapter":
            cin, cout = block.input_shape[1], block.output_shape[1]
            meta = tensor_meta(inp)
            adapter = nn.Conv2d(cin, cout, 1, bias=True)
            if meta is not None:
                adapter = adapter.to(dtype=meta.dtype)
            return adapter, [inp]
        return None, [inp]


def _ancestors_within(node: fx.Node, names: set[str], nodes: dict[str, fx.Node]) -> set[str]:
    """Names of ``node`` and its ancestors that lie in ``names``."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n.name in names and n.name not in out:
            out.add(n.name)
            stack.extend(n.all_input_nodes)
    return out


def _is_leaf_class(name: str) -> bool:
    return name.startswith("torch.nn.modules.") and name not in CONTAINERS


def _own_scope(n: fx.Node) -> list[str]:
    """The module scopes a node was traced in, without the leaf module that computes it
    (fx: the call_module's own module; export: the ReLU module an aten.relu came from)."""
    stack = module_stack(n)
    while stack and (
        _is_leaf_class(stack[-1][2]) or (n.op == "call_module" and stack[-1][1] == n.target)
    ):
        stack.pop()
    return [key for key, _, _ in stack]


def _is_add(n: fx.Node) -> bool:
    is_add_op = (n.op == "call_function" and n.target in ADD_FUNCTIONS) or (
        n.op == "call_method" and n.target in ("add", "add_")
    )
    if not is_add_op:
        return False
    args = [a for a in n.args[:2] if isinstance(a, fx.Node)]
    return (
        len(args) == 2
        and len(shape_of(args[0])) == 4
        and shape_of(args[0]) == shape_of(args[1]) == shape_of(n)
    )


def _is_activation(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), ACTIVATION_MODULES)
    if n.op == "call_function":
        return n.target in ACTIVATION_FUNCTIONS
    return n.op == "call_method" and n.target in ACTIVATION_METHODS


def _is_norm(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), NORM_MODULES)
    return n.op == "call_function" and n.target in NORM_FUNCTIONS


def _conv_module(gm: fx.GraphModule, n: fx.Node) -> nn.Module | None:
    """The module of a convolution node: nn.Conv2d or a fused leaf with a 4-D weight."""
    if n.op != "call_module":
        return None
    m = gm.get_submodule(n.target)
    w = getattr(m, "weight", None)
    return m if isinstance(w, torch.Tensor) and w.dim() == 4 else None


def _is_conv(gm: fx.GraphModule, n: fx.Node) -> bool:
    return _conv_module(gm, n) is not None or (
        n.op == "call_function" and n.target in CONV_FUNCTIONS
    )


def _dominators(nodes: list[fx.Node]) -> dict[fx.Node, fx.Node | None]:
    """Immediate dominators in the DAG of value edges (a virtual root feeds every source)."""
    idom: dict[fx.Node, fx.Node | None] = {}
    depth: dict[fx.Node | None, int] = {None: 0}

    def lca(a: fx.Node | None, b: fx.Node | None) -> fx.Node | None:
        while a is not b:
            if depth[a] >= depth[b]:
                a = idom[a]  # type: ignore[index]
            else:
                b = idom[b]  # type: ignore[index]
        return a

    for n in nodes:
        preds = [p for p in value_inputs(n) if p in idom]
        d: fx.Node | None = preds[0] if preds else None
        for p in preds[1:]:
            d = lca(d, p)
        idom[n] = d
        depth[n] = depth[d] + 1
    return idom


def _span(fork: fx.Node, merge: fx.Node, order: dict[fx.Node, int]) -> list[fx.Node]:
    """Nodes on some path fork -> merge (fork excluded, merge included), in graph order."""
    lo, hi = order[fork], order[merge]
    down: set[fx.Node] = set()
    stack = [fork]
    while stack:
        for u in stack.pop().users:
            if u not in down and order[u] <= hi:
                down.add(u)
                stack.append(u)
    up: set[fx.Node] = set()
    stack = [merge]
    while stack:
        n = stack.pop()
        if n in up:
            continue
        up.add(n)
        stack.extend(p for p in value_inputs(n) if order[p] > lo)
    return sorted(down & up, key=order.__getitem__)


def _closed(span: list[fx.Node], entry: fx.Node, exit_: fx.Node) -> bool:
    """Single entry, single exit: nothing outside reads inside values but through ``exit_``,
    and nothing inside reads outside values but ``entry``."""
    inside = set(span)
    for n in span:
        if any(p not in inside and p is not entry for p in value_inputs(n)):
            return False
        if n is not exit_ and any(u not in inside for u in n.users):
            return False
    return True


def _get_attrs(nodes: list[fx.Node]) -> list[fx.Node]:
    return [a for n in nodes for a in n.all_input_nodes if a.op == "get_attr"]


def _scope_nodes(all_nodes: list[fx.Node], scope: str) -> list[fx.Node]:
    return [n for n in all_nodes if scope in scopes(n)]


def _name_for(all_nodes: list[fx.Node], span: list[fx.Node], fallback: str) -> str:
    """The module path when the span is exactly one module's nodes, else the output node's name.

    Among the modules whose nodes are exactly the span, the outermost that is not a
    plain container wins (`features.1` rather than `features.1.conv`). A container
    matches only because its other children are gone (a stage pruned down to one
    unit), so it would rename the unit after surgery; it is a last resort.
    """

    def computing(nodes: list[fx.Node]) -> set[fx.Node]:
        # Only nodes that produce tensors: not parameters, not export's input guards.
        return {n for n in nodes if n.op != "get_attr" and tensor_meta(n) is not None}

    common: list[tuple[str, str, str]] | None = None
    for n in span:
        s = module_stack(n)
        common = s if common is None else [a for a, b in zip(common, s) if a[0] == b[0]]
    matches = [
        (path, cls)
        for key, path, cls in common or []  # outermost first
        if computing(_scope_nodes(all_nodes, key)) == computing(span)
    ]
    for path, cls in matches:
        if cls not in CONTAINERS:
            return path
    return matches[-1][0] if matches else fallback


def _chain_name(chain: list[fx.Node]) -> str:
    """A chain is named for its convolution's module path when it has one."""
    head = chain[0]
    if head.op == "call_module":
        return str(head.target)
    stack = module_stack(head)  # torch.export: the conv module the aten op came from
    return stack[-1][1] if stack else head.name


def _grouped(n: fx.Node) -> bool:
    """A grouped (e.g. depthwise) convolution: each filter sees fewer channels than come in."""
    weight = n.args[1] if n.op == "call_function" and len(n.args) > 1 else None
    w = shape_of(weight) if isinstance(weight, fx.Node) else ()
    x = shape_of(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else ()
    return len(w) == 4 and len(x) == 4 and w[1] < x[1]


def count_ops(gm: fx.GraphModule, nodes: list[fx.Node]) -> tuple[int, int, int]:
    """(flops, macs, params) of the given nodes; a multiply-add is two FLOPs."""
    flops = macs = params = 0
    seen: set[int] = set()
    for n in nodes:
        out = tensor_meta(n)
        numel = 1
        for d in out.shape if out is not None else ():
            numel *= d
        conv = _conv_module(gm, n)
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params += p.numel()
        if conv is not None and out is not None:
            w = conv.weight
            k = w.shape[1] * w.shape[2] * w.shape[3]  # (Cin / groups) * kh * kw per output element
            macs += numel * k
            flops += 2 * numel * k
        elif n.op == "call_function" and n.target in CONV_FUNCTIONS and out is not None:
            w = shape_of(n.args[1]) if isinstance(n.args[1], fx.Node) else ()
            if len(w) == 4:
                macs += numel * w[1] * w[2] * w[3]
                flops += 2 * numel * w[1] * w[2] * w[3]
        elif n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Linear):
            lin = gm.get_submodule(n.target)
            macs += numel * lin.in_features
            flops += 2 * numel * lin.in_features
        elif n.op == "call_function" and n.target in LINEAR_FUNCTIONS and out is not None:
            w = shape_of(n.args[1]) if isinstance(n.args[1], fx.Node) else ()
            if len(w) == 2:
                macs += numel * w[1]
                flops += 2 * numel * w[1]
        elif n.op == "get_attr":
            value = attr_value(gm, str(n.target))
            if isinstance(value, nn.Parameter) and id(value) not in seen:
                seen.add(id(value))
                params += value.numel()
        elif n.op in ("call_module", "call_function", "call_method") and out is not None:
            flops += numel  # elementwise, normalisation, pooling: one operation per output value
    return flops, macs, params


def _replacement(
    block_in: tuple[int, ...], block_out: tuple[int, ...], first: bool
) -> tuple[bool, str, str]:
    if first:
        return False, "none", "stem: reads the network input"
    if block_in == block_out:
        return True, "identity", ""
    if block_in[0] == block_out[0] and block_in[2:] == block_out[2:]:
        return True, "adapter", ""
    return (
        False,
        "none",
        "changes spatial size {}x{} -> {}x{}".format(*block_in[2:], *block_out[2:]),
    )


def discover(model: nn.Module, *example: torch.Tensor) -> BlockGraph:
    """Trace ``model``, run it once on ``example`` for shapes, and find its blocks."""
    gm = trace(model)
    propagate_shapes(gm, *example)
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    graph_inputs = {n for n in nodes if n.op == "placeholder"}
    idom = _dominators(nodes)

    # 1. Residual units from their add nodes.
    units: list[tuple[list[fx.Node], fx.Node, fx.Node, fx.Node]] = []  # (span, fork, merge, out)
    for n in nodes:
        if not _is_add(n):
            continue
        fork = idom[n]
        if fork is None:
            continue
        span = _span(fork, n, order)
        out = n
        # Take in a trailing activation traced inside the same module as the add.
        users = list(n.users)
        if len(users) == 1 and _is_activation(gm, users[0]) and _own_scope(users[0]) == scopes(n):
            out = users[0]
            span = [*span, out]
        if _closed(span, fork, out):
            units.append((span, fork, n, out))
    # Keep innermost units: drop a span that contains another unit's merge.
    merges = {u[2] for u in units}
    units = [u for u in units if not any(m in set(u[0]) and m is not u[2] for m in merges)]

    claimed: set[fx.Node] = set()
    found: list[tuple[list[fx.Node], fx.Node, fx.Node, str, fx.Node | None, fx.Node | None]] = []
    for span, fork, merge, out in units:
        a, b = (x for x in merge.args[:2])
        inside = {s.name for s in span}
        named = {s.name: s for s in span}
        na = len(_ancestors_within(a, inside, named)) if a is not fork else 0
        nb = len(_ancestors_within(b, inside, named)) if b is not fork else 0
        short = a if na <= nb else b
        found.append((span, fork, out, "residual", merge, short))
        claimed.update(span)

    # 2. Conv -> norm -> activation chains outside residual units.
    chains: list[list[fx.Node]] = []
    for n in nodes:
        if n in claimed or not _is_conv(gm, n):
            continue
        chain = [n]
        while len(chain[-1].users) == 1:
            nxt = next(iter(chain[-1].users))
            if nxt in claimed or not (_is_norm(gm, nxt) or _is_activation(gm, nxt)):
                break
            chain.append(nxt)
        chains.append(chain)
        claimed.update(chain)

    # 3. Chains alone inside one user module (not a container, not a leaf) form one unit.
    def unit_scope(chain: list[fx.Node]) -> str | None:
        # Classes come from the trace's module stack: the GraphModule keeps only leaf modules.
        common = module_stack(chain[0])
        for c in chain[1:]:
            common = [a for a, b in zip(common, module_stack(c)) if a[0] == b[0]]
        for key, path, cls in reversed(common):
            leaf = _is_leaf_class(cls) or any(
                n.op == "call_module" and n.target == path for n in nodes
            )
            if cls not in CONTAINERS and not leaf:
                return key
        return None

    grouped: dict[str, list[list[fx.Node]]] = {}
    for chain in chains:
        scope = unit_scope(chain)
        if scope is None:
            found.append((chain, value_inputs(chain[0])[0], chain[-1], "conv_bn_act", None, None))
        else:
            grouped.setdefault(scope, []).append(chain)
    for scope, group in grouped.items():
        span = sorted((c for chain in group for c in chain), key=order.__getitem__)
        entry = value_inputs(span[0])[0]
        members = {n for n in _scope_nodes(nodes, scope) if n.op != "get_attr"}
        if members == set(span) and _closed(span, entry, span[-1]):
            depthwise = any(
                getattr(_conv_module(gm, c), "groups", 1) > 1 or _grouped(c)
                for c in span
                if _is_conv(gm, c)
            )
            found.append(
                (span, entry, span[-1], "inverted_residual" if depthwise else "unit", None, None)
            )
        else:
            found += [(c, value_inputs(c[0])[0], c[-1], "conv_bn_act", None, None) for c in group]

    found.sort(key=lambda f: order[f[2]])
    stages: list[tuple[int, ...]] = []
    blocks: list[Block] = []
    for span, entry, out, kind, merge, short in found:
        in_shape, out_shape = shape_of(entry), shape_of(out)
        if out_shape[2:] not in stages:
            stages.append(out_shape[2:])
        if kind == "residual":
            removable, replacement, reason = (
                True,
                ("identity" if short is entry else "shortcut"),
                "",
            )
        else:
            removable, replacement, reason = _replacement(
                in_shape, out_shape, entry in graph_inputs
            )
        full = [*_get_attrs(span), *span]
        flops, macs, params = count_ops(gm, full)
        piece, inputs, _ = extract(gm, full)
        blocks.append(
            Block(
                name=_name_for(
                    nodes, span, _chain_name(span) if kind == "conv_bn_act" else out.name
                ),
                kind=kind,
                nodes=tuple(n.name for n in sorted(set(full), key=order.__getitem__)),
                input_shape=in_shape,
                output_shape=out_shape,
                flops=flops,
                macs=macs,
                params=params,
                stage=stages.index(out_shape[2:]),
                removable=removable,
                replacement=replacement,
                reason=reason,
                signature=signature(piece, [tensor_meta(i) for i in inputs]),
                input_node=entry.name,
                output_node=out.name,
                merge_node=merge.name if merge is not None else "",
                shortcut_node=short.name if short is not None else "",
            )
        )
    in_blocks = {name for b in blocks for name in b.nodes}
    rest: list[list[str]] = []
    previous_in_block = True
    for n in nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        if n.name in in_blocks:
            previous_in_block = True
            continue
        if previous_in_block:
            rest.append([])
        rest[-1].append(n.name)
        previous_in_block = False
    # Parameters a rest segment reads (get_attr) travel with it.
    by_name = {n.name: n for n in nodes}
    rest_full = []
    for seg in rest:
        attrs = [a.name for a in _get_attrs([by_name[s] for s in seg]) if a.name not in in_blocks]
        rest_full.append(tuple(dict.fromkeys([*attrs, *seg])))
    return BlockGraph(gm=gm, blocks=tuple(blocks), rest=tuple(rest_full))
