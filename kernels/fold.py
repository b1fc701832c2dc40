"""Exact eval-mode folding of BatchNorm2d into the convolution before it."""

from __future__ import annotations

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight, bias) of one conv equal to ``bn(conv(x))`` with BN in eval mode.

    With s = gamma / sqrt(running_var + eps) per output channel:
    weight' = weight * s (broadcast over (Cout, Cin/groups, KH, KW)) and
    bias' = (bias - running_mean) * s + beta, shape (Cout,). The arithmetic runs
    in float64 and is cast back to the conv's dtype, so the result is at least
    as accurate as ``torch.nn.utils.fusion.fuse_conv_bn_eval``. Both tensors are
    new and detached; the modules are not modified.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "BatchNorm without running statistics (track_running_stats=False) cannot be folded"
        )
    w = conv.weight.detach()
    cout = w.shape[0]
    if bn.num_features != cout:
        raise ValueError(
            f"BatchNorm has {bn.num_features} features, conv has {cout} output channels"
        )
    f64 = torch.float64
    mean = bn.running_mean.detach().to(f64)
    var = bn.running_var.detach().to(f64)
    gamma = bn.weight.detach().to(f64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(f64) if bn.bias is not None else torch.zeros_like(mean)
    b = conv.bias.detach().to(f64) if conv.bias is not None else torch.zeros_like(mean)
    scale = gamma * torch.rsqrt(var + bn.eps)
    weight = (w.to(f64) * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
    bias = ((b - mean) * scale + beta).to(w.dtype)
    return weight, bias
