"""The prune pipeline and `prunerd prune` on a tiny model: artefacts, report, early errors."""

from __future__ import annotations

import json

import pytest
import torch

from profiler import ModelSpec, build_model, save_checkpoint
from pruner import BudgetError, ConfigError, PruneConfig, PruneReport, load_pruned, prune_checkpoint
from service.cli import main

SPEC = ModelSpec("resnet20", 1, 4, (16, 16))  # what the synthetic dataset produces


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    return str(save_checkpoint(path, SPEC, build_model(SPEC)))


def _config(checkpoint, tmp_path, **kw):
    base = dict(
        model="resnet20",
        checkpoint=checkpoint,
        data="synthetic",
        out=str(tmp_path / "out"),
        budget=0.6,
        epochs=1,
        batch_size=32,
        threads=1,
        limit=160,
        calibration_samples=96,
        heldout_samples=16,
        table=str(tmp_path / "lut.sqlite"),
        timing_budget_s=0.3,
    )
    base.update(kw)
    return PruneConfig.from_flat(base)


def test_pipeline_writes_report_plan_and_rebuildable_checkpoint(checkpoint, tmp_path):
    events = []
    report = prune_checkpoint(_config(checkpoint, tmp_path), on_event=events.append)
    out = tmp_path / "out"
    d = json.loads((out / "report.json").read_text())
    for key in (
        "budget_s",
        "predicted_latency_s",
        "removed_blocks",
        "baseline",
        "pruned",
        "depth",
        "version",
    ):
        assert key in d
    assert d["width"] is None and d["split"] is None and d["depth"]["removals"]
    assert d["method"] == "removal"  # the default
    for key in ("latency_s", "accuracy", "flops", "params"):
        assert key in d["baseline"] and key in d["pruned"]
    assert PruneReport.from_json((out / "report.json").read_text()).to_dict() == report.to_dict()
    assert report.removed_blocks  # 0.6 of the latency needs removals
    assert report.predicted_latency_s <= report.budget_s
    assert report.pruned.flops < report.baseline.flops
    assert [e["event"] for e in events][:3] == ["profiled", "scored", "selected"]
    assert events[-1]["event"] == "done"
    # The baseline was profiled afresh, so its prediction check is in the event and the report.
    check = events[0]["prediction_check_error"]
    assert isinstance(check, float) and d["depth"]["prediction_check_error"] == check
    pruned = load_pruned(out / "pruned.pt")
    assert pruned(torch.zeros(2, 1, 16, 16)).shape == (2, 4)
    assert (out / "plan.json").is_file() and (out / "pruned.pt2").is_file()


def test_early_errors_name_the_value_and_the_limit(checkpoint, tmp_path):
    with pytest.raises(BudgetError, match=r"budget 0\.000 ms is below .* smallest feasible"):
        prune_checkpoint(_config(checkpoint, tmp_path, budget=None, budget_ms=1e-4))
    with pytest.raises(ValueError, match="has 10 classes, but the model .* has 4 outputs"):
        prune_checkpoint(_config(checkpoint, tmp_path, data="digits"))
    with pytest.raises(ValueError, match="holds model 'resnet20', not 'resnet56'"):
        prune_checkpoint(_config(checkpoint, tmp_path, model="resnet56"))
    with pytest.raises(ConfigError, match="only one of budget and budget_s"):
        _config(checkpoint, tmp_path, budget_ms=5.0)
    with pytest.raises(ConfigError, match=r"give budget \(fraction\) or budget_s"):
        _config(checkpoint, tmp_path, budget=None)
    with pytest.raises(ConfigError, match=r"budget is a fraction .* in \(0, 1\], got 1.5"):
        _config(checkpoint, tmp_path, budget=1.5)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['budgett'\]"):
        _config(checkpoint, tmp_path, budgett=0.5)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("iterative", "no", "iterative must be true or false, got 'no'"),
        ("iterative", 1, "iterative must be true or false, got 1"),
        ("epochs", "3", "epochs must be an integer, got '3'"),
        ("epochs", True, "epochs must be an integer, got True"),
        ("threads", 2.0, "threads must be an integer or null, got 2.0"),
        ("lr", "0.1", "lr must be a number, got '0.1'"),
        ("budget_ms", [5], r"budget_ms must be a number or null, got \[5\]"),
        ("method", 3, "method must be a string, got 3"),
    ],
)
def test_options_of_the_wrong_type_are_refused_by_name(checkpoint, tmp_path, option, value, said):
    """A flag is a bool and a count an int: ``"no"`` must not switch a mode on, nor ``"3"``
    reach a comparison with a number, whoever built the dict (a daemon request, a script)."""
    with pytest.raises(ConfigError, match=said) as e:
        _config(checkpoint, tmp_path, **{option: value})
    assert e.value.fields == (option,)
    ok = _config(checkpoint, tmp_path, lr=1, limit=None, iterative=True, iterative_rounds=2)
    assert ok.options.run.lr == 1 and ok.options.depth.iterative_rounds == 2


def test_cli_errors_name_the_flags(checkpoint, tmp_path, capsys):
    args = ["prune", "resnet20", "--checkpoint", checkpoint, "--data", "synthetic"]
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    assert "give --budget (fraction) or --budget-ms" in capsys.readouterr().err
    assert main([*args, "--budget", "0.5", "--target-macs", "0.5", "--out", "x"]) == 2
    assert "--target-macs/--target-params are for methods that thin" in capsys.readouterr().err


def test_cli_prune_random_baseline(checkpoint, tmp_path, capsys):
    code = main(
        [
            "prune",
            "resnet20",
            "--checkpoint",
            checkpoint,
            "--data",
            "synthetic",
            "--budget",
            "0.7",
            "--method",
            "random",
            "--epochs",
            "0",
            "--threads",
            "1",
            "--limit",
            "64",
            "--timing-budget-s",
            "0.3",
            "--table",
            str(tmp_path / "lut.sqlite"),
            "--out",
            str(tmp_path / "cli"),
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["method"] == "random" and report["depth"]["scores"] == []
    assert (tmp_path / "cli" / "report.json").is_file()


def test_iterative_mode_removes_in_rounds(checkpoint, tmp_path):
    report = prune_checkpoint(
        _config(
            checkpoint, tmp_path, budget=0.5, iterative=True, iterative_rounds=2, epochs=0, limit=64
        )
    )
    assert len(report.rounds) >= 2
    removed = [name for r in report.rounds for name in r.removed]
    assert sorted(removed) == sorted(report.removed_blocks)
    assert report.rounds[0].target_s > report.rounds[1].target_s


def test_finetune_last_rescores_between_rounds_and_tunes_once(checkpoint, tmp_path):
    """Without iterative_finetune the first round only removes; the second is scored on that
    pruned, untuned model (without what the first removed), and the last round fine-tunes."""
    events, steps = [], []
    report = prune_checkpoint(
        _config(
            checkpoint,
            tmp_path,
            budget=0.5,
            method="removal",
            iterative=True,
            iterative_rounds=2,
            iterative_finetune=False,
        ),
        on_event=events.append,
        progress=lambda *step: steps.append(step),
    )
    # Every round but the first fine-tunes (one epoch; a round over budget adds one), its
    # progress reported as it starts and as the epoch ends.
    tuned = [s for s in steps if s[0] == "finetuning"]
    assert tuned == [("finetuning", 0, 1), ("finetuning", 1, 1)] * (len(report.rounds) - 1)
    scored = [e for e in events if e["event"] == "scored"]
    assert [e["round"] for e in scored] == [0, 1]
    first, last = report.rounds[0], report.rounds[-1]
    assert first.removed and first.accuracy_after_finetune == first.accuracy_before_finetune
    assert last.accuracy_after_finetune != last.accuracy_before_finetune
    rescored = {r["name"] for r in scored[1]["removals"]}
    assert rescored and not rescored & set(first.removed)
    with pytest.raises(ConfigError, match="needs iterative"):
        _config(checkpoint, tmp_path, iterative_finetune=False)


def test_later_rounds_cut_into_stages_earlier_rounds_thinned(checkpoint, tmp_path):
    # Rounds look blocks up in the model the earlier rounds pruned: a stage left with one
    # unit (or with its stem) must still answer to the names the first profile gave.
    report = prune_checkpoint(
        _config(checkpoint, tmp_path, budget=0.42, iterative=True, iterative_rounds=3, epochs=0)
    )
    removed = [name for r in report.rounds for name in r.removed]
    assert len(removed) == len(set(removed)) >= 5
    assert sum(1 for r in report.rounds if r.removed) >= 2
    rebuilt = load_pruned(report.checkpoint_path)
    assert rebuilt(torch.randn(2, 1, 16, 16)).shape == (2, 4)
