"""Fused deploy-time kernels: BN folding, a Triton Conv-BN-ReLU kernel, model fusion."""

from .conv_bn_relu import FusedConv2d, conv2d_bias_relu, conv2d_triton
from .fold import fold_conv_bn
from .fuse import fuse

__all__ = ["FusedConv2d", "conv2d_bias_relu", "conv2d_triton", "fold_conv_bn", "fuse"]
