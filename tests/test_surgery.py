"""Block surgery: identity, shortcut-only and least-squares adapters; plans; rebuild; export."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from profiler import ModelSpec, build_model, discover, save_checkpoint
from pruner import apply_plan, export_pruned, load_data, load_pruned
from pruner.depth import SurgeryError
from pruner.plan import PrunePlan, RemovedBlock

SPEC = ModelSpec("resnet20", 1, 10, (8, 8))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    with torch.no_grad():  # non-trivial BN statistics, so outputs depend on them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _silence(bn: nn.BatchNorm2d) -> None:
    """Make a BN output zeros: the residual branch then adds nothing."""
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()


def test_identity_and_shortcut_removal_keep_the_function_when_branches_are_silent():
    model = _model()
    _silence(model.layer1[1].bn2)  # relu(x + 0) == x for the post-ReLU input x
    _silence(model.layer2[0].bn2)  # relu(shortcut(x) + 0): what shortcut-only computes
    plan = PrunePlan(
        SPEC, (RemovedBlock("layer1.1", "identity"), RemovedBlock("layer2.0", "shortcut"))
    )
    pruned = apply_plan(model, plan)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5)
    keys = set(pruned.state_dict())
    assert not any(k.startswith("layer1.1.") for k in keys)
    assert not any(k.startswith("layer2.0.conv") for k in keys)
    assert any(k.startswith("layer2.0.shortcut.") for k in keys)
    # The caller's model is untouched and shares no parameters with the pruned one.
    assert "layer1.1.conv1.weight" in model.state_dict()
    ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in ids for p in pruned.parameters())


class Plain(nn.Module):
    """Conv-BN chains; ``mid`` changes channels with a per-pixel linear map (1x1 conv + BN)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.mid = nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6))
        self.last = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.last(self.mid(self.stem(x)))), 1))


def test_consecutive_blocks_all_go():
    model = _model()
    names = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2"]
    plan = PrunePlan(
        SPEC, tuple(RemovedBlock(n, "shortcut" if n == "layer2.0" else "identity") for n in names)
    )
    pruned = apply_plan(model, plan)
    modules = {str(n.target) for n in pruned.graph.nodes if n.op == "call_module"}
    assert not any(m.startswith("layer1.") for m in modules)
    assert {m for m in modules if m.startswith("layer2.")} == {
        "layer2.0.shortcut.0",
        "layer2.0.shortcut.1",
        "layer2.0.relu",
    }
    # The stem feeds the shortcut projection directly.
    short = next(n for n in pruned.graph.nodes if n.target == "layer2.0.shortcut.0")
    assert short.args[0].target == "relu"


def test_adapter_is_fit_by_least_squares():
    torch.manual_seed(0)
    model = Plain().eval()
    spec = ModelSpec("tests.test_surgery:Plain", 1, 3, (8, 8))
    bg = discover(model, torch.zeros(1, 1, 8, 8))
    mid = next(b for b in bg.blocks if b.name.startswith("mid"))
    assert mid.replacement == "adapter"
    calib = [(torch.randn(16, 1, 8, 8), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    pruned = apply_plan(model, PrunePlan(spec, (RemovedBlock(mid.name, "adapter"),)), calib)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():  # the removed block was linear per pixel: the adapter reproduces it
        assert torch.allclose(pruned(x), model(x), atol=1e-3)
    assert any(k.startswith("prunerd_adapter_") for k in pruned.state_dict())


def test_checkpoint_round_trip_and_export(tmp_path):
    model = _model()
    plan = PrunePlan(
        SPEC,
        (RemovedBlock("layer1.2", "identity"), RemovedBlock("layer3.0", "shortcut")),
        predicted_latency_s=1e-3,
        budget_s=2e-3,
    )
    assert PrunePlan.from_json(plan.to_json()) == plan
    pruned = apply_plan(model, plan)
    path = save_checkpoint(tmp_path / "p.pt", SPEC, pruned, plan_json=plan.to_json())
    again = load_pruned(path)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(again(x), pruned.eval()(x))
    exported = export_pruned(pruned, SPEC, tmp_path / "p.pt2")
    program = torch.export.load(str(exported))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), pruned(x), atol=1e-5)


def test_bad_plans_are_refused():
    model = _model()
    with pytest.raises(SurgeryError, match="does not have"):
        apply_plan(model, PrunePlan(SPEC, (RemovedBlock("layer9.9", "identity"),)))
    with pytest.raises(SurgeryError, match="replaced by 'shortcut'"):
        apply_plan(model, PrunePlan(SPEC, (RemovedBlock("layer2.0", "identity"),)))
    with pytest.raises(SurgeryError, match="not removable"):
        apply_plan(model, PrunePlan(SPEC, (RemovedBlock("conv1", "identity"),)))
    with pytest.raises(ValueError, match="twice"):
        PrunePlan(SPEC, (RemovedBlock("layer1.0", "identity"),) * 2)


def test_digits_plan_runs_on_real_data():
    data = load_data("digits", batch_size=64, limit=64)
    pruned = apply_plan(_model(), PrunePlan(SPEC, (RemovedBlock("layer1.0", "identity"),)))
    x, _ = next(iter(data.test))
    assert pruned(x).shape == (len(x), 10)


def test_units_keep_their_names_when_their_stage_is_pruned_down_to_one():
    # A stage container holding one unit is no reason to rename the unit: a second
    # round of removal looks blocks up in the pruned graph by what the first profile called them.
    from profiler import trace
    from pruner.depth import remove_more

    model = _model()
    x = torch.randn(1, 1, 8, 8)
    blocks = {b.name: b for b in discover(trace(model), x).blocks}
    gm = remove_more(trace(model), [blocks["layer1.0"], blocks["layer1.1"]], SPEC, None)
    names = [b.name for b in discover(gm, x).blocks]
    assert "layer1.2" in names and "layer1" not in names
    gm = remove_more(gm, [blocks["layer1.2"], blocks["layer2.1"]], SPEC, None)
    keys = set(gm.state_dict())
    assert not any(k.startswith(("layer1.", "layer2.1.")) for k in keys)
    assert gm(x).shape == (1, 10)


class Activated(nn.Module):
    """Conv-BN-activation chains that change channels: ending in ReLU, ReLU6 and nothing."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()

        def chain(cin: int, cout: int, *act: nn.Module) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), *act)

        self.stem = chain(in_channels, 4, nn.ReLU())
        self.relu = chain(4, 6, nn.ReLU())
        self.relu6 = chain(6, 8, nn.ReLU6())
        self.linear = chain(8, 10)
        self.last = chain(10, 10, nn.ReLU())
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.linear(self.relu6(self.relu(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


ACTIVATED = ModelSpec("tests.test_surgery:Activated", 1, 3, (8, 8))
ENDS_IN = {"relu": "relu", "relu6": "relu6", "linear": ""}


def _adapted(
    model: nn.Module, names: list[str], activations: dict[str, str], batch: int = 16
) -> nn.Module:
    torch.manual_seed(1)
    calib = [(torch.randn(batch, 1, 8, 8), torch.zeros(batch, dtype=torch.long)) for _ in range(8)]
    removed = tuple(RemovedBlock(n, "adapter", activations[n]) for n in names)
    return apply_plan(model, PrunePlan(ACTIVATED, removed), calib)


@pytest.mark.parametrize("exported", [False, True], ids=["module", "torch.export"])
def test_an_adapter_ends_in_the_activation_its_block_ended_in(exported: bool, tmp_path) -> None:
    """A block whose output is ReLU'd is replaced by a 1x1 conv and that ReLU: what reads
    it keeps seeing values in the range it was trained on (ReLU6 keeps [0, 6]; a block
    ending in a BatchNorm gets a plain conv)."""
    from profiler import load_model

    torch.manual_seed(0)
    model = Activated().eval()
    x = torch.randn(1, 1, 8, 8)  # what an exported program is traced at, and all it takes
    if exported:  # an ATen graph: relu and hardtanh(0, 6) as operators
        path = tmp_path / "activated.pt2"
        torch.export.save(torch.export.export(model, (x,)), str(path))
        model = load_model(str(path))
    blocks = {b.name: b for b in discover(model, x).blocks if b.replacement == "adapter"}
    by_module = {name: b for name, b in blocks.items() if name.split(".")[0] in ENDS_IN}
    assert {n.split(".")[0]: b.adapter_activation for n, b in by_module.items()} == ENDS_IN

    ends = {n: b.adapter_activation for n, b in by_module.items()}
    pruned = _adapted(model, list(ends), ends, batch=1)
    calls = [n for n in pruned.graph.nodes if str(n.target).startswith("prunerd_adapter_")]
    after = {str(n.target): [u.target for u in n.users] for n in calls}
    assert sorted(map(str, after.values())) == sorted(
        map(str, [[torch.nn.functional.relu], [torch.nn.functional.relu6], [calls[-1].next.target]])
    )
    with torch.no_grad():
        assert torch.isfinite(pruned(x)).all()


def _input_of(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    hook = model.get_submodule(layer).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


def test_the_activation_takes_the_adapter_closer_to_its_block() -> None:
    """What the next block reads is closer to what it read in the unpruned model with the
    ReLU (and the fit for it) than with a plain least-squares conv, which gives negative
    values that block never saw."""
    torch.manual_seed(0)
    model = Activated().eval()
    x = torch.randn(64, 1, 8, 8)
    want = _input_of(model, "relu6.0", x)
    got = {a: _input_of(_adapted(model, ["relu"], {"relu": a}), "relu6.0", x) for a in ("relu", "")}
    assert (got["relu"] >= 0).all() and (got[""] < 0).any()
    error = {a: (got[a] - want).pow(2).mean().item() for a in got}
    assert error["relu"] < error[""]


class ReluMid(Plain):
    """``mid`` is a ReLU'd per-pixel linear map: an adapter ending in a ReLU can be exact."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__(in_channels, num_classes)
        self.mid = nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU())


def test_an_adapter_ending_in_a_relu_is_fit_to_what_the_relu_leaves() -> None:
    """Plain least squares also fits the zeros the ReLU made, from both sides, and what
    is left after the ReLU is the error above them: the clipped fit does not count a
    value the ReLU clips anyway, and comes closer to the block after the ReLU."""
    from pruner.depth import fit_adapters, remove_blocks

    torch.manual_seed(0)
    model = ReluMid().eval()
    calib = [(torch.randn(16, 1, 8, 8), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    x = torch.randn(64, 1, 8, 8)
    want = _input_of(model, "last.0", x)
    errors = {}
    for steps in (0, 10):
        bg = discover(copy.deepcopy(model), torch.zeros(1, 1, 8, 8))
        mid = next(b for b in bg.blocks if b.name == "mid")
        assert mid.adapter_activation == "relu"
        adapters = fit_adapters(bg.gm, [mid], calib, clipped_steps=steps)
        got = _input_of(remove_blocks(bg.gm, [mid], adapters), "last.0", x)
        errors[steps] = (got - want).pow(2).mean().item()
    assert errors[10] < 0.6 * errors[0]


def test_a_plan_written_before_adapters_had_activations_rebuilds_as_it_was_tuned(tmp_path):
    """A checkpoint's plan without ``adapter_activation`` (prunerd before it existed) gives
    the model it was fine-tuned as: a plain 1x1 conv, no ReLU after it."""
    torch.manual_seed(0)
    model = Activated().eval()
    pruned = _adapted(model, ["relu"], {"relu": ""})
    plan = json.loads(PrunePlan(ACTIVATED, (RemovedBlock("relu", "adapter"),)).to_json())
    del plan["removed"][0]["adapter_activation"]
    path = save_checkpoint(tmp_path / "old.pt", ACTIVATED, pruned, plan_json=json.dumps(plan))
    again = load_pruned(path)
    assert not any(n.target is torch.nn.functional.relu for n in again.graph.nodes)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(again(x), pruned.eval()(x))
    plan["removed"][0]["adapter_activation"] = "sigmoid"
    save_checkpoint(tmp_path / "bad.pt", ACTIVATED, pruned, plan_json=json.dumps(plan))
    with pytest.raises(SurgeryError, match="adapter_activation 'sigmoid' is not one of"):
        load_pruned(tmp_path / "bad.pt")
