"""Structure follows the model's device: discovery and the channel space run their example
where the model is (a GPU run keeps every model on the GPU; the meta device stands in here)."""

from __future__ import annotations

import torch
from torch import nn

from profiler import ModelSpec, discover, load_model, module_device
from pruner.width.space import ChannelSpace

SPEC = ModelSpec("resnet20", input_size=(8, 8))


def test_module_device() -> None:
    assert module_device(nn.ReLU()) == torch.device("cpu")  # nothing to ask: the CPU
    assert module_device(nn.BatchNorm2d(3).to("meta")) == torch.device("meta")


def test_discovery_and_channel_space_run_where_the_model_is() -> None:
    on_cpu = discover(load_model(SPEC).eval(), torch.randn(1, 3, 8, 8))
    elsewhere = load_model(SPEC).eval().to("meta")
    moved = discover(elsewhere, torch.randn(1, 3, 8, 8))  # a CPU example for a meta model
    assert [b.name for b in moved.blocks] == [b.name for b in on_cpu.blocks]
    assert [b.output_shape for b in moved.blocks] == [b.output_shape for b in on_cpu.blocks]
    space = ChannelSpace(elsewhere, torch.randn(2, 3, 8, 8))
    assert len(space.groups) == len(
        ChannelSpace(load_model(SPEC).eval(), torch.randn(2, 3, 8, 8)).groups
    )
