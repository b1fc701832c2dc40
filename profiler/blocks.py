"""Find a network's blocks with torch.fx and describe them: shapes, FLOPs, params, replacement.

The units themselves come from :mod:`profiler.units` (residual units, inverted
residuals and MBConv blocks with their gates, dense layers, Conv-norm-act
chains). Everything outside blocks (stem, pooling, head, glue) is "rest", cut
into contiguous segments so it can be timed too.

What replaces a removed block: ``identity`` (its input passes on), ``shortcut``
(a residual unit keeps only its shortcut projection), ``adapter`` (a 1x1 conv
from the block's input to its output channels), ``zero`` (a dense layer: its
output is dropped from every concatenation that reads it, and the norms and
convolutions after those concatenations lose its channels), or ``none`` with
the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
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
)
from .models import module_device
from .ops import CONTAINERS, CONV_FUNCTIONS, LINEAR_FUNCTIONS, conv_module, output_clamp
from .records import Block
from .rewire import adapter_stand_in
from .units import Unit, find_units


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

        Identity and zero: ``None``; both cost 0 s (the graph just rewires, or
        drops the block's channels from the concatenations that read them; what
        those narrower concatenations save downstream is not counted). Shortcut:
        the shortcut branch and any trailing activation. Adapter: a 1x1 conv, and the
        activation the block ended in (``adapter_activation``).
        """
        inp = self._nodes[block.input_node]
        if block.replacement == "shortcut":
            merge = self._nodes[block.merge_node]
            short = self._nodes[block.shortcut_node]
            tail = [self._nodes[n] for n in block.nodes[block.nodes.index(block.merge_node) + 1 :]]
            branch = [
                self._nodes[n] for n in block.nodes if n in _ancestor_names(short, set(block.nodes))
            ]
            gm, inputs, _ = extract(
                self.gm,
                [*branch, *tail],
                substitute={merge: short},
                outputs=[tail[-1] if tail else short],
            )
            return gm, inputs
        if block.replacement == "adapter":
            meta = tensor_meta(inp)
            adapter = adapter_stand_in(block)
            if meta is not None:
                adapter = adapter.to(dtype=meta.dtype)
            return adapter, [inp]
        return None, [inp]


def _ancestor_names(node: fx.Node, names: set[str]) -> set[str]:
    """Names of ``node`` and its ancestors that lie in ``names``."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n.name in names and n.name not in out:
            out.add(n.name)
            stack.extend(n.all_input_nodes)
    return out


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
    for n in computing(span):  # a shape check may sit in the next module (timm's DPN)
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


def count_ops(gm: fx.GraphModule, nodes: list[fx.Node]) -> tuple[int, int, int]:
    """(flops, macs, params) of the given nodes; a multiply-add is two FLOPs."""
    flops = macs = params = 0
    seen: set[int] = set()
    for n in nodes:
        out = tensor_meta(n)
        numel = 1
        for d in out.shape if out is not None else ():
            numel *= d
        conv = conv_module(gm, n)
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


def _get_attrs(nodes: list[fx.Node]) -> list[fx.Node]:
    return [a for n in nodes for a in n.all_input_nodes if a.op == "get_attr"]


def _how_replaced(unit: Unit, first: bool) -> tuple[bool, str, str]:
    """(removable, replacement, reason) of a unit."""
    if unit.replacement:
        return unit.replacement != "none", unit.replacement, unit.reason
    return _replacement(shape_of(unit.entry), shape_of(unit.out), first)


def _block(gm: fx.GraphModule, nodes: list[fx.Node], unit: Unit, stage: int) -> Block:
    """The record of one unit (``nodes``: every node of the graph, in order)."""
    order = {n: i for i, n in enumerate(nodes)}
    removable, replacement, reason = _how_replaced(unit, unit.entry.op == "placeholder")
    full = [*_get_attrs(unit.nodes), *unit.nodes]
    flops, macs, params = count_ops(gm, full)
    piece, inputs, _ = extract(gm, full)
    fallback = _chain_name(unit.nodes) if unit.kind == "conv_bn_act" else unit.out.name
    return Block(
        name=_name_for(nodes, unit.nodes, fallback),
        kind=unit.kind,
        nodes=tuple(n.name for n in sorted(set(full), key=order.__getitem__)),
        input_shape=shape_of(unit.entry),
        output_shape=shape_of(unit.out),
        flops=flops,
        macs=macs,
        params=params,
        stage=stage,
        removable=removable,
        replacement=replacement,
        reason=reason,
        signature=signature(piece, [tensor_meta(i) for i in inputs]),
        input_node=unit.entry.name,
        output_node=unit.out.name,
        merge_node=unit.merge.name if unit.merge is not None else "",
        shortcut_node=unit.short.name if unit.short is not None else "",
        adapter_activation=output_clamp(gm, unit.out) if replacement == "adapter" else "",
    )


def _rest(nodes: list[fx.Node], blocks: list[Block]) -> tuple[tuple[str, ...], ...]:
    """Contiguous runs of nodes outside blocks, each with the parameters it reads."""
    in_blocks = {name for b in blocks for name in b.nodes}
    runs: list[list[fx.Node]] = []
    previous_in_block = True
    for n in nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        if n.name in in_blocks:
            previous_in_block = True
            continue
        if previous_in_block:
            runs.append([])
        runs[-1].append(n)
        previous_in_block = False
    return tuple(
        tuple(
            dict.fromkeys(
                [*(a.name for a in _get_attrs(run) if a.name not in in_blocks)]
                + [n.name for n in run]
            )
        )
        for run in runs
    )


def discover(model: nn.Module, *example: torch.Tensor) -> BlockGraph:
    """Trace ``model``, run it once on ``example`` for shapes, and find its blocks.

    ``example`` is moved to the device ``model`` is on (structure does not depend on it)."""
    gm = trace(model)
    device = module_device(model)
    propagate_shapes(gm, *(t.to(device) for t in example))
    nodes = list(gm.graph.nodes)
    stages: list[tuple[int, ...]] = []
    blocks: list[Block] = []
    for unit in find_units(gm):
        spatial = shape_of(unit.out)[2:]
        if spatial not in stages:
            stages.append(spatial)
        blocks.append(_block(gm, nodes, unit, stages.index(spatial)))
    return BlockGraph(gm=gm, blocks=tuple(blocks), rest=_rest(nodes, blocks))
