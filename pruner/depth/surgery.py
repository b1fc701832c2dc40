"""Remove blocks from a traced model.

Surgery works on the torch.fx graph, so it needs no knowledge of the model's
classes:

- identity, shortcut, adapter: rewired by :func:`profiler.bypass`; an adapter
  (a 1x1 convolution) is fit on calibration features, block input -> block
  output per pixel (:mod:`.adapters`);
- zero: a dense layer's output leaves every concatenation that reads it, and
  what reads those concatenations loses its channels (:mod:`.dense`).

Dead nodes and submodules nothing calls any more are then deleted, so the
state_dict of a pruned model holds only what it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn

from profiler import (
    Block,
    ModelSpec,
    bypass,
    discover,
    example_input,
    finish,
)
from profiler.channels import ChannelError

from .adapters import fit_adapters
from .dense import drop_contributions

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class SurgeryError(ValueError):
    """A plan that does not fit the model it is applied to."""


def remove_blocks(
    gm: fx.GraphModule, blocks: Sequence[Block], adapters: dict[str, nn.Module] | None = None
) -> fx.GraphModule:
    """Remove ``blocks`` (records from ``discover`` on this very graph) from ``gm`` in place.

    ``adapters`` maps block names to the module replacing an "adapter" block;
    a fresh :func:`~profiler.new_adapter` when absent. Returns ``gm``, recompiled.
    """
    for b in blocks:
        if not b.removable or b.replacement == "none":
            raise SurgeryError(f"block {b.name!r} is not removable: {b.reason or 'no replacement'}")
    nodes = {n.name: n for n in gm.graph.nodes}
    zeros = [b for b in blocks if b.replacement == "zero"]
    missing = [n for b in zeros for n in (b.input_node, b.output_node) if n not in nodes]
    if missing:
        raise SurgeryError(
            f"blocks {[b.name for b in zeros]}: nodes {missing} are not in the graph"
        )
    try:
        bypass(gm, [b for b in blocks if b.replacement != "zero"], adapters)
        drop_contributions(gm, [nodes[b.output_node] for b in zeros])
    except ChannelError as e:
        raise SurgeryError(f"dense layers cannot be dropped: {e}") from e
    except ValueError as e:
        raise SurgeryError(str(e)) from e
    return finish(gm)


def remove_more(
    gm: fx.GraphModule, blocks: Sequence[Block], spec: ModelSpec, calibration: Batches
) -> fx.GraphModule:
    """Remove ``blocks`` (records from the unpruned model's profile) from ``gm`` in place.

    Each is found again in ``gm`` by its output node, which surgery never renames,
    and failing that by its name.
    """
    if not blocks:
        return gm
    bg = discover(gm, example_input(spec))  # traces gm to itself: node names hold
    by_output = {b.output_node: b for b in bg.blocks}
    by_name = {b.name: b for b in bg.blocks}
    chosen = [by_output.get(b.output_node) or by_name.get(b.name) for b in blocks]
    missing = [b.name for b, c in zip(blocks, chosen) if c is None]
    if missing:
        raise ValueError(f"blocks {missing} are no longer blocks of the pruned model")
    # What the plan will record is the record given: the adapter's activation comes with it.
    chosen = [
        dataclasses.replace(c, adapter_activation=b.adapter_activation)
        for b, c in zip(blocks, chosen)
    ]
    adapters = fit_adapters(bg.gm, chosen, calibration)
    return remove_blocks(bg.gm, chosen, adapters)
