"""kernels.fuse on the model zoo and on hand-made graphs with the edge cases fusion must respect."""

import os

os.environ.setdefault(
    "TRITON_INTERPRET", "1"
)  # before kernels is imported anywhere in this process

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from kernels import FusedConv2d, fuse
from kernels.fuse import LeafTracer, count_fused
from profiler import load_model

# model -> (fused convs, of which with ReLU, with ReLU6); every conv in the zoo is followed by BN.
ZOO = {
    "resnet20": (21, 10, 0),
    "resnet56": (57, 28, 0),
    "vgg16": (13, 13, 0),
    "mobilenetv2": (52, 0, 35),
}


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BNs fold to identity scale; random statistics make the check meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
    return model


def _acts(model: nn.Module) -> list[str | None]:
    return [m.activation for m in model.modules() if isinstance(m, FusedConv2d)]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_fuse_zoo_model(name: str) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(load_model(name, in_channels=3, num_classes=10))
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    fused = fuse(model)

    assert isinstance(fused, fx.GraphModule) and not fused.training
    n_fused, n_relu, n_relu6 = ZOO[name]
    assert count_fused(fused) == n_fused == n_convs
    acts = _acts(fused)
    assert acts.count("relu") == n_relu and acts.count("relu6") == n_relu6
    assert not any(isinstance(m, nn.BatchNorm2d | nn.Conv2d) for m in fused.modules())
    # The original keeps its modules.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_convs

    for shape in ((1, 3, 32, 32), (4, 3, 16, 16)):
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)

    # Traced again with leaf-aware tracing: one call_module node per fused conv.
    graph = LeafTracer().trace(fused)
    fused_nodes = [
        n
        for n in graph.nodes
        if n.op == "call_module" and isinstance(fused.get_submodule(n.target), FusedConv2d)
    ]
    assert len(fused_nodes) == n_fused
    # Plain fx tracing also works: the functional is wrapped, so it is not traced into.
    plain = fx.symbolic_trace(fused)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), fused(x))


class Functional(nn.Module):
    """Functional and method activations, a BN with two users, and a conv not followed by BN."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.c4, self.b4 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.c5 = nn.Conv2d(8, 8, 1)  # no BN: stays a Conv2d
        self.c6, self.b6 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)), inplace=True)
        x = torch.relu(self.b2(self.c2(x)))
        y = self.b3(self.c3(x))
        x = F.relu6(y) + y  # BN output with two users: fold BN, keep the activation apart
        x = self.b4(self.c4(x)).relu()
        x = self.c5(x)
        c = self.c6(x)
        return F.relu(self.b6(c)) + c  # conv output with two users: not fused at all


def test_fuse_functional_graph() -> None:
    torch.manual_seed(0)
    model = _randomise_bn(Functional()).train()  # fuse must switch to eval by itself
    fused = fuse(model)
    assert model.training, "the original must be left alone"
    assert count_fused(fused) == 4
    assert _acts(fused) == ["relu", "relu", None, "relu"]
    assert isinstance(fused.c5, nn.Conv2d) and isinstance(fused.c6, nn.Conv2d)
    assert isinstance(fused.b6, nn.BatchNorm2d) and not hasattr(fused, "b1")
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_fuse_twice_is_stable() -> None:
    model = _randomise_bn(load_model("resnet20", in_channels=3, num_classes=10))
    once = fuse(model)
    twice = fuse(once)
    assert count_fused(twice) == count_fused(once)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(twice(x), once(x))


def test_fuse_keeps_parameter_dtype() -> None:
    # Folding computes in float64 and casts back, so a float64 model stays float64 end to end.
    model = _randomise_bn(load_model("resnet20", in_channels=3, num_classes=10)).double()
    fused = fuse(model)
    assert all(
        m.weight.dtype == torch.float64 for m in fused.modules() if isinstance(m, FusedConv2d)
    )
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-10, atol=1e-12)
