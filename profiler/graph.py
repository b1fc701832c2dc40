"""torch.fx plumbing: trace a model with shapes, cut a set of nodes out as its own module.

Everything the profiler times is a piece of one traced graph: a block, a
replacement, a stretch of "rest". Cutting pieces out of the graph (rather than
calling submodules) is what lets prunerd profile models it has never seen,
including residual units written inline in a parent's ``forward``.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata


class TraceError(ValueError):
    """The model cannot be traced by torch.fx; the message names the module and the fix."""


class _Tracer(fx.Tracer):
    """fx tracer that keeps modules marked ``prunerd_leaf = True`` (e.g. fused convs) whole,
    and remembers which module it was inside when tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.trace_stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return bool(getattr(m, "prunerd_leaf", False)) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001, ANN201 - fx's signature
        self.trace_stack.append(self.path_of_module(m) if m is not self.root else "")
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            # Innermost first: the first module to see the exception is where it happened.
            if self.failed_in is None:
                self.failed_in = self.trace_stack[-1]
            raise
        finally:
            self.trace_stack.pop()


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; a model that fx cannot trace raises TraceError
    naming the innermost module being traced."""
    if isinstance(model, fx.GraphModule):
        return model
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = tracer.failed_in or ""
        what = (
            f"module {where!r} ({type(model.get_submodule(where)).__name__})"
            if where
            else "the model's own forward"
        )
        raise TraceError(
            f"torch.fx cannot trace {what}: {type(e).__name__}: {e}. "
            "prunerd needs a traceable graph: remove data-dependent control flow from that forward, "
            "or set `prunerd_leaf = True` on its class so it is timed as one opaque unit."
        ) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class _ShapeRecorder(fx.Interpreter):
    """Stores each tensor result's metadata in ``node.meta["tensor_meta"]``.

    fx's own ShapeProp does the same but pulls in the symbolic-shapes machinery
    (about a second of imports), which a profile served from the table need not pay.
    """

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        if isinstance(value, torch.Tensor):
            fmt = next(
                (
                    f
                    for f in (torch.channels_last, torch.contiguous_format)
                    if value.is_contiguous(memory_format=f)
                ),
                None,
            )
            n.meta["tensor_meta"] = TensorMetadata(
                tuple(value.shape), value.dtype, value.requires_grad, value.stride(), fmt, False, {}
            )
        return value


def propagate_shapes(gm: fx.GraphModule, *example: torch.Tensor) -> None:
    """Run ``gm`` once on ``example`` and store each node's ``tensor_meta`` (shape, dtype).

    It runs in eval mode whatever mode the model is in: in training mode BatchNorm would
    fold the example into its running statistics, and refuses a batch of one where the
    features are 1x1.
    """
    modes = [(m, m.training) for m in gm.modules()]
    for m, _ in modes:
        m.training = False  # not .eval(): torch.export's modules refuse it
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(*example)
    except Exception as e:
        shape = [tuple(t.shape) for t in example]
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"the model does not run on an input of shape {shape}: {type(e).__name__}: {first_line}. "
            "Check --input-size, --in-channels and --batch-size against what the model expects."
        ) from e
    finally:
        for m, training in modes:
            m.training = training


def tensor_meta(node: fx.Node) -> TensorMetadata | None:
    meta = node.meta.get("tensor_meta")
    return meta if isinstance(meta, TensorMetadata) else None


def shape_of(node: fx.Node) -> tuple[int, ...]:
    meta = tensor_meta(node)
    return tuple(meta.shape) if meta is not None else ()


def module_stack(node: fx.Node) -> list[tuple[str, str, str]]:
    """(key, module path, class name) of each module this node was traced inside, outermost first.

    Keys tell repeated calls of one module apart (fx writes ``relu@1``); paths and
    class names read the same for fx-traced and torch.export graphs (export writes
    class names as strings and a root entry, which is dropped).
    """
    out = []
    for key, value in (node.meta.get("nn_module_stack") or {}).items():
        path, cls = value if isinstance(value, tuple) else (key, "")
        name = cls if isinstance(cls, str) else _class_name(cls)
        if path:
            out.append((key, path, name))
    return out


def _class_name(cls: type) -> str:
    """A class's qualified name; a container subclass that keeps its base's forward
    (torchvision's Conv2dNormActivation is a Sequential) reads as that container."""
    for base in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
        if issubclass(cls, base) and cls.forward is base.forward:
            cls = base
    return f"{cls.__module__}.{cls.__qualname__}"


def scopes(node: fx.Node) -> list[str]:
    """Keys of the modules this node was traced inside, outermost first."""
    return [key for key, _, _ in module_stack(node)]


def target_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def value_inputs(node: fx.Node) -> list[fx.Node]:
    """Node inputs that carry values (get_attr nodes are copied, not passed in)."""
    return [a for a in node.all_input_nodes if a.op != "get_attr"]


def extract(
    gm: fx.GraphModule,
    nodes: Iterable[fx.Node],
    substitute: dict[fx.Node, fx.Node] | None = None,
    outputs: list[fx.Node] | None = None,
) -> tuple[fx.GraphModule, list[fx.Node], list[fx.Node]]:
    """Cut ``nodes`` out of ``gm`` as a standalone module.

    Values flowing in from outside become placeholders (returned, in order, as
    the second item); nodes whose values are used outside (or by the graph
    output) become outputs (third item; a single output is returned bare).
    ``substitute`` rewires inputs before cutting, e.g. ``{add: shortcut}`` makes
    a residual unit's tail read the shortcut instead of the sum; ``outputs``
    overrides which nodes the piece returns.
    """
    substitute = substitute or {}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    chosen = sorted(set(nodes), key=order.__getitem__)
    inside = set(chosen)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs: list[fx.Node] = []

    def lookup(arg: fx.Node) -> fx.Node:
        arg = substitute.get(arg, arg)
        if arg in env:
            return env[arg]
        if arg.op == "get_attr":
            env[arg] = graph.get_attr(arg.target)
        else:
            inputs.append(arg)
            env[arg] = graph.placeholder(arg.name)
        return env[arg]

    for n in chosen:
        env[n] = graph.node_copy(n, lookup)
    if outputs is None:
        outputs = [n for n in chosen if any(u not in inside for u in n.users) or not n.users]
    graph.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[o] for o in outputs))
    return fx.GraphModule(_flat_root(gm, graph), graph, "Piece"), inputs, outputs


def _flat_root(gm: fx.GraphModule, graph: fx.Graph) -> nn.Module:
    """A root holding the piece's modules and tensors under flat names, retargeting ``graph``.

    Nested paths (``getattr(self.layer1, "0").conv1``) cost an attribute lookup
    per level on every call; a piece is timed alone, so that overhead would be
    counted against it but not against the whole model.
    """
    root = nn.Module()
    names: dict[str, str] = {}
    for n in graph.nodes:
        if n.op not in ("call_module", "get_attr"):
            continue
        target = str(n.target)
        if target not in names:
            flat = target.replace(".", "_")
            while hasattr(root, flat):
                flat += "_"
            value = gm.get_submodule(target) if n.op == "call_module" else attr_value(gm, target)
            if isinstance(value, nn.Parameter):
                root.register_parameter(flat, value)
            elif isinstance(value, torch.Tensor):
                root.register_buffer(flat, value)
            elif isinstance(value, nn.Module):
                root.add_module(flat, value)
            else:
                setattr(root, flat, value)
            names[target] = flat
        n.target = names[target]
    return root


def attr_value(root: nn.Module, target: str) -> object:
    value: object = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


_FUNCTION_NAMES = {
    operator.add: "add",
    operator.iadd: "add",
    operator.mul: "mul",
    operator.getitem: "getitem",
}


def _describe_target(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return f"{type(m).__module__}.{type(m).__qualname__}({m.extra_repr()})"
    if node.op == "call_function":
        t = node.target
        return (
            _FUNCTION_NAMES.get(t)
            or f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', repr(t))}"
        )
    if node.op == "get_attr":
        value = attr_value(gm, str(node.target))
        return (
            f"attr{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}"
        )
    return str(node.target)


def signature(
    piece: fx.GraphModule, input_metas: list[TensorMetadata | None], extra: str = ""
) -> str:
    """A stable hash of what a piece computes and on what shapes: operator types and
    hyper-parameters, wiring, input shapes, dtypes and memory layout. Weights'
    values do not enter it: they do not change dense kernels' latency."""
    local = {n: i for i, n in enumerate(piece.graph.nodes)}

    def arg(a: object) -> object:
        if isinstance(a, fx.Node):
            return f"%{local[a]}"
        if isinstance(a, (list, tuple)):
            return [arg(x) for x in a]
        if isinstance(a, dict):
            return {k: arg(v) for k, v in sorted(a.items())}
        return repr(a)

    parts = [extra]
    for n in piece.graph.nodes:
        parts.append(f"{n.op}|{_describe_target(piece, n)}|{arg(n.args)}|{arg(n.kwargs)}")
    for m in input_metas:
        if m is not None:
            parts.append(f"in{tuple(m.shape)}{m.dtype}{m.memory_format}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
