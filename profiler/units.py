"""Find a network's units in its fx graph: what a pruning engineer would remove whole.

Detection reads the graph (operators, wiring, the module scopes nodes were
traced in), never class names:

1. Gating branches (:mod:`profiler.gates`) are found first; they live in the
   unit that produces the tensor they gate.
2. Dense layers: a node whose every reader is a channel concatenation that also
   takes one of the layer's own inputs (DenseNet: the layer's output is
   concatenated with the features it read), neither a piece of a split nor
   sliced after. The layer is everything that
   computes nothing but that output; removing it drops its contribution.
3. Residual units come from their merge (add) nodes: the unit spans every node
   on a path from the add's immediate dominator (the fork) to the add, plus a
   trailing activation traced inside the same module. A span that contains
   another unit is left to its inner units.
4. Outside those, every convolution starts a chain that takes in the
   single-user norm, activation, identity or dropout after it, and a gate on
   its output.
5. Chains are grouped by the innermost module scope (not a plain container,
   nor a Sequential subclass that keeps Sequential's forward) whose nodes are
   those chains plus operations that keep the tensor's size, entered and left
   at one node each: an inverted residual / MBConv without shortcut, a user's
   own ConvBlock class. Innermost, so that a user's stage of ConvBlocks stays
   one unit per ConvBlock.
6. Except where a scope joins parallel branches by a channel concatenation
   (Inception, SqueezeNet's Fire, ShuffleNet's units): the innermost such scope
   is the unit of every chain inside it, even where a branch is a module of its
   own. Splits, the concatenation, and operations on one branch only (the
   pooling branch of an Inception reduction) may change sizes there; an
   operation every path runs through may not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from .channels import ChannelError, channel_readers
from .gates import Gate, find_gates
from .graph import module_stack, scopes, shape_of, value_inputs
from .ops import (
    CONTAINERS,
    cat_operands,
    constant_nodes,
    is_activation,
    is_add,
    is_conv,
    is_grouped,
    is_norm,
    is_pass,
    is_slice,
    is_split,
    side_nodes,
)


@dataclass
class Unit:
    """One unit before it becomes a :class:`~profiler.records.Block`.

    ``nodes`` are computing nodes in graph order; ``entry`` is the value the unit
    reads (for a dense layer, its own concatenation of earlier features), ``out``
    the value it produces. ``replacement`` is empty when the unit's shapes decide it.
    """

    nodes: list[fx.Node]
    entry: fx.Node
    out: fx.Node
    kind: str
    merge: fx.Node | None = None
    short: fx.Node | None = None
    replacement: str = ""
    reason: str = ""


class _Graph:
    """A traced graph as discovery reads it: order, dominators, value users, scopes."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self.side = side_nodes(self.nodes)
        self.const = constant_nodes(self.nodes)
        self.idom = _dominators(self.nodes, self.const)
        self.called = {str(n.target) for n in self.nodes if n.op == "call_module"}
        self.scope_nodes: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            if n.op != "get_attr" and n not in self.side and n not in self.const:
                for key in scopes(n):
                    self.scope_nodes.setdefault(key, []).append(n)

    def users(self, n: fx.Node) -> list[fx.Node]:
        """Users that compute values (not shape checks)."""
        return [u for u in n.users if u not in self.side]

    def inputs(self, n: fx.Node) -> list[fx.Node]:
        """Inputs that carry activations (not parameters, nor values computed from them)."""
        return [p for p in value_inputs(n) if p not in self.const]

    def sort(self, nodes: set[fx.Node] | list[fx.Node]) -> list[fx.Node]:
        return sorted(set(nodes), key=self.order.__getitem__)

    def dominates(self, a: fx.Node, b: fx.Node) -> bool:
        """Every path from the graph's inputs to ``b`` runs through ``a``."""
        n: fx.Node | None = b
        while n is not None and n is not a:
            n = self.idom.get(n)
        return n is a

    def closed(self, span: list[fx.Node], entry: fx.Node, exit_: fx.Node) -> bool:
        """Single entry, single exit: nothing outside reads inside values but through
        ``exit_``, and nothing inside reads outside values but ``entry``."""
        inside = set(span)
        for n in span:
            if any(p not in inside and p is not entry for p in self.inputs(n)):
                return False
            if n is not exit_ and any(u not in inside for u in self.users(n)):
                return False
        return True


def _dominators(nodes: list[fx.Node], const: set[fx.Node]) -> dict[fx.Node, fx.Node | None]:
    """Immediate dominators in the DAG of activation edges (a virtual root feeds every
    source; values computed from parameters alone are not edges)."""
    idom: dict[fx.Node, fx.Node | None] = {}
    depth: dict[fx.Node | None, int] = {None: 0}

    def lca(a: fx.Node | None, b: fx.Node | None) -> fx.Node | None:
        while a is not b:
            if depth[a] >= depth[b]:
                a = idom[a]  # type: ignore[index]
            else:
                b = idom[b]  # type: ignore[index]
        return a

    for n in nodes:
        preds = [p for p in value_inputs(n) if p in idom and p not in const]
        d: fx.Node | None = preds[0] if preds else None
        for p in preds[1:]:
            d = lca(d, p)
        idom[n] = d
        depth[n] = depth[d] + 1
    return idom


def find_units(gm: fx.GraphModule) -> list[Unit]:
    """The units of a traced graph whose nodes carry ``tensor_meta``, in graph order of outputs."""
    g = _Graph(gm)
    gates = find_gates(gm, g.order)
    units = dense_layers(g)
    claimed = {n for u in units for n in u.nodes}
    units += residual_units(g, claimed)
    claimed |= {n for u in units for n in u.nodes}
    chains = conv_chains(g, claimed, gates)
    units += group_chains(g, chains, claimed)
    _attach_gates(g, units, gates)
    _absorb_side(g, units)
    return sorted(units, key=lambda u: g.order[u.out])


# --- dense layers ---------------------------------------------------------------------------


def _feeding_only(g: _Graph, y: fx.Node) -> set[fx.Node]:
    """``y`` and every node that computes nothing but (ancestors of) ``y``:
    what dies when ``y`` is no longer read."""
    region = {y}
    for n in reversed(g.nodes[: g.order[y]]):
        if n.op in ("placeholder", "get_attr") or n in g.side:
            continue
        users = g.users(n)
        if users and all(u in region for u in users):
            region.add(n)
    return region


def _dense_layer(g: _Graph, y: fx.Node) -> Unit | None:
    readers = g.users(y)
    if not readers or not all(cat_operands(u) for u in readers):
        return None
    # A concatenation that takes a piece of a split joins the pieces again (Res2Net's
    # split-transform-merge, inside a residual block), and one that is sliced widens a
    # tensor by cheap channels (GhostNet's ghost module): not features growing.
    if any(is_split(p) for u in readers for p in cat_operands(u)) or any(
        is_slice(v) for u in readers for v in u.users
    ):
        return None
    region = _feeding_only(g, y)
    if not any(is_conv(g.gm, n) for n in region):
        return None
    entries = {p for n in region for p in g.inputs(n) if p not in region}
    if not any(p in entries for u in readers for p in cat_operands(u) if p is not y):
        return None
    nodes = g.sort(region)
    # The layer reads its features as one tensor: its own concatenation when it has one.
    entry = nodes[0] if cat_operands(nodes[0]) else g.sort(entries)[0]
    unit = Unit(nodes, entry, y, "dense", replacement="zero")
    try:
        channel_readers(g.gm, readers)
    except ChannelError as e:
        unit.replacement, unit.reason = "none", f"its output cannot be dropped: {e}"
    return unit


def dense_layers(g: _Graph) -> list[Unit]:
    """Dense layers: their removal drops their output from every concatenation."""
    return [u for y in g.nodes if (u := _dense_layer(g, y)) is not None]


# --- residual units -------------------------------------------------------------------------


def _span(fork: fx.Node, merge: fx.Node, order: dict[fx.Node, int]) -> list[fx.Node]:
    """Nodes on some path fork -> merge (fork excluded, merge included), in graph order."""
    lo, hi = order[fork], order[merge]
    down: set[fx.Node] = set()
    stack = [fork]
    while stack:
        for u in stack.pop().users:
            if u not in down and order[u] <= hi:
                down.add(u)
                stack.append(u)
    up: set[fx.Node] = set()
    stack = [merge]
    while stack:
        n = stack.pop()
        if n in up:
            continue
        up.add(n)
        stack.extend(p for p in value_inputs(n) if order[p] > lo)
    return sorted(down & up, key=order.__getitem__)


def _own_scope(n: fx.Node) -> list[str]:
    """The module scopes a node was traced in, without the leaf module that computes it
    (fx: the call_module's own module; export: the ReLU module an aten.relu came from)."""
    stack = module_stack(n)
    while stack and (
        _is_leaf_class(stack[-1][2]) or (n.op == "call_module" and stack[-1][1] == n.target)
    ):
        stack.pop()
    return [key for key, _, _ in stack]


def _is_leaf_class(name: str) -> bool:
    return name.startswith("torch.nn.modules.") and name not in CONTAINERS


def _ancestors_within(node: fx.Node, inside: set[fx.Node]) -> set[fx.Node]:
    """``node`` and its ancestors that lie in ``inside``."""
    out: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in inside and n not in out:
            out.add(n)
            stack.extend(n.all_input_nodes)
    return out


def _residual(g: _Graph, merge: fx.Node, claimed: set[fx.Node]) -> Unit | None:
    fork = g.idom[merge]
    if fork is None:
        return None
    span = _span(fork, merge, g.order)
    out = merge
    users = g.users(merge)
    if len(users) == 1 and is_activation(g.gm, users[0]) and _own_scope(users[0]) == scopes(merge):
        out = users[0]  # a trailing activation traced inside the same module as the add
        span = [*span, out]
    if claimed.intersection(span) or not g.closed(span, fork, out):
        return None
    inside = set(span)
    a, b = merge.args[:2]
    size = {x: len(_ancestors_within(x, inside)) if x is not fork else 0 for x in (a, b)}
    short = a if size[a] <= size[b] else b
    # A shortcut of identity or dropout modules is an identity shortcut.
    identity = short is fork or all(is_pass(g.gm, n) for n in _ancestors_within(short, inside))
    return Unit(span, fork, out, "residual", merge, short, "identity" if identity else "shortcut")


def residual_units(g: _Graph, claimed: set[fx.Node]) -> list[Unit]:
    """Residual units from their add nodes; the innermost where spans nest."""
    units = [u for n in g.nodes if is_add(n) and (u := _residual(g, n, claimed)) is not None]
    merges = {u.merge for u in units}
    return [u for u in units if not any(m in set(u.nodes) and m is not u.merge for m in merges)]


# --- chains and their groups ----------------------------------------------------------------


def _grow(
    g: _Graph, head: fx.Node, claimed: set[fx.Node], gate_at: dict[fx.Node, Gate]
) -> list[fx.Node]:
    """A convolution and the norms, activations, pass-throughs and gates that follow it."""
    chain = [head]
    while True:
        gate = gate_at.get(chain[-1])
        if gate is not None and not claimed.intersection(gate.region):
            chain += gate.region
            continue
        users = g.users(chain[-1])
        if len(users) != 1 or users[0] in claimed:
            return chain
        nxt = users[0]
        if not (is_norm(g.gm, nxt) or is_activation(g.gm, nxt) or is_pass(g.gm, nxt)):
            return chain
        chain.append(nxt)


def conv_chains(g: _Graph, claimed: set[fx.Node], gates: list[Gate]) -> list[list[fx.Node]]:
    """Conv -> norm -> activation chains outside ``claimed``; gates' convolutions start none."""
    in_gates = {n for gate in gates for n in gate.branch}
    gate_at = {gate.x: gate for gate in gates if set(g.users(gate.x)) <= set(gate.region)}
    taken = set(claimed)
    chains = []
    for n in g.nodes:
        if n in taken or n in in_gates or not is_conv(g.gm, n):
            continue
        chain = _grow(g, n, taken, gate_at)
        chains.append(chain)
        taken.update(chain)
    return chains


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def _keeps_size(n: fx.Node) -> bool:
    """An operation whose output has as many values as its first input (norm, permute, ...)."""
    inputs = value_inputs(n)
    return bool(inputs) and bool(shape_of(n)) and _numel(shape_of(n)) == _numel(shape_of(inputs[0]))


def _candidate_scopes(g: _Graph, chain: list[fx.Node]) -> list[str]:
    """Scopes holding the whole chain, innermost first, that are neither a plain container
    nor a module the graph calls as one node."""
    common = module_stack(chain[0])
    for c in chain[1:]:
        common = [a for a, b in zip(common, module_stack(c)) if a[0] == b[0]]
    return [
        key
        for key, path, cls in reversed(common)
        if cls not in CONTAINERS and not _is_leaf_class(cls) and path not in g.called
    ]


def _merges(g: _Graph, members: set[fx.Node]) -> list[fx.Node]:
    """Concatenations in ``members`` of two or more parts all computed in ``members``."""
    return [
        n
        for n in g.sort(members)
        if len(parts := cat_operands(n)) >= 2 and all(p in members for p in parts)
    ]


def _may_join(g: _Graph, n: fx.Node, merges: list[fx.Node], exit_: fx.Node) -> bool:
    """Whether ``n``, in a scope but in none of its chains, keeps the scope a unit: it
    keeps the size, or the scope joins branches and ``n`` splits or joins them or lies
    on one of them (not on every path to the exit, as a stage's pooling would)."""
    if is_conv(g.gm, n):
        return False
    if _keeps_size(n):
        return True
    return bool(merges) and (n in merges or is_split(n) or not g.dominates(n, exit_))


def _scope_span(
    g: _Graph, key: str, chain_of: dict[fx.Node, tuple[fx.Node, ...]], claimed: set[fx.Node]
) -> tuple[list[fx.Node], bool] | None:
    """The scope's nodes, and whether it joins branches, when they are whole chains plus
    operations that may join them (:func:`_may_join`), with one entry and one exit; else None."""
    members = set(g.scope_nodes.get(key, ()))
    if not members or claimed.intersection(members):
        return None
    chains = {chain_of[n] for n in members if n in chain_of}
    if not chains or any(not set(c).issubset(members) for c in chains):
        return None
    span = g.sort(members)
    entries = {p for n in span for p in g.inputs(n) if p not in members}
    exits = [n for n in span if any(u not in members for u in g.users(n))]
    if len(entries) != 1 or len(exits) != 1 or exits[0] is not span[-1]:
        return None
    merges = _merges(g, members)
    in_chains = {n for c in chains for n in c}
    if not all(_may_join(g, n, merges, span[-1]) for n in members - in_chains):
        return None
    return (span, bool(merges)) if g.closed(span, next(iter(entries)), span[-1]) else None


def _chain_unit(g: _Graph, nodes: list[fx.Node], chains: int, branches: bool) -> Unit:
    entry = next(p for n in nodes for p in g.inputs(n) if p not in set(nodes))
    if chains == 1:
        kind = "conv_bn_act"
    elif branches:
        kind = "branches"
    elif any(is_conv(g.gm, n) and is_grouped(g.gm, n) for n in nodes):
        kind = "inverted_residual"
    else:
        kind = "unit"
    return Unit(nodes, entry, nodes[-1], kind)


def _scope_for(
    g: _Graph,
    chain: list[fx.Node],
    spans: dict[str, tuple[list[fx.Node], bool] | None],
    chain_of: dict[fx.Node, tuple[fx.Node, ...]],
    claimed: set[fx.Node],
) -> tuple[list[fx.Node], bool] | None:
    """The span that groups ``chain``: the innermost scope that joins branches, else the
    innermost scope that qualifies (see the module docstring, steps 5 and 6), else None."""
    first = None
    for key in _candidate_scopes(g, chain):
        if key not in spans:
            spans[key] = _scope_span(g, key, chain_of, claimed)
        found = spans[key]
        if found is not None and not claimed.intersection(found[0]):
            if found[1]:
                return found
            first = first or found
    return first


def group_chains(g: _Graph, chains: list[list[fx.Node]], claimed: set[fx.Node]) -> list[Unit]:
    """One unit per scope that groups chains, and one per chain left alone."""
    chain_of = {n: tuple(c) for c in chains for n in c}
    spans: dict[str, tuple[list[fx.Node], bool] | None] = {}
    units: list[Unit] = []
    taken = set(claimed)  # grows as units form: no node is in two units
    for chain in chains:
        if chain[0] in taken:
            continue
        found = _scope_for(g, chain, spans, chain_of, taken)
        if found is None:
            units.append(_chain_unit(g, chain, 1, False))
            taken.update(chain)
            continue
        span, branches = found
        units.append(
            _chain_unit(g, span, len({chain_of[n] for n in span if n in chain_of}), branches)
        )
        taken.update(span)
    return units


# --- gates on unit outputs, constants, shape checks ----------------------------------------------------


def _attach_gates(g: _Graph, units: list[Unit], gates: list[Gate]) -> None:
    """A gate left outside every unit joins the unit whose output it gates."""
    inside = {n for u in units for n in u.nodes}
    by_out = {u.out: u for u in units}
    for gate in gates:
        unit = by_out.get(gate.x)
        if unit is None or inside.intersection(gate.region):
            continue
        if set(g.users(gate.x)) <= set(gate.region):
            unit.nodes += gate.region
            unit.out = gate.mul
            del by_out[gate.x]
            by_out[gate.mul] = unit


def _absorb_side(g: _Graph, units: list[Unit]) -> None:
    """Values computed from parameters alone join the unit that holds all their users;
    shape checks and asserts, the unit that holds all their inputs."""
    owner = {n: i for i, u in enumerate(units) for n in u.nodes}
    for n in reversed(g.nodes):
        owners = {owner.get(u) for u in n.users}
        if n in g.const and len(owners) == 1 and None not in owners:
            owner[n] = owners.pop()
            units[owner[n]].nodes.append(n)
    for n in g.nodes:
        if n not in g.side:
            continue
        owners = {owner.get(p) for p in value_inputs(n)}
        if len(owners) == 1 and None not in owners:
            i = owners.pop()
            owner[n] = i
            units[i].nodes.append(n)
    for u in units:
        u.nodes = g.sort(u.nodes)
