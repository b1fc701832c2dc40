"""Run a discovered network piece by piece, from the extracted modules only."""

from __future__ import annotations

import torch

from profiler import BlockGraph
from profiler.graph import extract


def run_pieces(bg: BlockGraph, x: torch.Tensor) -> torch.Tensor:
    """The network's output computed by chaining its blocks and rest segments in graph order."""
    values = {}
    order = {n.name: i for i, n in enumerate(bg.gm.graph.nodes)}
    pieces = [(order[b.output_node], b.nodes) for b in bg.blocks] + [
        (order[r[-1]], r) for r in bg.rest
    ]
    for n in bg.gm.graph.nodes:
        if n.op == "placeholder":
            values[n] = x
    for _, names in sorted(pieces):
        module, inputs, outs = extract(bg.gm, [bg.node(n) for n in names])
        out = module(*[values[i] for i in inputs])
        for node, value in zip(outs, out if len(outs) > 1 else (out,)):
            values[node] = value
    result = next(n for n in bg.gm.graph.nodes if n.op == "output").args[0]
    if isinstance(result, (tuple, list)):  # torch.export graphs return a flat tuple
        (result,) = result
    return values[result]
