"""Block discovery on the zoo and on models prunerd has never seen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from profiler import ModelSpecError, TraceError, discover, load_model
from profiler.blocks import count_ops

from .models_for_tests import InlineResidualNet, SENet, Untraceable
from .pieces import run_pieces

ZOO_EXPECTED = {
    # name: (blocks, residual units, shortcut replacements, removable)
    "resnet20": (10, 9, 2, 9),
    "resnet56": (28, 27, 2, 27),
    "vgg16": (13, 0, 0, 12),
    "mobilenetv2": (19, 10, 0, 15),
}


def _discover(model: nn.Module, shape: tuple[int, ...] = (1, 3, 32, 32)):
    torch.manual_seed(0)
    return discover(model.eval(), torch.randn(shape))


@pytest.mark.parametrize("name", sorted(ZOO_EXPECTED))
def test_zoo_blocks(name: str) -> None:
    bg = _discover(load_model(name))
    n_blocks, n_residual, n_shortcut, n_removable = ZOO_EXPECTED[name]
    assert len(bg.blocks) == n_blocks
    assert sum(b.kind == "residual" for b in bg.blocks) == n_residual
    assert sum(b.replacement == "shortcut" for b in bg.blocks) == n_shortcut
    assert sum(b.removable for b in bg.blocks) == n_removable
    # The first block reads the network input: never removable.
    assert not bg.blocks[0].removable and "stem" in bg.blocks[0].reason
    # Every block has shapes, a signature and a positive cost; stages are ordered.
    stages = [b.stage for b in bg.blocks]
    assert stages == sorted(stages)
    for b in bg.blocks:
        assert len(b.input_shape) == 4 and len(b.output_shape) == 4
        assert b.flops > 0 and b.macs > 0 and b.params > 0 and len(b.signature) == 32
        if b.replacement == "identity":
            assert b.input_shape == b.output_shape
        if not b.removable:
            assert b.reason
    # Blocks and rest cover every computing node exactly once.
    covered = [n for b in bg.blocks for n in b.nodes if bg.node(n).op != "get_attr"]
    covered += [n for r in bg.rest for n in r if bg.node(n).op != "get_attr"]
    computing = [
        n.name for n in bg.gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")
    ]
    assert sorted(covered) == sorted(computing)


def test_resnet_names_and_shortcuts() -> None:
    bg = _discover(load_model("resnet20"))
    names = [b.name for b in bg.blocks]
    assert names == ["conv1"] + [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    down = next(b for b in bg.blocks if b.name == "layer2.0")
    assert (
        down.replacement == "shortcut"
        and down.input_shape[1:] == (16, 32, 32)
        and down.output_shape[1:] == (32, 16, 16)
    )
    assert "shortcut" in down.shortcut_node
    same = next(b for b in bg.blocks if b.name == "layer2.1")
    assert same.replacement == "identity" and same.shortcut_node == same.input_node


def test_mobilenetv2_units() -> None:
    bg = _discover(load_model("mobilenetv2"))
    kinds = {b.name: b.kind for b in bg.blocks}
    assert kinds["features.0"] == "inverted_residual"  # no shortcut: grouped from its chains
    assert kinds["features.2"] == "residual"
    assert kinds["stem"] == "conv_bn_act"  # a Sequential is not a unit of its own
    strided = next(b for b in bg.blocks if b.name == "features.3")
    assert not strided.removable and "spatial" in strided.reason
    assert next(b for b in bg.blocks if b.name == "features.1").replacement == "adapter"


ADAPTERS_END_IN = {
    # model: {adapter block: the activation its adapter ends in}
    "vgg16": {"features.7": "relu", "features.14": "relu", "features.24": "relu"},
    # inverted residuals end in a BatchNorm (a linear bottleneck); the head in ReLU6
    "mobilenetv2": {
        "features.0": "",
        "features.1": "",
        "features.10": "",
        "features.16": "",
        "head": "relu6",
    },  # fmt: skip
    # concatenations of ReLU'd branches
    "tests.models_for_tests:GoogLeNetLike": {"inception_a": "relu"},
    "tests.models_for_tests:SqueezeNetLike": {"features.4": "relu", "classifier.1": "relu"},
}


@pytest.mark.parametrize("name", sorted(ADAPTERS_END_IN))
def test_adapters_end_in_the_activation_their_block_ends_in(name: str) -> None:
    bg = _discover(load_model(name), (1, 3, 16, 16))
    adapters = {b.name: b for b in bg.blocks if b.replacement == "adapter"}
    assert {n: b.adapter_activation for n, b in adapters.items()} == ADAPTERS_END_IN[name]
    # What the profile times in an adapter's place is what surgery puts there.
    for block in adapters.values():
        stand_in, _ = bg.replacement(block)
        ends = [type(m).__name__ for m in stand_in.modules() if not list(m.children())]
        tail = {"relu": ["ReLU"], "relu6": ["ReLU6"], "": []}[block.adapter_activation]
        assert ends == ["Conv2d", *tail]


@pytest.mark.parametrize("name", sorted(ZOO_EXPECTED))
def test_pieces_reproduce_the_model(name: str) -> None:
    """Cutting the graph into blocks and rest loses nothing: chained pieces equal the model."""
    model = load_model(name)
    x = torch.randn(2, 3, 8, 8)
    bg = discover(model, x)
    with torch.no_grad():
        torch.testing.assert_close(run_pieces(bg, x), model(x), rtol=1e-4, atol=1e-5)


def test_inline_residuals_found_from_add_nodes() -> None:
    model = InlineResidualNet()
    bg = _discover(model)
    residual = [b for b in bg.blocks if b.kind == "residual"]
    assert len(residual) == 3
    # Written inline in the parent: named after their output node, not a module.
    assert [b.output_node for b in residual] == [b.name for b in residual]
    # The trailing functional ReLU belongs to the first unit only (traced at the same level).
    assert bg.node(residual[0].output_node).target is torch.nn.functional.relu
    assert all(b.replacement == "identity" for b in residual)
    kinds = [b.kind for b in bg.blocks]
    assert kinds == ["conv_bn_act", "residual", "residual", "conv_bn_act", "residual"]
    down = bg.blocks[3]
    assert not down.removable and "spatial" in down.reason
    x = torch.randn(2, 3, 32, 32)
    bg = discover(model, x)
    with torch.no_grad():
        torch.testing.assert_close(run_pieces(bg, x), model(x))


def test_squeeze_excitation_stays_inside_its_unit() -> None:
    model = SENet()
    bg = _discover(model)
    names = [b.name for b in bg.blocks]
    assert names == ["stem", "units.0", "units.1", "units.2"]
    for b in bg.blocks[1:]:
        assert b.kind == "residual"
        assert any("se_fc1" in n for n in b.nodes) and any("sigmoid" in n for n in b.nodes)
    assert [b.replacement for b in bg.blocks[1:]] == ["identity", "shortcut", "identity"]
    x = torch.randn(2, 3, 32, 32)
    bg = discover(model, x)
    with torch.no_grad():
        torch.testing.assert_close(run_pieces(bg, x), model(x))


def test_replacements_run_on_the_block_input() -> None:
    for model in (load_model("resnet20"), load_model("mobilenetv2"), SENet()):
        x = torch.randn(1, 3, 16, 16)
        bg = discover(model, x)
        for b in bg.blocks:
            if not b.removable:
                continue
            module, inputs = bg.replacement(b)
            if module is None:
                assert b.replacement == "identity"
                continue
            with torch.no_grad():
                out = module(torch.randn(b.input_shape))
            assert tuple(out.shape) == b.output_shape


def test_flops_match_an_independent_count() -> None:
    """Conv and linear MACs from the graph equal those counted with forward hooks."""
    model = load_model("resnet20")
    x = torch.randn(1, 3, 32, 32)
    hooked = 0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal hooked
        if isinstance(m, nn.Conv2d):
            hooked += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            hooked += out.numel() * m.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    bg = discover(model, x)
    _, macs, params = count_ops(bg.gm, list(bg.gm.graph.nodes))
    assert macs == hooked
    assert params == sum(p.numel() for p in model.parameters())


def test_untraceable_model_names_the_module() -> None:
    with pytest.raises(TraceError, match=r"'gate' \(Gate\)") as err:
        _discover(Untraceable())
    assert "prunerd_leaf" in str(err.value)


def test_leaf_marker_makes_it_traceable() -> None:
    model = Untraceable()
    model.gate.prunerd_leaf = True
    bg = _discover(model)
    assert any(n.op == "call_module" and n.target == "gate" for n in bg.gm.graph.nodes)


def test_bad_input_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"input of shape \[\(1, 1, 32, 32\)\].*--in-channels"):
        _discover(load_model("resnet20"), (1, 1, 32, 32))


def test_bad_model_specs() -> None:
    with pytest.raises(ModelSpecError, match="not a built-in"):
        load_model("resnet21")
    with pytest.raises(ModelSpecError, match="cannot import module 'no_such_pkg.models'"):
        load_model("no_such_pkg.models:net")
    with pytest.raises(ModelSpecError, match="has no attribute 'nothing'"):
        load_model("tests.models_for_tests:nothing")
    with pytest.raises(ModelSpecError, match="in_channels and num_classes must be >= 1"):
        load_model("resnet20", in_channels=0)


def test_module_callable_spec() -> None:
    model = load_model("tests.models_for_tests:senet", in_channels=1, num_classes=7)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_torch_export_programs_have_the_same_blocks(name: str, tmp_path) -> None:
    """A .pt2 file is a graph of ATen operators; discovery finds the same blocks in it."""
    model = load_model(name)
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / f"{name}.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    exported = load_model(str(path))
    eager, aten = discover(model, x), discover(exported, x)
    assert [(b.name, b.kind, b.replacement, b.macs, b.params, b.stage) for b in aten.blocks] == [
        (b.name, b.kind, b.replacement, b.macs, b.params, b.stage) for b in eager.blocks
    ]
    with torch.no_grad():
        torch.testing.assert_close(run_pieces(aten, x), model(x), rtol=1e-4, atol=1e-5)


def test_discovery_leaves_a_training_model_and_its_bn_statistics_alone() -> None:
    """Shapes come from an eval-mode run: no BN update, and 1x1 features at batch 1 are fine."""
    from profiler import ModelSpec, build_model

    model = build_model(ModelSpec("mobilenetv2", 3, 10, (8, 8))).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bg = discover(model, torch.randn(1, 3, 8, 8))  # the last features are 1x1
    assert bg.blocks and model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_torch_free_model_names_are_the_zoos() -> None:
    """The daemon checks requests against profiler.builtin_models() without importing the zoo
    (and torch); a model registered but not named there is refused at import."""
    from profiler import builtin_models
    from profiler.zoo import ZOO, register

    assert builtin_models() == sorted(ZOO) == sorted(ZOO_EXPECTED)
    with pytest.raises(ValueError, match="must be listed in model_names.BUILTIN_MODELS"):
        register("resnet1001")
