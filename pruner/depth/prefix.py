"""Run a traced model and variants of it, computing what they share once.

A variant that removes one block is the whole model up to that block: only
the nodes downstream of the change differ. :class:`SharedPrefix` runs the
whole model once per batch, keeps the values the variants read from it, and
runs each variant from there, so scoring every block of a ResNet-56 alone
costs about half the forwards that running each variant in full would.

A variant node is *shared* when the whole model has a node of the same name
that does the same thing (same op, the very same module or attribute object,
the same target function) on shared inputs; its value is the whole model's.
A variant built on a copy of the model (a dense layer's removal, which slices
its readers' weights) shares nothing and runs in full.

Every op runs out of place (``ReLU(inplace=True)``, ``F.relu(..., inplace=True)``,
``x += y``): a kept value is read by many variants and must stay as it was
produced. The outputs are those of the models run on their own unless a model
mutates a value in place and then reads it again through an earlier name,
which traced CNNs do not do.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from profiler.graph import attr_value


def _same_op(a: fx.Node, gm_a: fx.GraphModule, b: fx.Node, gm_b: fx.GraphModule) -> bool:
    """Whether ``a`` (in ``gm_a``) and ``b`` (in ``gm_b``) compute the same thing from the
    same-named inputs."""
    if a.op != b.op:
        return False
    if a.op in ("call_module", "get_attr"):
        if attr_value(gm_a, a.target) is not attr_value(gm_b, b.target):
            return False
    elif a.target != b.target:
        return False
    try:
        return bool(_arguments(a) == _arguments(b))
    except RuntimeError:  # a tensor constant among the arguments: no single truth value
        return False


def _arguments(node: fx.Node) -> tuple:
    """``node``'s arguments with every input node named instead."""
    return (
        fx.node.map_arg(node.args, lambda n: n.name),
        fx.node.map_arg(node.kwargs, lambda n: n.name),
    )


_OUT_OF_PLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


class _OutOfPlace(fx.Interpreter):
    """Runs a graph's in-place ops out of place, so no value it produced changes later."""

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        module = self.fetch_attr(target)
        if getattr(module, "inplace", False) is not True:
            return module(*args, **kwargs)
        module.inplace = False
        try:
            return module(*args, **kwargs)
        finally:
            module.inplace = True

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if kwargs.get("inplace"):
            kwargs = {**kwargs, "inplace": False}
        return super().call_function(_OUT_OF_PLACE.get(target, target), args, kwargs)

    def call_method(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if target.endswith("_") and not target.startswith("_") and hasattr(args[0], target[:-1]):
            target = target[:-1]  # x.relu_() -> x.relu()
        return super().call_method(target, args, kwargs)


@dataclass(frozen=True)
class _Plan:
    """The nodes a graph computes itself, in order, and the shared values they read."""

    interpreter: _OutOfPlace
    run: tuple[fx.Node, ...]
    reads: dict[fx.Node, str]  # a shared node of this graph -> the whole model's node name
    last_use: dict[fx.Node, fx.Node]  # a value -> the last node of ``run`` that reads it


def _plan(gm: fx.GraphModule, base: fx.GraphModule | None) -> _Plan:
    """What running ``gm`` takes once ``base`` has run (everything when ``base`` is None)."""
    base_nodes = {n.name: n for n in base.graph.nodes} if base is not None else {}
    shared: set[fx.Node] = set()
    run: list[fx.Node] = []
    for node in gm.graph.nodes:
        twin = base_nodes.get(node.name)
        if (
            twin is not None
            and node.op != "output"
            and all(i in shared for i in node.all_input_nodes)
            and _same_op(node, gm, twin, base)
        ):
            shared.add(node)
        else:
            run.append(node)
    reads = {i: i.name for n in run for i in n.all_input_nodes if i in shared}
    last_use = {i: n for n in run for i in n.all_input_nodes}
    return _Plan(_OutOfPlace(gm), tuple(run), reads, last_use)


def _execute(plan: _Plan, x: torch.Tensor, env: dict[fx.Node, Any], keep: set[str]) -> tuple:
    """Run ``plan`` from ``env``; returns (its output, {name: value} of the nodes in ``keep``)."""
    interp, kept, out = plan.interpreter, {}, None
    interp.env = env
    interp.args_iter = iter((x,))
    for node in plan.run:
        value = interp.run_node(node)
        if node.op == "output":
            out = value
        else:
            env[node] = value
            if node.name in keep:
                kept[node.name] = value
        for i in node.all_input_nodes:
            if plan.last_use.get(i) is node:
                env.pop(i, None)  # free activations as soon as nothing left reads them
    interp.env = {}
    return out, kept


class SharedPrefix:
    """``base`` and each of ``variants`` run on one batch, sharing what they compute alike.

    ``variants`` are GraphModules derived from ``base`` whose unchanged nodes
    keep their names (:func:`profiler.without_blocks` guarantees it). Calling
    returns the base's output and one output per variant name, as each model
    would return them on its own.
    """

    def __init__(self, base: fx.GraphModule, variants: Mapping[str, fx.GraphModule]) -> None:
        self.base = _plan(base, None)
        self.variants = {name: _plan(v, base) for name, v in variants.items()}
        self.keep = {name for p in self.variants.values() for name in p.reads.values()}

    def shared_fraction(self) -> float:
        """The fraction of the variants' nodes taken from the base run (0 to 1)."""
        total = sum(len(p.interpreter.graph.nodes) for p in self.variants.values())
        ran = sum(len(p.run) for p in self.variants.values())
        return 1 - ran / total if total else 0.0

    def __call__(self, x: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        out, values = _execute(self.base, x, {}, self.keep)
        outs = {}
        for name, plan in self.variants.items():
            env = {node: values[base_name] for node, base_name in plan.reads.items()}
            outs[name] = _execute(plan, x, env, set())[0]
        return out, outs
