"""`pruner.prune` in memory: a zoo model on digits, nothing written; every method's report
round-trips JSON; one flat config for the CLI, the quickstart and the daemon."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile

import pytest
import torch

from profiler import LatencyTable, load_model, read_checkpoint
from pruner import (
    DATASETS,
    METHODS,
    Budget,
    BudgetError,
    ConfigError,
    DepthOptions,
    PruneConfig,
    PruneReport,
    RunOptions,
    WidthOptions,
    apply_plan,
    cached_baseline,
    load_data,
    prune,
)
from pruner.config import METHOD_INFO
from pruner.methods import REGISTRY

QUICK_RUN = RunOptions(timing_budget_s=0.3, threads=1, test_samples=200)
QUICK_DEPTH = DepthOptions(calibration_samples=300, heldout_samples=100)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    ckpt = cached_baseline(
        "resnet20", "digits", 3, cache_dir=tmp_path_factory.mktemp("ckpt"), progress=False
    )
    spec = read_checkpoint(ckpt).spec
    return load_model(spec, checkpoint=ckpt), spec, load_data("digits", batch_size=128)


def _files(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_prune_in_memory_writes_no_file(digits_model, tmp_path, monkeypatch):
    model, spec, data = digits_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    work, tmp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    events = []
    result = prune(
        model, spec, data, 0.6, epochs=1, on_event=events.append, run=QUICK_RUN, depth=QUICK_DEPTH
    )
    assert _files(work) == [] and _files(tmp) == []
    report = result.report
    assert report.removed_blocks and report.removed_blocks == result.plan.removed_names
    assert report.checkpoint_path == report.plan_path == report.export_path == ""
    assert report.pruned.macs < report.baseline.macs and report.depth and not report.width
    assert [e["event"] for e in events].count("done") == 1
    # The caller's model is not touched; the plan replays on it.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    rebuilt = apply_plan(model, result.plan)
    rebuilt.load_state_dict(result.model.state_dict())
    x = torch.randn(spec.input_shape(3))
    torch.testing.assert_close(rebuilt.eval()(x), result.model.eval()(x))


def test_an_infeasible_budget_names_one_that_is_feasible(digits_model, table):
    model, spec, data = digits_model
    with pytest.raises(BudgetError) as e:
        prune(model, spec, data, 0.01, method="l1", table=table, run=QUICK_RUN)
    m = re.search(
        r"below ([\d.]+) ms.*baseline ([\d.]+) ms\); the smallest feasible budget is "
        r"([\d.]+) of the baseline, or ([\d.]+) ms",
        str(e.value),
    )
    assert m, str(e.value)
    floor_ms, base_ms, fraction, ms = map(float, m.groups())
    assert ms >= floor_ms and fraction * base_ms >= floor_ms - 0.0005 * base_ms


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    with LatencyTable(tmp_path_factory.mktemp("lut") / "lut.sqlite") as t:
        yield t


BUDGETS = {
    "dbp": 0.7,
    "greedy": 0.7,
    "removal": 0.7,
    "random": 0.7,
    "l1": 0.7,
    "hfp": Budget(macs=0.5),
    "dbp+hfp": 0.6,
    "removal+hfp": 0.6,
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_report_round_trips_json(digits_model, table, method):
    model, spec, data = digits_model
    result = prune(
        model,
        spec,
        data,
        BUDGETS[method],
        method=method,
        epochs=0,
        table=table,
        run=QUICK_RUN,
        depth=QUICK_DEPTH,
        width=WidthOptions(depth_share=0.5),
    )
    report = result.report
    text = report.to_json()
    assert PruneReport.from_json(text) == report
    assert json.loads(text)["version"] == report.version == 2
    assert report.config["method"] == method
    info = METHOD_INFO[method]
    assert (report.depth is not None) == info.blocks
    assert (report.width is not None) == info.widths
    assert (report.split is not None) == (info.blocks and info.widths)
    if report.depth is not None:
        assert (len(report.depth.scores) > 0) == (method in ("dbp", "greedy", "dbp+hfp"))
        assert (len(report.depth.removals) > 0) == (method in ("removal", "removal+hfp"))
        assert [c.name for c in report.depth.candidates]
    if report.width is not None and report.width.targets.get("macs"):
        assert report.width.macs_ratio == pytest.approx(report.pruned.macs / report.baseline.macs)
    # The plan rebuilds the pruned model from the unpruned one.
    rebuilt = apply_plan(model, result.plan)
    rebuilt.load_state_dict(result.model.state_dict())


def test_the_registry_serves_every_method_the_options_name():
    assert tuple(REGISTRY) == METHODS
    assert DATASETS == ("digits", "fashion-mnist", "synthetic")


def test_one_flat_config_round_trips():
    flat = dict(model="resnet20", checkpoint="c.pt", data="digits", out="o", budget_ms=5.0)
    config = PruneConfig.from_flat({**flat, "method": "hfp", "target_macs": 0.5, "epochs": 3})
    assert config.options.budget == Budget(seconds=0.005, macs=0.5)
    assert config.options.run.epochs == 3 and config.io.out == "o"
    assert PruneConfig.from_flat(config.to_flat()) == config


# Numeric options any value of which is meaningful.
UNBOUNDED = {"seed"}


def _numeric_options() -> list[tuple[str, str]]:
    from pruner.config import FLAT_FIELDS, _annotation

    out = []
    for key in sorted(FLAT_FIELDS):
        kinds = {k.strip() for k in _annotation(key).split("|")} - {"None"}
        if kinds in ({"int"}, {"float"}) and key not in UNBOUNDED:
            out.append((key, kinds.pop()))
    return out


@pytest.mark.parametrize(("key", "kind"), _numeric_options())
def test_every_numeric_option_refuses_what_cannot_work(key: str, kind: str) -> None:
    """Each count and rate has a range, checked whichever way the config is built (flags,
    a daemon request, a TOML file, Python): -1 everywhere, and NaN and infinity for every
    rate (an unchecked ``lr`` once took ``inf`` and fine-tuned a model to NaN weights)."""
    base = dict(model="resnet20", checkpoint="c.pt", data="digits", out="o", budget=0.5)
    if key in ("budget", "budget_s", "target_macs", "target_params"):
        base = {**{k: v for k, v in base.items() if k != "budget"}, "method": "hfp"}
        base |= {"target_macs": 0.5} if key != "target_macs" else {"target_params": 0.5}
    bad = [-1] + ([math.nan, math.inf] if kind == "float" else [])
    for value in bad:
        with pytest.raises(ConfigError) as e:
            PruneConfig.from_flat({**base, key: value})
        assert key in e.value.fields, (key, value, e.value)
        assert repr(value) in str(e.value) or str(value) in str(e.value)
