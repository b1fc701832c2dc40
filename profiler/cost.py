"""What a model costs without running it on the clock: FLOPs, MACs and parameters per image."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import count_ops, discover
from .models import ModelSpec


@dataclass(frozen=True)
class ModelCost:
    """Per image: FLOPs (a multiply-add is two), multiply-accumulates, and the parameter count."""

    flops: int
    macs: int
    params: int


def example_input(spec: ModelSpec, batch_size: int = 1) -> torch.Tensor:
    """A zero input of the spec's shape (B, C, H, W): tracing needs shapes, not values."""
    return torch.zeros(spec.input_shape(batch_size))


def model_cost(model: nn.Module, spec: ModelSpec) -> ModelCost:
    """FLOPs, MACs and params of ``model`` on one ``spec``-shaped image (the caller's model is untouched).

    Counted on the traced graph (convolutions and linear layers multiply; the
    rest adds its elementwise work to the FLOPs); the MACs agree with
    ``torch.utils.flop_counter.FlopCounterMode`` / 2 on the zoo. Parameters are those
    the traced (eval-mode) graph holds: a training-only head (GoogLeNet's auxiliary
    classifiers) is no part of the deployed model, nor of a pruned one.
    """
    gm = discover(copy.deepcopy(model).eval(), example_input(spec)).gm
    flops, macs, _ = count_ops(gm, list(gm.graph.nodes))
    return ModelCost(int(flops), int(macs), sum(p.numel() for p in gm.parameters()))
