"""direct_lookups: a traced model's layers found without nn.Module.__getattr__, nothing else changed."""

from __future__ import annotations

import copy
import io

import torch
from torch import nn

from profiler import ModelSpec, direct_lookups, discover, load_model, trace

SPEC = ModelSpec("resnet20", input_size=(8, 8))


def _traced() -> torch.fx.GraphModule:
    return trace(load_model(SPEC).eval())


def test_layers_are_plain_attributes_and_registration_is_unchanged() -> None:
    gm = _traced()
    x = torch.randn(2, 3, 8, 8)
    want, keys = gm(x), list(gm.state_dict())
    names = [n for n, _ in gm.named_modules()]
    assert direct_lookups(gm) is gm
    block = getattr(gm.layer1, "0")
    assert "layer1" in vars(gm) and "0" in vars(gm.layer1) and "conv1" in vars(block)
    assert torch.equal(gm(x), want)
    assert list(gm.state_dict()) == keys and [n for n, _ in gm.named_modules()] == names


def test_a_replaced_layer_is_never_shadowed() -> None:
    gm = direct_lookups(_traced())
    new = nn.Conv2d(16, 16, 3, padding=1)
    block = getattr(gm.layer1, "0")
    block.conv1 = new  # nn.Module.__setattr__ drops the stored entry
    assert block.conv1 is new and gm.get_submodule("layer1.0.conv1") is new
    direct_lookups(gm)
    assert vars(block)["conv1"] is new


def test_a_deleted_layer_is_forgotten_on_the_next_call() -> None:
    gm = direct_lookups(_traced())
    block = getattr(gm.layer3, "2")
    delattr(block, "conv2")  # nn.Module.__delattr__ forgets the registration only
    assert "conv2" in vars(block)  # what the module docstring warns about
    direct_lookups(gm)
    assert "conv2" not in vars(block) and not hasattr(block, "conv2")


def test_copies_saves_retracing_and_export_still_work() -> None:
    gm = direct_lookups(_traced())
    x = torch.randn(1, 3, 8, 8)
    want = gm(x)
    # GraphModule's deepcopy rebuilds the module tree: the copy needs its own call.
    twin = direct_lookups(copy.deepcopy(gm))
    assert vars(twin)["layer1"] is twin._modules["layer1"]
    buf = io.BytesIO()
    torch.save(gm.state_dict(), buf)
    buf.seek(0)
    fresh = _traced()
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(x), want)
    with torch.inference_mode():
        again = discover(twin, x)
    assert [b.name for b in again.blocks] == [b.name for b in discover(_traced(), x).blocks]
    ep = torch.export.export(twin, (x,))
    assert torch.allclose(ep.module()(x), want, atol=1e-6)
