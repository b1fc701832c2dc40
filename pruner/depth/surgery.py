"""Remove blocks from a traced model.

Surgery works on the torch.fx graph, so it needs no knowledge of the model's
classes:

- identity, shortcut, adapter: rewired by :func:`profiler.bypass`; an adapter
  (a 1x1 convolution) is initialised here by least squares on calibration
  features, block input -> block output per pixel;
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
    module_device,
    new_adapter,
)
from profiler.channels import ChannelError

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


class _Pairs(fx.Interpreter):
    """Accumulates per-pixel normal equations for least squares, block input -> block output."""

    def __init__(self, gm: fx.GraphModule, blocks: Sequence[Block]) -> None:
        super().__init__(gm)
        self.by_input: dict[str, list[Block]] = {}
        self.by_output: dict[str, list[Block]] = {}
        for b in blocks:
            self.by_input.setdefault(b.input_node, []).append(b)
            self.by_output.setdefault(b.output_node, []).append(b)
        self.inputs: dict[str, torch.Tensor] = {}
        self.xtx: dict[str, torch.Tensor] = {}
        self.xty: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        for b in self.by_input.get(n.name, ()):
            # (B, C, H, W) -> (B*H*W, C+1) with a bias column; copied before any in-place op.
            x = value.detach().double().permute(0, 2, 3, 1).reshape(-1, value.shape[1])
            self.inputs[b.name] = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        for b in self.by_output.get(n.name, ()):
            x = self.inputs.pop(b.name)
            y = value.detach().double().permute(0, 2, 3, 1).reshape(-1, value.shape[1])
            self.xtx[b.name] = self.xtx.get(b.name, 0) + x.T @ x
            self.xty[b.name] = self.xty.get(b.name, 0) + x.T @ y
        return value


@torch.no_grad()
def fit_adapters(
    gm: fx.GraphModule,
    blocks: Sequence[Block],
    batches: Batches,
    max_samples: int = 512,
    ridge: float = 1e-4,
) -> dict[str, nn.Conv2d]:
    """Least-squares 1x1 convolutions mapping each block's input to its output, per pixel.

    Streams at most ``max_samples`` images of ``batches`` through the unpruned
    ``gm``; only the (C_in+1)^2 and (C_in+1) x C_out normal equations are kept.
    ``ridge`` (relative to the mean diagonal) keeps the solve well posed.
    """
    blocks = [b for b in blocks if b.replacement == "adapter"]
    if not blocks:
        return {}
    was_training = gm.training
    gm.eval()
    device = module_device(gm)
    pairs = _Pairs(gm, blocks)
    seen = 0
    try:
        for x, _ in batches:
            if seen >= max_samples:
                break
            x = x[: max_samples - seen]
            pairs.run(x.to(device))
            seen += len(x)
    finally:
        gm.train(was_training)
    out: dict[str, nn.Conv2d] = {}
    for b in blocks:
        conv = new_adapter(b)
        if b.name in pairs.xtx:
            a = pairs.xtx[b.name]
            a = a + ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype, device=a.device)
            w = torch.linalg.solve(a, pairs.xty[b.name]).cpu()  # (C_in+1, C_out)
            conv.weight.copy_(w[:-1].T.reshape(conv.weight.shape).float())
            conv.bias.copy_(w[-1].float())
        out[b.name] = conv
    return out


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
