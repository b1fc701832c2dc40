"""The model's own forward pass with timing marks at the boundaries of its pieces.

Chained timing (``profiler.chain``) needs one forward pass with a mark between
consecutive pieces. Running each piece as its own module from Python adds host
work the model never does (a call per piece, a table of values between them),
and at the batch sizes where a GPU waits on the host that work is the latency
being measured. So the pass is the traced model's generated code itself, its
nodes regrouped piece by piece (a topological order: every piece reads only
what earlier pieces wrote) with one call ``mark(i)`` between piece ``i`` and
piece ``i + 1``. The plain pass, which the mark cost is measured against, is
the traced model itself: timed in the same rounds as the marked pass, it is the
profile's end to end, so a drift between two phases of a measurement (clocks,
a neighbour, the allocator) cannot show up as an additivity error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.fx as fx

from .chain import Pass


def regrouped(
    gm: fx.GraphModule,
    pieces: Sequence[Sequence[fx.Node]],
    mark: Callable[[int], None] | None = None,
) -> fx.GraphModule:
    """``gm`` with its nodes in piece order and ``mark(i)`` called at each boundary.

    ``pieces``: nodes of ``gm``, each piece in any order, the pieces in the order
    they run. Nodes in no piece (inputs, parameters, constants) are placed where
    first needed. ``mark``: a Python function or method (the generated code calls
    it; fx cannot name built-in methods). Raises ValueError when a piece reads a
    node of a later piece.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    owner = {n: k for k, piece in enumerate(pieces) for n in piece}
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    current = -1

    def place(n: fx.Node) -> fx.Node:
        if n not in env:
            if owner.get(n, -1) > current:
                raise ValueError(
                    f"pieces are not in running order: {n.name} (piece {owner[n]}) is read "
                    f"before it runs, by piece {current}"
                )
            env[n] = graph.node_copy(n, place)
        return env[n]

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            place(n)
    if mark is not None:
        graph.call_function(mark, (0,))
    for k, piece in enumerate(pieces):
        current = k
        for n in sorted(piece, key=order.__getitem__):
            place(n)
        if mark is not None:
            graph.call_function(mark, (k + 1,))
    current = len(pieces)
    (out,) = [n for n in gm.graph.nodes if n.op == "output"]
    graph.node_copy(out, place)
    return fx.GraphModule(gm, graph)


def graph_pass(
    gm: fx.GraphModule, pieces: Sequence[Sequence[fx.Node]], inputs: Sequence[torch.Tensor]
) -> Pass:
    """The :class:`~profiler.chain.Pass` of ``gm`` on ``inputs``, cut into ``pieces``;
    its plain form is ``gm`` as traced."""
    regrouped(gm, pieces)  # the order is checked before any timing starts

    def build(mark: Callable[[int], None]) -> Callable[[], object]:
        marked_gm = regrouped(gm, pieces, mark)
        return lambda: marked_gm(*inputs)

    return Pass(len(pieces), build, lambda: gm(*inputs))
