"""BN folding and the PyTorch (CPU) path of the fused conv, against PyTorch's own references."""

import os

os.environ.setdefault(
    "TRITON_INTERPRET", "1"
)  # before kernels is imported anywhere in this process

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kernels import FusedConv2d, conv2d_bias_relu, fold_conv_bn


def _random_bn(bn: nn.BatchNorm2d, seed: int = 0) -> nn.BatchNorm2d:
    """Non-trivial running statistics and affine parameters, so folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.uniform_(-1.0, 1.0, generator=g)
        bn.running_var.uniform_(0.2, 3.0, generator=g)
        if bn.affine:
            bn.weight.uniform_(0.2, 2.0, generator=g)
            bn.bias.uniform_(-1.0, 1.0, generator=g)
    return bn.eval()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("affine", [True, False])
def test_fold_matches_fuse_conv_bn_eval(bias: bool, groups: int, affine: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=bias).eval()
    bn = _random_bn(nn.BatchNorm2d(12, affine=affine, eps=1e-3))
    weight, b = fold_conv_bn(conv, bn)
    ref = fuse_conv_bn_eval(conv, bn)
    torch.testing.assert_close(weight, ref.weight.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b, ref.bias.detach(), rtol=1e-6, atol=1e-6)
    assert weight.shape == conv.weight.shape and b.shape == (12,)
    assert not weight.requires_grad and not b.requires_grad
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(
            F.conv2d(x, weight, b, 1, 1, 1, groups), bn(conv(x)), rtol=1e-5, atol=1e-5
        )


def test_fold_leaves_modules_untouched() -> None:
    conv, bn = nn.Conv2d(3, 4, 1), _random_bn(nn.BatchNorm2d(4))
    before = [t.clone() for t in (conv.weight, conv.bias, bn.running_mean, bn.running_var)]
    fold_conv_bn(conv, bn)
    after = (conv.weight, conv.bias, bn.running_mean, bn.running_var)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_fold_rejects_bn_without_running_stats() -> None:
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))


def test_fold_rejects_mismatched_channels() -> None:
    with pytest.raises(ValueError, match="features"):
        fold_conv_bn(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5))


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("groups", [1, 6])
def test_fused_module_cpu_path(activation: str | None, groups: int) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, groups=groups, bias=False).eval()
    bn = _random_bn(nn.BatchNorm2d(6))
    fused = FusedConv2d.from_conv_bn(conv, bn, activation)
    assert fused.prunerd_leaf and fused.groups == groups and fused.activation == activation
    assert fused.in_channels == 6 and fused.out_channels == 6 and fused.kernel_size == (3, 3)
    x = torch.randn(2, 6, 11, 9) * 3
    act = {None: nn.Identity(), "relu": nn.ReLU(), "relu6": nn.ReLU6()}[activation]
    with torch.no_grad():
        torch.testing.assert_close(fused(x), act(bn(conv(x))), rtol=1e-5, atol=1e-5)


def test_conv2d_bias_relu_torch_backend_and_flags() -> None:
    torch.manual_seed(2)
    x, w, b = torch.randn(1, 3, 6, 6), torch.randn(5, 3, 3, 3), torch.randn(5)
    ref = F.conv2d(x, w, b, 1, 1)
    torch.testing.assert_close(conv2d_bias_relu(x, w, b, padding=1), F.relu(ref))
    torch.testing.assert_close(conv2d_bias_relu(x, w, b, padding=1, relu=False), ref)
    torch.testing.assert_close(
        conv2d_bias_relu(x, w, b, padding=1, activation="relu6", backend="torch"), ref.clamp(0, 6)
    )
    with pytest.raises(ValueError, match="backend"):
        conv2d_bias_relu(x, w, b, backend="cuda")
    with pytest.raises(ValueError, match="activation"):
        conv2d_bias_relu(x, w, b, activation="gelu")


def test_cpu_path_supports_autograd() -> None:
    # In-place ReLU on the fresh conv output must not break backward.
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    conv2d_bias_relu(x, w, b, padding=1).sum().backward()
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.relu(F.conv2d(xr, wr, br, padding=1)).sum().backward()
    for got, want in ((x, xr), (w, wr), (b, br)):
        torch.testing.assert_close(got.grad, want.grad)
