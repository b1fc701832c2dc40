"""Fused deploy-time kernels: BN folding, a Triton Conv-BN-ReLU kernel, model fusion."""

from .conv_bn_relu import (
    FusedConv2d,
    TuningStats,
    conv2d_bias_relu,
    conv2d_triton,
    lay_out_weight,
    tuning_stats,
)
from .fold import fold_conv_bn
from .fuse import fuse
from .gpu_timing import eager_seconds, graph_seconds, host_seconds

__all__ = [
    "FusedConv2d",
    "conv2d_bias_relu",
    "conv2d_triton",
    "eager_seconds",
    "fold_conv_bn",
    "fuse",
    "graph_seconds",
    "host_seconds",
    "lay_out_weight",
    "TuningStats",
    "tuning_stats",
]
