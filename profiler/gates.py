"""Gating branches: a feature map multiplied by a branch computed from a pooling of itself.

Squeeze-excitation is the common case (pool, 1x1 conv, activation, 1x1 conv,
sigmoid or hard sigmoid, multiply); any branch of that shape counts, whatever
its layers. A gate belongs to the unit that produces the gated tensor: its
convolutions act on a pooled vector and are never units of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from .graph import value_inputs
from .ops import is_pool, mul_operands, side_nodes


@dataclass(frozen=True)
class Gate:
    """``mul = x * f(pool(x))``; ``branch`` holds the nodes of ``f(pool(x))``, in graph order."""

    x: fx.Node
    mul: fx.Node
    branch: tuple[fx.Node, ...]

    @property
    def region(self) -> tuple[fx.Node, ...]:
        """Everything the gate adds after ``x``: its branch, then the multiply."""
        return (*self.branch, self.mul)


SHAPE_METHODS = {"size", "expand_as", "view_as", "reshape_as", "type_as"}


def _reads_shape_of(n: fx.Node, x: fx.Node) -> bool:
    """``n`` reads only ``x``'s shape (``x.size()``, ``y.expand_as(x)``), not its values."""
    if n.op == "call_method" and n.target in SHAPE_METHODS:
        return n.target == "size" or n.args[0] is not x
    return n.op == "call_function" and n.target is getattr and n.args[1] in ("shape", "dtype")


def _branch(
    gm: fx.GraphModule,
    x: fx.Node,
    g: fx.Node,
    mul: fx.Node,
    order: dict[fx.Node, int],
    side: set[fx.Node],
) -> tuple[fx.Node, ...] | None:
    """The nodes computing ``g`` from ``x`` when they read ``x`` only through poolings (or
    for its shape), read nothing from before ``x``, and feed nothing but ``mul`` (shape
    checks and unused shape values aside: ``side``); else None."""
    branch: set[fx.Node] = set()
    stack = [g]
    while stack:
        n = stack.pop()
        if n in branch:
            continue
        if n is x or order[n] < order[x]:
            return None
        branch.add(n)
        for p in value_inputs(n):
            if p is x:
                if not (is_pool(gm, n) or _reads_shape_of(n, x)):
                    return None
            else:
                stack.append(p)
    if not any(is_pool(gm, n) and x in value_inputs(n) for n in branch):
        return None
    if any(u not in branch and u is not mul and u not in side for n in branch for u in n.users):
        return None
    return tuple(sorted(branch, key=order.__getitem__))


def find_gates(gm: fx.GraphModule, order: dict[fx.Node, int]) -> list[Gate]:
    """Every gating multiply of ``gm`` (``order``: each node's position in the graph)."""
    gates = []
    side = side_nodes(list(order))
    for n in order:
        operands = mul_operands(n)
        for x, g in (operands, operands[::-1]) if operands else ():
            branch = _branch(gm, x, g, n, order, side)
            if branch is not None:
                gates.append(Gate(x, n, branch))
                break
    return gates
