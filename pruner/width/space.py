"""The prunable channel groups of a model, and its MACs and parameters as functions of their widths.

Channels that can only go together (a conv's filters, the BatchNorm after it,
the next conv's input channels, every producer of a residual stream) form one
group; Torch-Pruning's ``DependencyGraph`` finds the groups and removes their
channels physically. The network's size is a polynomial in the groups'
widths: a conv costs ``k_h*k_w * H_out*W_out * n_in/groups * n_out``
multiplications and ``k_h*k_w * n_in/groups * n_out`` weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from profiler import module_device

from ..errors import WidthUnsupported

# Group widths: a float64 tensor (differentiable costs) or a list of floats (fast exact costs).
Widths = torch.Tensor | Sequence[float]
CostFn = Callable[[Widths], Any]


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as e:  # a core dependency; only a broken install lacks it
        raise ImportError("filter pruning needs Torch-Pruning: pip install torch-pruning") from e
    return torch_pruning


def _dependency_graph(tp: Any, model: nn.Module, example: torch.Tensor) -> Any:
    """Torch-Pruning's graph of which channels go together; a model it cannot follow is
    :class:`WidthUnsupported`, naming its failure, not a traceback from inside it."""
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example, verbose=False
            )
    except Exception as e:  # noqa: BLE001 - any failure in there means the same to the user
        raise WidthUnsupported(
            f"filter pruning cannot follow the channels of {type(model).__name__}: "
            f"Torch-Pruning's dependency graph failed ({type(e).__name__}: {e}); a reshape "
            "that mixes channels, such as ShuffleNet's channel shuffle, is a known cause. "
            "Remove blocks instead: --method removal (or dbp)"
        ) from e


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels: ``root`` is the conv whose output channels index the group."""

    root: str
    size: int
    scales: tuple[str, ...]  # the group's BatchNorms: their weights gate the channels
    members: tuple[str, ...]
    # Per scale, which of its channels are the group's, in the root's channel order: a
    # BatchNorm after a concatenation (DenseNet's) holds the group at an offset.
    scale_channels: tuple[tuple[int, ...], ...] = ()


# The groups one side of a layer holds: (group, channels of the side per channel of the
# group). A conv after a concatenation reads several groups (and maybe fixed channels); a
# linear layer after a flatten reads each channel H*W times.
Parts = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class CostLayer:
    """A module whose size depends on group widths: each side's width is its fixed
    channels plus the widths of the groups it holds (``in_parts``, ``out_parts``)."""

    name: str
    kind: str  # "conv" | "linear" | "bn"
    in_channels: int
    out_channels: int
    in_parts: Parts = ()
    out_parts: Parts = ()
    kernel: int = 1
    pixels: int = 1
    conv_groups: int = 1
    bias: bool = False
    in_fixed: float | None = None  # channels in no group, with parts (None: none)
    out_fixed: float | None = None

    @property
    def depthwise(self) -> bool:
        return (
            self.kind == "conv" and self.conv_groups > 1 and self.conv_groups == self.out_channels
        )

    def widths(self, n: Widths) -> tuple[Any, Any]:
        cin = _side(n, self.in_parts, self.in_fixed, self.in_channels)
        cout = _side(n, self.out_parts, self.out_fixed, self.out_channels)
        return cin, cout

    def macs(self, n: Widths) -> Any:
        cin, cout = self.widths(n)
        if self.kind == "bn":
            return 0.0
        if self.depthwise:
            return self.kernel * self.pixels * cout
        return self.kernel * self.pixels * cin * cout / self.conv_groups

    def params(self, n: Widths) -> Any:
        cin, cout = self.widths(n)
        if self.kind == "bn":
            return 2 * cout
        weights = (
            self.kernel * cout if self.depthwise else self.kernel * cin * cout / self.conv_groups
        )
        return weights + (cout if self.bias else 0.0)


def _side(n: Widths, parts: Parts, fixed: float | None, channels: int) -> Any:
    if not parts:
        return float(channels)
    width: Any = 0.0 if fixed is None else fixed
    for g, per in parts:
        width = width + n[g] * per
    return width


class _SizeTerms:
    """The layers' MACs and params as arrays, for list widths: the width fit evaluates them
    hundreds of thousands of times, and one numpy pass replaces a Python loop over layers.

    Per layer: cost = ``num * n_in * n_out / div + lin * n_out``, with a fixed width where
    a layer's side belongs to no group. Every term is computed in the same order as
    :meth:`CostLayer.macs` / :meth:`CostLayer.params`; integer-valued terms (all but
    grouped convs') then sum to the same float in any order.
    """

    def __init__(self, layers: Sequence[CostLayer], n_groups: int) -> None:
        # Each side's width = fixed + A @ widths, A holding each part's channels per channel.
        self.in_fixed, self.a_in = _side_terms(
            [(la.in_parts, la.in_fixed, la.in_channels) for la in layers], n_groups
        )
        self.out_fixed, self.a_out = _side_terms(
            [(la.out_parts, la.out_fixed, la.out_channels) for la in layers], n_groups
        )
        dense = np.array([la.kind != "bn" and not la.depthwise for la in layers])
        depthwise = np.array([la.depthwise for la in layers])
        bn = np.array([la.kind == "bn" for la in layers])
        kernel = np.array([float(la.kernel) for la in layers])
        pixels = np.array([float(la.pixels) for la in layers])
        bias = np.array([1.0 if la.bias else 0.0 for la in layers])
        self.div = np.array([float(la.conv_groups) for la in layers])
        self.macs_num = np.where(dense, kernel * pixels, 0.0)
        self.macs_lin = np.where(depthwise, kernel * pixels, 0.0)
        self.params_num = np.where(dense, kernel, 0.0)
        self.params_lin = np.where(bn, 2.0, np.where(depthwise, kernel, 0.0) + bias)
        self._last_key: tuple[float, ...] | None = None
        self._last = (self.in_fixed, self.out_fixed)

    def _widths(self, n: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(n)
        if key == self._last_key:  # the fit asks for MACs and params of the same widths
            return self._last
        w = np.asarray(key, dtype=np.float64)
        cin = self.in_fixed + self.a_in @ w
        cout = self.out_fixed + self.a_out @ w
        self._last_key, self._last = key, (cin, cout)
        return cin, cout

    def macs(self, n: Sequence[float]) -> float:
        cin, cout = self._widths(n)
        return float((self.macs_num * cin * cout / self.div).sum() + (self.macs_lin * cout).sum())

    def params(self, n: Sequence[float]) -> float:
        cin, cout = self._widths(n)
        dense = self.params_num * cin * cout / self.div
        return float(dense.sum() + (self.params_lin * cout).sum())


def _side_terms(
    sides: Sequence[tuple[Parts, float | None, int]], n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    fixed = np.array(
        [float(ch) if not parts else (f or 0.0) for parts, f, ch in sides], dtype=np.float64
    )
    a = np.zeros((len(sides), n_groups))
    for i, (parts, _, _) in enumerate(sides):
        for g, per in parts:
            a[i, g] += per
    return fixed, a


@dataclass
class _Trace:
    """One forward pass in eval mode: the convs and linears in call order, their output
    pixels, each conv's input (H, W), and every module whose forward ran (a training-only
    head, such as GoogLeNet's auxiliary classifiers, does not: it costs nothing deployed)."""

    order: list[nn.Module]
    pixels: dict[nn.Module, int]
    input_hw: dict[str, tuple[int, int]]
    ran: set[nn.Module] = field(default_factory=set)

    def params(self, model: nn.Module) -> int:
        """``model``'s parameters but those of convs, linears and norms that did not run
        (a layer scale held by a module fx never calls still counts)."""
        layers = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
        idle = {
            id(p)
            for m in model.modules()
            if isinstance(m, layers) and m not in self.ran
            for p in m.parameters(recurse=False)
        }
        return sum(p.numel() for p in model.parameters() if id(p) not in idle)


def _trace_layers(model: nn.Module, example: torch.Tensor, names: dict[nn.Module, str]) -> _Trace:
    t = _Trace([], {}, {})

    def record(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        t.order.append(m)
        t.pixels[m] = int(out[0, 0].numel()) if out.dim() == 4 else 1
        if out.dim() == 4:
            t.input_hw[names[m]] = (int(inp[0].shape[-2]), int(inp[0].shape[-1]))

    hooks = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    hooks += [m.register_forward_hook(lambda m, i, o: t.ran.add(m)) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not t.order:
        raise ValueError("the model has no Conv2d or Linear layer: nothing to prune")
    return t


# Per module, the groups its output or input channels hold: (group, channels).
_Held = dict[nn.Module, list[tuple[int, int]]]


def _channel_groups(
    dg: Any, head: nn.Module, names: dict[nn.Module, str]
) -> tuple[tuple[ChannelGroup, ...], _Held, _Held]:
    """The dependency graph's groups rooted at convs (never ``head``'s outputs), and which
    groups each module's output and input channels hold."""
    groups: list[ChannelGroup] = []
    out_held: _Held = {}
    in_held: _Held = {}
    for grp in dg.get_all_groups(ignored_layers=[head], root_module_types=[nn.Conv2d]):
        root = grp[0].dep.target.module
        gi = len(groups)
        scales: dict[str, tuple[int, ...]] = {}
        members, seen = [], set()
        for item in grp:
            m, fn = item.dep.target.module, item.dep.handler
            if not isinstance(m, nn.Module) or m not in names:
                continue
            members.append(names[m])
            side = "out" if dg.is_out_channel_pruning_fn(fn) else "in"
            if (m, side) in seen or not (side == "out" or dg.is_in_channel_pruning_fn(fn)):
                continue
            seen.add((m, side))
            idxs = tuple(int(i) for i in item.idxs)
            (out_held if side == "out" else in_held).setdefault(m, []).append((gi, len(idxs)))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                scales.setdefault(names[m], idxs)
        groups.append(
            ChannelGroup(
                root=names[root],
                size=int(root.out_channels),
                scales=tuple(scales),
                members=tuple(dict.fromkeys(members)),
                scale_channels=tuple(scales.values()),
            )
        )
    return tuple(groups), out_held, in_held


def _parts(held: list[tuple[int, int]], sizes: Sequence[int], channels: int) -> tuple[Parts, float]:
    """A side's parts and its fixed channels, from the (group, channels) it holds."""
    return (
        tuple((g, c / sizes[g]) for g, c in held),
        float(channels - sum(c for _, c in held)),
    )


def _cost_layers(
    model: nn.Module,
    names: dict[nn.Module, str],
    traced: _Trace,
    groups: Sequence[ChannelGroup],
    out_held: _Held,
    in_held: _Held,
) -> tuple[CostLayer, ...]:
    """The convs, linears and BatchNorms that ran (a training-only head costs nothing
    deployed), each side as the groups it holds plus fixed channels."""
    sizes = [g.size for g in groups]
    layers: list[CostLayer] = []
    for m in model.modules():
        if m not in traced.ran:
            continue
        name = names[m]
        if isinstance(m, nn.Conv2d):
            out_parts, out_fixed = _parts(out_held.get(m, []), sizes, m.out_channels)
            in_parts, in_fixed = _parts(in_held.get(m, []), sizes, m.in_channels)
            if m.groups > 1 and m.groups == m.out_channels:  # depthwise: in follows out
                in_parts, in_fixed = out_parts, out_fixed
            layers.append(
                CostLayer(
                    name, "conv", m.in_channels, m.out_channels, in_parts, out_parts,
                    m.kernel_size[0] * m.kernel_size[1], traced.pixels.get(m, 0), m.groups,
                    m.bias is not None, in_fixed, out_fixed,
                )
            )  # fmt: skip
        elif isinstance(m, nn.Linear):
            out_parts, out_fixed = _parts(out_held.get(m, []), sizes, m.out_features)
            in_parts, in_fixed = _parts(in_held.get(m, []), sizes, m.in_features)
            layers.append(
                CostLayer(
                    name, "linear", m.in_features, m.out_features, in_parts, out_parts,
                    bias=m.bias is not None, in_fixed=in_fixed, out_fixed=out_fixed,
                )
            )  # fmt: skip
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            out_parts, out_fixed = _parts(out_held.get(m, []), sizes, m.num_features)
            layers.append(
                CostLayer(
                    name, "bn", m.num_features, m.num_features, (), out_parts,
                    out_fixed=out_fixed,
                )
            )  # fmt: skip
    return tuple(layers)


class ChannelSpace:
    """The prunable channel groups of ``model`` and its MACs and params as functions of their widths.

    ``example`` is one input batch (B, C, H, W); MACs are per image. The last
    layer (the classifier) keeps its outputs. The dependency graph holds
    ``model``'s own modules: :meth:`remove` prunes that very model.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        tp = _tp()
        self.model = model
        example = example.to(module_device(model))
        self.input_shape = tuple(example[:1].shape)
        names = {m: n for n, m in model.named_modules()}
        traced = _trace_layers(model, example, names)
        self.input_hw = traced.input_hw  # each conv's input (H, W)
        head = traced.order[-1]  # what the model outputs is not the pruner's to change
        self.dg = _dependency_graph(tp, model, example[:1])
        self.groups, out_held, in_held = _channel_groups(self.dg, head, names)
        self.layers = _cost_layers(model, names, traced, self.groups, out_held, in_held)
        self._terms = _SizeTerms(self.layers, len(self.groups))
        self.full = [float(g.size) for g in self.groups]
        total = traced.params(model)
        self.fixed_params = 0.0
        self.fixed_params = total - float(self.params(self.full))
        self.base_macs = float(self.macs(self.full))
        self.base_params = float(total)

    def macs(self, n: Widths) -> Any:
        """Multiply-accumulates per image at group widths ``n`` (G values; a tensor stays differentiable)."""
        if not isinstance(n, torch.Tensor):
            return self._terms.macs(n)
        return sum((layer.macs(n) for layer in self.layers), 0.0)

    def params(self, n: Widths) -> Any:
        """Parameter count at group widths ``n`` (G values; a tensor stays differentiable)."""
        if not isinstance(n, torch.Tensor):
            return self._terms.params(n) + self.fixed_params
        return sum((layer.params(n) for layer in self.layers), 0.0) + self.fixed_params

    def allowed(self, group: int, round_to: int) -> list[int]:
        """Widths group ``group`` may keep: multiples of ``round_to`` below its size, and its size."""
        g = self.groups[group]
        if not g.scales:  # no BatchNorm to gate it: the group keeps its width
            return [g.size]
        return sorted({k for k in range(round_to, g.size, round_to)} | {g.size})

    def remove(self, keep: dict[str, Sequence[int]]) -> None:
        """Physically keep only the listed channels of each named group (by root) in ``self.model``."""
        by_root = {g.root: g for g in self.groups}
        for root, idxs in keep.items():
            if root not in by_root:
                raise ValueError(f"no channel group rooted at {root!r}; groups: {sorted(by_root)}")
            g = by_root[root]
            kept = set(int(i) for i in idxs)
            drop = [i for i in range(g.size) if i not in kept]
            if not drop:
                continue
            module = self.model.get_submodule(root)
            pruner = self.dg.get_pruner_of_module(module)
            self.dg.get_pruning_group(module, pruner.prune_out_channels, drop).prune()


def thin(model: nn.Module, widths: dict[str, int], example: torch.Tensor) -> nn.Module:
    """Shrink ``model`` in place to the given group widths (first channels kept).

    Rebuilds the shapes of a pruned model from its plan; its weights come from
    the state_dict afterwards.
    """
    space = ChannelSpace(model, example)
    sizes = {g.root: g.size for g in space.groups}
    unknown = sorted(set(widths) - set(sizes))
    if unknown:
        raise ValueError(f"plan names channel groups {unknown} the model does not have")
    space.remove({root: range(k) for root, k in widths.items() if k < sizes[root]})
    return model
