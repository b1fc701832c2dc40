"""The profile's prediction check: a pruned copy built as block surgery builds it, timed
beside the whole model against the profile's own prediction, everywhere it is reported."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch

from profiler import (
    BlockProfile,
    LatencyTable,
    ModelSpec,
    TimingOptions,
    discover,
    load_model,
    profile_model,
    without_blocks,
)
from profiler.rewire import finish
from pruner.depth import remove_blocks
from pruner.skeleton import budget_drift_warning, profile_warnings, speed_change_warning
from tests.cli_helpers import PRUNERD, ok, run

QUICK = TimingOptions(budget_s=0.2, min_rounds=3, max_rounds=20)
SPEC = ModelSpec("resnet20", input_size=(8, 8))


@pytest.fixture(scope="module")
def profile() -> BlockProfile:
    return profile_model(load_model(SPEC), SPEC, batch_size=2, options=QUICK, threads=1)


def test_an_exported_programs_bypassed_blocks_are_gone() -> None:
    """In a torch.export program each convolution is followed by ``aten.relu_``, an in-place
    op FX never drops as dead: the check's copy without blocks kept all their nodes, ran
    them, and measured 97% of the whole where 62% was predicted. Now they go, and the copy
    computes what the same surgery on the traced module does."""
    spec = ModelSpec("resnet20", 1, 10, (8, 8))
    torch.manual_seed(0)
    model = load_model(spec)
    x = torch.randn(1, 1, 8, 8)
    program = torch.export.export(model, (x,)).module()
    traced, exported = discover(model, x), discover(program, x)
    same = [b.name for b in traced.blocks if b.replacement == "identity"]
    assert same == [b.name for b in exported.blocks if b.replacement == "identity"]
    names = same[::2]

    def convs(gm: torch.fx.GraphModule) -> int:
        return sum(n.target is torch.ops.aten.conv2d.default for n in gm.graph.nodes)

    pick = [b for b in exported.blocks if b.name in names]
    checked = without_blocks(exported.gm, pick)
    conv = {n.name for n in exported.gm.graph.nodes if n.target is torch.ops.aten.conv2d.default}
    in_blocks = sum(name in conv for b in pick for name in b.nodes)  # two per identity block
    assert in_blocks == 2 * len(pick) and convs(exported.gm) - convs(checked) == in_blocks
    expected = without_blocks(traced.gm, [b for b in traced.blocks if b.name in names])
    with torch.inference_mode():
        torch.testing.assert_close(checked(x)[0], expected(x), rtol=1e-5, atol=1e-6)


def test_dead_in_place_ops_go_unless_their_effect_lasts() -> None:
    """An in-place op on a tensor the pass computed is dead when nothing reads it; one that
    writes into a graph input (directly or through a view) or a buffer stays."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    aten = torch.ops.aten
    inner = graph.call_function(aten.relu_.default, (graph.call_function(aten.neg.default, (x,)),))
    view = graph.call_function(aten.view.default, (x, [-1]))
    kept = [
        graph.call_function(aten.relu_.default, (view,)),
        graph.call_function(aten.add_.Tensor, (x, 1)),
    ]
    graph.output(x)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    finish(gm)
    left = set(gm.graph.nodes)
    assert inner not in left and inner.args[0] not in left
    assert set(kept) <= left and view in left


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_the_checked_model_is_the_one_surgery_builds(name: str) -> None:
    spec = ModelSpec(name, input_size=(16, 16))
    torch.manual_seed(0)
    model = load_model(spec)
    x = torch.randn(2, 3, 16, 16)
    bg = discover(model, x)
    before = [n.name for n in bg.gm.graph.nodes]
    chosen = [b for b in bg.blocks if b.removable and b.replacement in ("identity", "shortcut")]
    assert len(chosen) >= 3
    chosen = chosen[::2]
    checked = without_blocks(bg.gm, chosen)
    pruned = remove_blocks(copy.deepcopy(bg.gm), chosen)
    with torch.inference_mode():
        torch.testing.assert_close(checked(x), pruned(x), rtol=0, atol=0)
        assert not torch.equal(checked(x), bg.gm(x))
    # The traced model is untouched; the copy shares its weights rather than copying them.
    assert [n.name for n in bg.gm.graph.nodes] == before
    shared = {id(p) for p in bg.gm.parameters()}
    assert {id(p) for p in checked.parameters()} <= shared
    assert len(list(checked.graph.nodes)) < len(before)


def test_every_profile_checks_its_prediction(profile: BlockProfile) -> None:
    c = profile.check
    assert c is not None
    bypassable = [t.block.name for t in profile.blocks if t.block.removable]
    assert c.removed == tuple(bypassable[::2])
    assert c.predicted_fraction == pytest.approx(profile.predicted_fraction(c.removed))
    kept = profile.rest_s + sum(
        (t.replacement_latency_s or 0.0) if t.block.name in c.removed else t.latency_s
        for t in profile.blocks
    )
    assert c.predicted_fraction == pytest.approx(kept / (profile.rest_s + profile.blocks_s))
    assert 0 < c.predicted_fraction < 1 and 0 < c.measured.median_s < c.reference.median_s
    # On the CPU the reference is the traced model itself, timed in the same rounds.
    assert c.reference == profile.end_to_end
    assert c.error == pytest.approx(c.predicted_fraction / c.measured_fraction - 1)
    assert profile.quality is not None and profile.quality.prediction_error == c.error
    with pytest.raises(KeyError, match="no blocks named"):
        profile.predicted_fraction(["nope"])


def test_the_check_round_trips_through_json(profile: BlockProfile) -> None:
    d = json.loads(profile.to_json())
    assert d["check"]["removed"] and d["check"]["error"] == profile.check.error  # type: ignore[union-attr]
    assert d["quality"]["prediction_error"] == profile.check.error  # type: ignore[union-attr]
    assert BlockProfile.from_json(profile.to_json()) == profile
    # A profile written before the check existed still reads, without one.
    old = {k: v for k, v in d.items() if k != "check"}
    old["quality"] = {k: v for k, v in d["quality"].items() if k != "prediction_error"}
    again = BlockProfile.from_dict(old)
    assert again.check is None and again.quality.prediction_error != again.quality.prediction_error


def test_no_check_when_asked_or_nothing_timed(tmp_path: Path) -> None:
    model = load_model(SPEC)
    off = profile_model(model, SPEC, options=dataclasses.replace(QUICK, check=False), threads=1)
    assert off.check is None
    with LatencyTable(tmp_path / "lut.sqlite") as table:
        first = profile_model(model, SPEC, options=QUICK, threads=1, table=table, store_failed=True)
        stored = len(table)
        served = profile_model(model, SPEC, options=QUICK, threads=1, table=table)
        # The check compares figures of one run: it is never stored, never served.
        assert first.check is not None and served.check is None and len(table) == stored
        assert served.from_table == stored


def test_a_prune_warns_when_the_prediction_is_off(profile: BlockProfile) -> None:
    c = profile.check
    # The measured figures as they came, the prediction set to match them or 20% over.
    exact = dataclasses.replace(c, predicted_fraction=c.measured_fraction)  # type: ignore[arg-type]
    good = dataclasses.replace(profile, check=exact)
    assert not any("predicted the model without" in w for w in profile_warnings(good))
    off = dataclasses.replace(c, predicted_fraction=c.measured_fraction * 1.2)  # type: ignore[arg-type]
    bad = dataclasses.replace(profile, check=off)
    (warning,) = [w for w in profile_warnings(bad) if "predicted the model without" in w]
    assert "+20.0%" in warning and f"without {len(c.removed)} blocks" in warning  # type: ignore[union-attr]


def test_a_prune_warns_when_the_machine_changed_speed_since_the_profile(
    profile: BlockProfile,
) -> None:
    traced = profile.end_to_end.median_s  # the form the finish times the baseline in
    assert speed_change_warning(profile, traced * 1.1, 0.5 * profile.end_to_end_s, 0.5) is None
    predicted = 0.5 * profile.end_to_end_s
    slow = speed_change_warning(profile, traced * 1.8, predicted, traced * 1.8 * 0.45)
    assert slow is not None and "(+80%)" in slow and "speed changed" in slow
    assert "50.0% of the baseline predicted, 45.0% measured" in slow
    fast = speed_change_warning(profile, traced * 0.5, 0.0, traced * 0.2)
    assert fast is not None and "(-50%)" in fast and "predicted" not in fast  # no prediction


def test_a_prune_without_a_profile_warns_when_the_budget_moved() -> None:
    # hfp to 0.6: the width pass started against a 2.577 ms baseline, the check saw 3.841 ms.
    moved = budget_drift_warning(0.6 * 2.577e-3, 0.6 * 3.841e-3)
    assert moved is not None and "+49%" in moved and "1.546 ms then, 2.305 ms" in moved
    assert budget_drift_warning(1.0e-3, 1.1e-3) is None  # within the drift limit
    assert budget_drift_warning(0.0, 1.0e-3) is None  # no latency budget


def test_the_command_prints_the_check(tmp_path: Path) -> None:
    common = (PRUNERD, "profile", "resnet20", "--in-channels", "1", "--input-size", "8x8",
              "--timing-budget-s", "0.3", "--no-table", "--threads", "1")  # fmt: skip
    out = ok(run(*common, "--json", str(tmp_path / "p.json"))).stdout
    (line,) = [ln for ln in out.splitlines() if ln.startswith("prediction check:")]
    assert "without 5 of 10 blocks" in line and "error" in line
    assert json.loads((tmp_path / "p.json").read_text())["check"]["removed"]
    quiet = ok(run(*common, "--no-check", "--json", str(tmp_path / "q.json"))).stdout
    assert "prediction check" not in quiet
    assert json.loads((tmp_path / "q.json").read_text())["check"] is None


def test_chained_the_check_has_its_own_reference() -> None:
    # Chained, end to end is the plain pass of the chain's rounds; the pruned model is timed
    # with the whole models, so it is compared with the traced model timed beside it.
    chained = dataclasses.replace(QUICK, pieces="chained")
    p = profile_model(load_model(SPEC), SPEC, options=chained, threads=1)
    assert p.timing == "chained" and p.check is not None
    assert p.check.reference != p.end_to_end and p.check.reference.runs >= 3
    assert 0 < p.check.measured_fraction < 1


def test_a_check_that_cannot_run_leaves_the_profile_and_says_why(monkeypatch) -> None:
    from rich.console import Console

    from service.commands.render import print_profile

    profiling = importlib.import_module("profiler.profiling")

    def broken(gm, blocks):
        raise RuntimeError("no way round layer1.1")

    monkeypatch.setattr(profiling, "without_blocks", broken)
    p = profile_model(load_model(SPEC), SPEC, options=QUICK, threads=1)
    assert p.check is None and p.blocks and p.end_to_end_s > 0
    (warning,) = [w for w in p.device.warnings if w.startswith("prediction check skipped")]
    assert "RuntimeError: no way round layer1.1" in warning
    out = Console(record=True, width=200)
    print_profile(p, out)
    assert "warning: prediction check skipped" in out.export_text()


def test_adapters_take_the_models_dtype() -> None:
    # vgg16's plain blocks that change channels are replaced by 1x1 adapters.
    spec = ModelSpec("vgg16", input_size=(8, 8))
    model = load_model(spec).to(torch.bfloat16)
    x = torch.randn(1, 3, 8, 8, dtype=torch.bfloat16)
    bg = discover(model, x)
    adapters = [b for b in bg.blocks if b.removable and b.replacement == "adapter"]
    assert adapters
    checked = without_blocks(bg.gm, adapters[:2])
    with torch.inference_mode():
        assert checked(x).dtype == torch.bfloat16
    assert {p.dtype for p in checked.parameters()} == {torch.bfloat16}
