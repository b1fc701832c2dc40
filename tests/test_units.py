"""Units of the standard families (torchvision layouts, rebuilt in tests/models_for_tests.py):
one unit per residual block, MBConv, ConvNeXt block, dense layer, VGG conv, Inception
module, Fire module and ShuffleNet unit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from profiler import discover
from profiler.channels import ChannelError, channel_readers
from profiler.gates import find_gates

from .models_for_tests import (
    ConvNeXtLike,
    DenseNetLike,
    EfficientNetLike,
    GhostNetLike,
    GoogLeNetLike,
    MobileNetV3Like,
    RegNetLike,
    Res2NetLike,
    ResNetLike,
    ShuffleNetLike,
    SqueezeNetLike,
    VGGLike,
)
from .pieces import run_pieces

STEM = ("conv_bn_act", "none")
FAMILIES: dict[type[nn.Module], list[tuple[str, str, str]]] = {
    # (name, kind, replacement) of every unit, in network order
    EfficientNetLike: [
        ("features.0", *STEM),
        ("features.1.0", "inverted_residual", "adapter"),  # MBConv without shortcut, with SE
        ("features.2.0", "residual", "identity"),
        ("features.2.1", "inverted_residual", "none"),  # strided
        ("features.3", "conv_bn_act", "adapter"),
    ],
    MobileNetV3Like: [
        ("features.0", *STEM),
        ("features.1", "residual", "identity"),  # hard-sigmoid SE, no expansion conv
        ("features.2", "inverted_residual", "adapter"),  # no SE, no shortcut
        ("features.3", "residual", "identity"),
        ("features.4", "conv_bn_act", "adapter"),
    ],
    ResNetLike: [
        ("conv1", *STEM),
        ("layer1.0", "residual", "shortcut"),
        ("layer1.1", "residual", "identity"),
        ("layer2.0", "residual", "shortcut"),  # ResNeXt: grouped 3x3
        ("layer2.1", "residual", "identity"),
    ],
    RegNetLike: [
        ("stem", *STEM),
        ("trunk_output.0.0", "residual", "shortcut"),
        ("trunk_output.0.1", "residual", "identity"),
        ("trunk_output.1.0", "residual", "shortcut"),
        ("trunk_output.1.1", "residual", "identity"),
    ],
    ConvNeXtLike: [
        ("features.0.0", *STEM),  # a Sequential subclass is a container: named for its conv
        ("features.1.0", "residual", "identity"),
        ("features.1.1", "residual", "identity"),
        ("features.2.1", "conv_bn_act", "none"),  # downsampling conv
        ("features.3.0", "residual", "identity"),
    ],
    DenseNetLike: [
        ("features.conv0", *STEM),
        *[(f"features.denseblock1.denselayer{i}", "dense", "zero") for i in (1, 2, 3)],
        ("features.transition1.conv", "conv_bn_act", "adapter"),
        *[(f"features.denseblock2.denselayer{i}", "dense", "zero") for i in (1, 2)],
    ],
    VGGLike: [
        ("features.0", *STEM),
        ("features.3", "conv_bn_act", "identity"),
        ("features.7", "conv_bn_act", "adapter"),
        ("features.10", "conv_bn_act", "identity"),
    ],
    Res2NetLike: [
        ("conv1", *STEM),
        ("layer1.0", "residual", "shortcut"),  # split, a conv per piece, pool, concatenate
        ("layer1.1", "residual", "identity"),  # and each conv fed the previous one's output
    ],
    GhostNetLike: [
        ("conv_stem", *STEM),
        ("blocks.0", "residual", "identity"),  # two ghost modules: concatenate, then slice
        ("blocks.1", "residual", "shortcut"),
    ],
    GoogLeNetLike: [
        ("conv1", *STEM),
        ("inception_a", "branches", "adapter"),  # each branch a module of its own, one a pool
        ("inception_b", "branches", "identity"),
        ("reduce", "branches", "none"),  # strided branches and a strided pool
    ],
    SqueezeNetLike: [
        ("features.0", *STEM),
        ("features.3", "branches", "identity"),  # Fire: squeeze, then two expands joined
        ("features.4", "branches", "adapter"),
        ("classifier.1", "conv_bn_act", "adapter"),
    ],
    ShuffleNetLike: [
        ("conv1", *STEM),
        ("stage2.0", "branches", "none"),  # strided: both branches read the input
        ("stage2.1", "branches", "identity"),  # chunk, one half transformed, cat, shuffle
        ("stage2.2", "branches", "identity"),
        ("conv5", "conv_bn_act", "adapter"),
    ],
}
SE_FAMILIES = {EfficientNetLike: 3, MobileNetV3Like: 2, RegNetLike: 4}


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # non-trivial norm statistics, so outputs depend on them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _discover(cls: type[nn.Module], x: torch.Tensor | None = None):
    model = _model(cls)
    return model, discover(model, torch.randn(2, 3, 16, 16) if x is None else x)


@pytest.mark.parametrize("cls", list(FAMILIES), ids=lambda c: c.__name__)
def test_one_unit_per_block_of_each_family(cls: type[nn.Module]) -> None:
    _, bg = _discover(cls)
    assert [(b.name, b.kind, b.replacement) for b in bg.blocks] == FAMILIES[cls]
    for b in bg.blocks:
        assert b.removable == (b.replacement != "none")
        assert b.removable or b.reason
        assert b.flops > 0 and b.params > 0


@pytest.mark.parametrize("cls", list(FAMILIES), ids=lambda c: c.__name__)
def test_pieces_reproduce_each_family(cls: type[nn.Module]) -> None:
    model, bg = _discover(cls)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(run_pieces(bg, x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "cls", [GoogLeNetLike, SqueezeNetLike, ShuffleNetLike], ids=lambda c: c.__name__
)
def test_units_joining_branches_from_a_torch_export_program(cls: type[nn.Module], tmp_path) -> None:
    """The ATen graph of a .pt2 (split, cat, view and transpose as aten operators) gives
    the same units as the fx graph of the module."""
    from profiler import load_model

    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(_model(cls), (x,)), str(path))
    bg = discover(load_model(str(path)), x)
    assert [(b.name, b.kind, b.replacement) for b in bg.blocks] == FAMILIES[cls]


@pytest.mark.parametrize("cls", list(SE_FAMILIES), ids=lambda c: c.__name__)
def test_gates_live_inside_the_unit_that_produces_their_input(cls: type[nn.Module]) -> None:
    _, bg = _discover(cls)
    gates = find_gates(bg.gm, {n: i for i, n in enumerate(bg.gm.graph.nodes)})
    assert len(gates) == SE_FAMILIES[cls]
    owner = {n: b.name for b in bg.blocks for n in b.nodes}
    for gate in gates:
        # The branch, the multiply and the tensor it gates are in one unit.
        units = {owner.get(n.name) for n in (gate.x, gate.mul, *gate.branch)}
        assert len(units) == 1 and None not in units
        convs = [n for n in gate.branch if n.op == "call_module" and "fc" in str(n.target)]
        assert len(convs) == 2
    assert not any(".fc" in b.name or "se" in b.name.split(".") for b in bg.blocks)


def test_a_multiply_by_another_tensor_is_not_a_gate() -> None:
    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # The multiplier is pooled from another branch, not from the tensor it scales.
            return self.c(self.a(x) * torch.sigmoid(F.adaptive_avg_pool2d(self.b(x), 1)))

    bg = discover(Attend().eval(), torch.randn(1, 3, 8, 8))
    assert find_gates(bg.gm, {n: i for i, n in enumerate(bg.gm.graph.nodes)}) == []
    assert [b.name for b in bg.blocks] == ["a", "b", "c"]


def test_dense_layers_read_a_concatenation_and_write_their_growth() -> None:
    _, bg = _discover(DenseNetLike)
    dense = [b for b in bg.blocks if b.kind == "dense"]
    assert [b.input_shape[1] for b in dense] == [16, 24, 32, 20, 28]
    assert all(b.output_shape[1] == 8 for b in dense)
    # Each layer holds its own concatenation, its two norms and its two convs.
    layer = bg.blocks[2]
    assert sum("cat" in n for n in layer.nodes) == 1
    assert sum("conv" in n for n in layer.nodes) == 2
    # Its output goes into every later concatenation of its block, then to the transition.
    readers = channel_readers(bg.gm, list(bg.node(layer.output_node).users))
    assert [n.target for n in readers.mixing] == [
        "features.denseblock1.denselayer3.conv1",
        "features.transition1.conv",
    ]
    assert len(readers.concats) == 2 and len(readers.per_channel) == 2


class GrowingDense(nn.Module):
    """Dense layers written as ``x = cat([x, layer(x)])``; the last concatenation is the output."""

    def __init__(self, head: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(8 + 4 * i), nn.ReLU(), nn.Conv2d(8 + 4 * i, 4, 3, padding=1)
            )
            for i in range(2)
        )
        self.head = nn.Conv2d(16, 5, 1) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.head(x) if self.head is not None else x


def test_dense_layers_written_as_a_growing_concatenation() -> None:
    bg = discover(GrowingDense().eval(), torch.randn(1, 3, 8, 8))
    assert [(b.kind, b.replacement, b.input_shape[1]) for b in bg.blocks] == [
        ("conv_bn_act", "none", 3),
        ("dense", "zero", 8),
        ("dense", "zero", 12),
        ("conv_bn_act", "adapter", 16),
    ]


def test_a_dense_layer_whose_output_leaves_the_model_is_not_removable() -> None:
    bg = discover(GrowingDense(head=False).eval(), torch.randn(1, 3, 8, 8))
    dense = [b for b in bg.blocks if b.kind == "dense"]
    assert [b.replacement for b in dense] == ["none", "none"]
    assert all("model's output" in b.reason for b in dense)
    with pytest.raises(ChannelError, match="model's output"):
        channel_readers(bg.gm, list(bg.node(dense[0].output_node).users))


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Stage(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = ConvBlock(c, c), ConvBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_a_stage_of_user_blocks_is_one_unit_per_block() -> None:
    """Chains group by the innermost module that holds them: each ConvBlock, not the stage."""
    model = nn.Sequential(ConvBlock(3, 8), Stage(8))
    bg = discover(model.eval(), torch.randn(1, 3, 8, 8))
    assert [(b.name, b.kind) for b in bg.blocks] == [
        ("0", "conv_bn_act"),
        ("1.a", "conv_bn_act"),
        ("1.b", "conv_bn_act"),
    ]


class StageWithOwnConv(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = ConvBlock(c, c)
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(self.a(x))))


def test_a_scope_already_holding_a_unit_groups_no_more() -> None:
    """A stage with a ConvBlock and a conv of its own: two units, no node in both (the
    stage's scope, which holds the ConvBlock's nodes too, is not a unit)."""
    bg = discover(
        nn.Sequential(ConvBlock(3, 8), StageWithOwnConv(8)).eval(), torch.randn(1, 3, 8, 8)
    )
    assert [(b.name, b.kind) for b in bg.blocks] == [
        ("0", "conv_bn_act"),
        ("1.a", "conv_bn_act"),
        ("1.conv", "conv_bn_act"),
    ]
    nodes = [n for b in bg.blocks for n in b.nodes]
    assert len(nodes) == len(set(nodes))


class Checked(nn.Module):
    """A block that checks its input's channels first (timm's BatchNorm does, in DPN)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = ConvBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[1] == 20, "expected 20 channels")
        return self.conv(x)


def test_a_unit_is_named_for_its_module_when_the_next_one_checks_its_output() -> None:
    """The check is a node of the unit whose output it reads, traced in the next module."""
    from .models_for_tests import BasicConv2d, Inception

    model = nn.Sequential(BasicConv2d(3, 8, 3, padding=1), Inception(8, 4, 4, 8, 2, 4, 4),
                          Checked(20))  # fmt: skip
    bg = discover(model.eval(), torch.randn(1, 3, 8, 8))
    assert [(b.name, b.kind) for b in bg.blocks] == [
        ("0", "conv_bn_act"),
        ("1", "branches"),
        ("2", "conv_bn_act"),
    ]


class Towers(nn.Module):
    """A stage of ConvBlocks with a pooling every path runs through, then two branches."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.left, self.right = ConvBlock(c, c), ConvBlock(c, c), ConvBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.a(x), 2)
        return torch.cat([self.left(x), self.right(x)], 1)


def test_a_size_change_on_every_path_keeps_a_scope_from_joining_its_branches() -> None:
    bg = discover(nn.Sequential(ConvBlock(3, 8), Towers(8)).eval(), torch.randn(1, 3, 8, 8))
    assert [b.name for b in bg.blocks] == ["0", "1.a", "1.left", "1.right"]


class ClassicSE(nn.Module):
    """The common hand-written squeeze-excitation: linear layers on the pooled vector, its
    shape read from the input, ``x * y.expand_as(x)``."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class ClassicSEBlock(nn.Module):
    """Depthwise conv, BN, ReLU, classic SE, then a 1x1 projection; no shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.se = ClassicSE(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.pw(self.se(F.relu(self.bn1(self.dw(x))))))


def test_a_gate_that_reads_its_input_shape_is_still_a_gate() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ClassicSEBlock(8, 16)).eval()
    x = torch.randn(2, 3, 8, 8)
    bg = discover(model, x)
    assert [(b.name, b.kind, b.replacement) for b in bg.blocks] == [
        ("0", "conv_bn_act", "none"),
        ("1", "inverted_residual", "adapter"),
    ]
    with torch.no_grad():
        torch.testing.assert_close(run_pieces(bg, x), model(x))
