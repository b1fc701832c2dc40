"""Blocks taken out of a traced graph: what reads a block's output reads its stand-in.

The rewiring a block's replacement kind calls for (the profile names it for
each block, :meth:`BlockGraph.replacement` times it):

- identity: the block's output is replaced by its input;
- shortcut: the residual unit's merge (add) is replaced by its shortcut
  operand, which keeps the shortcut projection and the trailing activation;
- adapter: the block becomes a 1x1 convolution, a new submodule, followed by the
  activation the block ended in when its output is known to lie in that
  activation's range (a ReLU'd conv chain, a Fire module's concatenation of
  ReLU'd branches): the adapter's output then keeps the range what reads it saw.

Block surgery (``pruner.depth``) builds pruned models with it, and the profile's
prediction check (:mod:`profiler.profiling`) times a model built the same way, so
the model a prediction is checked against is the model a pruner would deploy.
Dense layers (replacement ``zero``) change the channels of what reads them and
are the pruner's (``pruner.depth.dense``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .lookups import direct_lookups
from .models import module_device
from .records import Block

REWIRED = ("identity", "shortcut", "adapter")
# What an adapter may end in (Block.adapter_activation, one of ADAPTER_ACTIVATIONS), as
# graph calls and as modules.
_ACTIVATION_CALLS = {"relu": F.relu, "relu6": F.relu6}
_ACTIVATION_MODULES = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def adapter_name(block_name: str) -> str:
    """The submodule path of a block's adapter: deterministic, so a plan finds it again."""
    return "prunerd_adapter_" + re.sub(r"[^A-Za-z0-9_]", "_", block_name)


def new_adapter(block: Block) -> nn.Conv2d:
    """A 1x1 convolution from the block's input channels to its output channels."""
    return nn.Conv2d(block.input_shape[1], block.output_shape[1], 1, bias=True)


def adapter_stand_in(block: Block) -> nn.Module:
    """What stands in an adapter block's place as one module: :func:`new_adapter`, then
    the block's ``adapter_activation`` when it has one (what the profile times)."""
    conv = new_adapter(block)
    if not block.adapter_activation:
        return conv
    return nn.Sequential(conv, _ACTIVATION_MODULES[block.adapter_activation]())


def bypass(
    gm: fx.GraphModule, blocks: Sequence[Block], adapters: Mapping[str, nn.Module] | None = None
) -> None:
    """Rewire ``gm``'s graph in place around ``blocks`` (records from ``discover`` on this
    very graph, each replaced by identity, shortcut or adapter).

    ``adapters`` maps block names to the module replacing an adapter block; a
    fresh :func:`new_adapter` when absent. The removed nodes stay until
    :func:`finish` (dead-code elimination). Raises ValueError naming the block
    whose nodes are missing or whose replacement is not one of :data:`REWIRED`.
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    adapters = adapters or {}
    # A removed block's output node lingers until dead-code elimination; a later block that
    # starts there must read what replaced it, or the removed block would run again.
    stands_for: dict[fx.Node, fx.Node] = {}

    def current(node: fx.Node) -> fx.Node:
        while node in stands_for:
            node = stands_for[node]
        return node

    for b in blocks:
        if b.replacement not in REWIRED:
            raise ValueError(
                f"block {b.name!r}: replacement {b.replacement!r} is not one of {REWIRED}"
            )
        missing = [n for n in (b.input_node, b.output_node) if n not in nodes]
        if missing:
            raise ValueError(f"block {b.name!r}: nodes {missing} are not in the graph")
        inp, out = current(nodes[b.input_node]), nodes[b.output_node]
        if b.replacement == "identity":
            out.replace_all_uses_with(inp)
            stands_for[out] = inp
        elif b.replacement == "shortcut":
            # The activation after the add now reads the shortcut alone.
            nodes[b.merge_node].replace_all_uses_with(nodes[b.shortcut_node])
        else:
            target = adapter_name(b.name)
            adapter = adapters.get(b.name) or new_adapter(b)
            gm.add_submodule(target, _alike(adapter, gm))
            stands_for[out] = _adapter_nodes(gm, b, target, inp, out)


def _adapter_nodes(
    gm: fx.GraphModule, b: Block, target: str, inp: fx.Node, out: fx.Node
) -> fx.Node:
    """Insert the call of adapter ``target`` on ``inp`` (and ``b``'s adapter activation)
    after ``out``, make ``out``'s readers read it; returns the node that now stands for it."""
    with gm.graph.inserting_after(out):
        node = gm.graph.call_module(target, (inp,))
    end = node
    if b.adapter_activation:
        with gm.graph.inserting_after(node):
            end = gm.graph.call_function(_ACTIVATION_CALLS[b.adapter_activation], (node,))
    out.replace_all_uses_with(end)
    node.args = (inp,)  # replace_all_uses_with never touches it: it reads inp, not out
    return end


def _alike(module: nn.Module, gm: fx.GraphModule) -> nn.Module:
    """``module`` on ``gm``'s device, in its floating dtype (a half-precision model gets a
    half-precision adapter)."""
    like = next((t for t in gm.parameters() if t.is_floating_point()), None)
    if like is None:
        return module.to(module_device(gm))
    return module.to(device=like.device, dtype=like.dtype)


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop what nothing reads any more (nodes, then submodules) and recompile ``gm``."""
    drop_dead_nodes(gm.graph)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return direct_lookups(gm)  # and forget the deleted ones


def drop_dead_nodes(graph: fx.Graph) -> None:
    """Erase the nodes nothing reads, as FX's ``eliminate_dead_code`` does, but keeping
    only the in-place operations whose effect outlives the pass (:func:`lasting_effect`):
    to FX every in-place op is impure, so in an exported program (``aten.relu_`` after
    each convolution) a bypassed block's nodes all stayed, and it still ran."""
    for node in reversed(list(graph.nodes)):  # readers first: a dead chain goes in one sweep
        if node.op in ("placeholder", "output") or node.users or lasting_effect(node):
            continue
        graph.erase_node(node)


def lasting_effect(node: fx.Node) -> bool:
    """Whether ``node`` must run though nothing reads its result: impure to FX, and not an
    in-place operation on a tensor this very pass computed (writing into a graph input or
    a parameter or buffer, through views or not, lasts; so does an unknown side effect)."""
    if not node.is_impure():
        return False
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None:
        return True
    written = [
        node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        for i, arg in enumerate(schema.arguments)
        if arg.alias_info is not None and arg.alias_info.is_write
    ]
    if not written:
        return True  # impure for another reason (randomness, I/O, an assert)
    return any(not isinstance(t, fx.Node) or _base(t).op != "call_function" for t in written)


def _base(node: fx.Node) -> fx.Node:
    """The node whose storage ``node`` shares: followed through views (ops whose result
    aliases their first argument) back to the tensor first made."""
    while node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node):
        schema = getattr(node.target, "_schema", None)
        returns = schema.returns if schema is not None else []
        if not (returns and returns[0].alias_info is not None):
            break
        node = node.args[0]
    return node


def without_blocks(
    gm: fx.GraphModule, blocks: Sequence[Block], adapters: Mapping[str, nn.Module] | None = None
) -> fx.GraphModule:
    """A new GraphModule: ``gm`` with ``blocks`` bypassed (``adapters`` as in :func:`bypass`),
    sharing ``gm``'s submodules and parameters; ``gm`` itself is not changed."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, env))
    copy = fx.GraphModule(gm, graph)
    renamed = [n.name for n in env if env[n].name != n.name]
    if renamed:  # graph_copy into an empty graph keeps names; the block records rely on it
        raise ValueError(f"copying the graph renamed nodes {renamed[:3]}")
    bypass(copy, blocks, adapters)
    return finish(copy)
