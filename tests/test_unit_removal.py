"""Removing each unit of the standard families by its replacement: the pruned model runs,
has the right output shape and, for identity, shortcut and zero contribution, computes
exactly what the unpruned graph computes without that unit's contribution."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
from torch import nn

from profiler import Block, BlockGraph, discover, load_model
from pruner.depth import SurgeryError, remove_blocks

from .models_for_tests import DenseNetLike
from .test_units import FAMILIES, GrowingDense, _model

X = torch.randn(2, 3, 16, 16)


def _without_branch(gm: fx.GraphModule, merge: str, shortcut: str) -> fx.GraphModule:
    """A copy of ``gm`` whose residual merge adds zeros instead of the branch."""
    ref = copy.deepcopy(gm)
    node = next(n for n in ref.graph.nodes if n.name == merge)
    branch = next(a for a in node.args[:2] if isinstance(a, fx.Node) and a.name != shortcut)
    with ref.graph.inserting_before(node):
        zeros = ref.graph.call_function(torch.zeros_like, (branch,))
    node.replace_input_with(branch, zeros)
    ref.recompile()
    return ref


def _shortcut_side(bg: BlockGraph, block: Block) -> set[str]:
    """The nodes of a residual unit that its shortcut replacement keeps: the shortcut
    projection and what follows the merge."""
    inside, keep, stack = set(block.nodes), set(), [bg.node(block.shortcut_node)]
    while stack:
        n = stack.pop()
        if n.name in inside and n.name not in keep:
            keep.add(n.name)
            stack.extend(n.all_input_nodes)
    return keep | set(block.nodes[block.nodes.index(block.merge_node) + 1 :])


@pytest.mark.parametrize("cls", list(FAMILIES), ids=lambda c: c.__name__)
def test_every_removable_unit_is_replaced_by_what_it_says(cls: type[nn.Module]) -> None:
    names = [b.name for b in discover(_model(cls), X).blocks if b.removable]
    assert names
    for name in names:
        bg = discover(_model(cls), X)  # surgery edits the graph: a fresh one per unit
        block = next(b for b in bg.blocks if b.name == name)
        ref = (
            _without_branch(bg.gm, block.merge_node, block.shortcut_node)
            if block.kind == "residual"
            else None
        )
        may_stay = _shortcut_side(bg, block) if block.replacement == "shortcut" else set()
        pruned = remove_blocks(bg.gm, [block])
        left = {n.name for n in pruned.graph.nodes}
        with torch.no_grad():
            out = pruned(X)
            assert out.shape == (2, 10) and torch.isfinite(out).all()
            if ref is not None:  # identity or shortcut: the branch adds nothing
                torch.testing.assert_close(out, ref(X))
        if block.replacement in ("identity", "shortcut", "zero"):
            assert left.intersection(block.nodes) <= may_stay


def _zero_columns(model: DenseNetLike, block: int, layer: int, growth: int = 8) -> None:
    """Zero the weights that read one dense layer's channels, by hand: after block 1 they
    sit at 16 + 8 (i - 1) in later layers' and the transition's input, after block 2 at
    20 + 8 (i - 1) in later layers' and the classifier's."""
    start = (16 if block == 1 else 20) + growth * (layer - 1)
    cols = slice(start, start + growth)
    dense = getattr(model.features, f"denseblock{block}")
    readers = [getattr(dense, f"denselayer{i}").conv1 for i in range(layer + 1, len(dense) + 1)]
    readers.append(model.features.transition1.conv if block == 1 else model.classifier)
    with torch.no_grad():
        for m in readers:
            m.weight[:, cols] = 0


DENSE = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
SUBSETS = [[d for k, d in enumerate(DENSE) if mask >> k & 1] for mask in range(1, 2 ** len(DENSE))]


@pytest.mark.parametrize("removed", SUBSETS, ids=str)
def test_zero_contribution_drops_the_channels_physically(removed: list[tuple[int, int]]) -> None:
    model = _model(DenseNetLike)
    bg = discover(copy.deepcopy(model), X)
    names = {f"features.denseblock{b}.denselayer{i}" for b, i in removed}
    pruned = remove_blocks(bg.gm, [b for b in bg.blocks if b.name in names])
    for b, i in removed:
        _zero_columns(model, b, i)
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), model(X))
    state = pruned.state_dict()
    assert not any(k.startswith(tuple(n + "." for n in names)) for k in state)
    lost1 = 8 * sum(b == 1 for b, _ in removed)
    lost2 = 8 * sum(b == 2 for b, _ in removed)
    assert state["features.transition1.conv.weight"].shape[1] == 40 - lost1
    assert state["features.transition1.norm.running_mean"].shape == (40 - lost1,)
    assert state["features.norm5.weight"].shape == (36 - lost2,)
    assert state["classifier.weight"].shape == (10, 36 - lost2)


def test_a_dense_layer_that_cannot_drop_its_channels_is_refused() -> None:
    bg = discover(GrowingDense(head=False).eval(), torch.randn(1, 3, 8, 8))
    with pytest.raises(SurgeryError, match="model's output"):
        remove_blocks(bg.gm, [b for b in bg.blocks if b.kind == "dense"][:1])


def test_zero_contribution_on_a_torch_export_program(tmp_path) -> None:
    """A .pt2 file is a graph of ATen operators (functional convs, flatten); dense layers
    are dropped from it as from the traced model."""
    model = _model(DenseNetLike)
    path = tmp_path / "densenet.pt2"
    torch.export.save(torch.export.export(model, (X[:1],)), str(path))
    names = {"features.denseblock1.denselayer2", "features.denseblock2.denselayer1"}
    pruned = []
    for m in (copy.deepcopy(model), load_model(str(path))):
        bg = discover(m, X[:1])
        assert [b.replacement for b in bg.blocks if b.kind == "dense"] == ["zero"] * 5
        pruned.append(remove_blocks(bg.gm, [b for b in bg.blocks if b.name in names]))
    with torch.no_grad():
        out = pruned[1](X[:1])
        out = out[0] if isinstance(out, (tuple, list)) else out
        torch.testing.assert_close(out, pruned[0](X[:1]))
