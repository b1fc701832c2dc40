"""fit / evaluate / baselines / cache, and the `prunerd train` command."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import profiler
import pruner.baselines as baselines_mod
import pruner.train as train_mod
import service.cli
from pruner.baselines import (
    CACHE_ENV,
    TrainResult,
    baseline_filename,
    cached_baseline,
    train_baseline,
)
from pruner.data import load_data
from pruner.train import EvalResult, FitResult, evaluate, fit


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The machine's 2 cores are shared; one intra-op thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cnn(in_channels: int = 1, num_classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def test_evaluate_against_hand_computation() -> None:
    model = nn.Flatten()  # logits are the inputs themselves
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]).view(3, 2, 1, 1)
    y = torch.tensor([0, 0, 0])
    r = evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])])
    expected_loss = (
        math.log(1 + math.exp(-2)) + math.log(1 + math.e) + math.log(1 + math.exp(-3))
    ) / 3
    assert r.n == 3 and r.accuracy == pytest.approx(2 / 3)
    assert r.loss == pytest.approx(expected_loss, rel=1e-6)
    empty = evaluate(model, [])
    assert empty.n == 0 and math.isnan(empty.accuracy)
    assert EvalResult.from_dict(json.loads(json.dumps(empty.to_dict()))).n == 0


def test_fit_learns_synthetic_and_round_trips() -> None:
    torch.manual_seed(0)
    data = load_data("synthetic", size=8, count=512, batch_size=32)
    model = tiny_cnn()
    before = evaluate(model, data.test)
    result = fit(model, data.train, data.val, epochs=2, lr=0.1, progress=False)
    after = evaluate(model, data.test)
    assert after.accuracy > max(0.6, before.accuracy)
    assert result.epochs_run == 2 and not result.stopped_early
    assert result.history[-1].lr < result.history[0].lr  # cosine decays
    assert 1 <= result.best_epoch <= 2
    assert result.best_val_accuracy == max(e.val.accuracy for e in result.history)
    again = FitResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_fit_early_stops_and_restores_best(monkeypatch) -> None:
    scripted = iter([0.5, 0.9, 0.3, 0.2, 0.95, 0.99])
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(model, batches, device="cpu"):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return EvalResult(next(scripted), 1.0, 10)

    monkeypatch.setattr(train_mod, "evaluate", fake_evaluate)
    data = load_data("synthetic", size=8, count=128, batch_size=32)
    model = tiny_cnn()
    result = fit(model, data.train, data.val, epochs=6, lr=0.1, patience=2, progress=False)
    assert result.stopped_early and result.epochs_run == 4
    assert result.best_epoch == 2 and result.best_val_accuracy == 0.9
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][key]), key


def test_fit_without_val_keeps_last_weights() -> None:
    data = load_data("synthetic", size=8, count=64, batch_size=32, val_fraction=0.0)
    result = fit(tiny_cnn(), data.train, data.val, epochs=1, progress=False, patience=1)
    assert result.best_epoch == 1 and math.isnan(result.best_val_accuracy)
    assert result.history[0].val is None
    assert FitResult.from_dict(json.loads(json.dumps(result.to_dict()))).history[0].val is None


def test_fit_custom_loss_gets_inputs() -> None:
    seen = []

    def loss_fn(logits, labels, inputs):
        seen.append(inputs.shape)
        return nn.functional.cross_entropy(logits, labels)

    data = load_data("synthetic", size=8, count=64, batch_size=32, val_fraction=0.0)
    fit(tiny_cnn(), data.train, None, epochs=1, loss_fn=loss_fn, progress=False)
    assert seen and all(s[1:] == (1, 8, 8) for s in seen)


def test_train_baseline_on_digits_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "r20.pt"
    result = train_baseline("resnet20", "digits", 1, out, batch_size=32, lr=0.05, progress=False)
    assert result.test.n == 359 and result.test.accuracy > 0.2  # chance is 0.1
    assert result.checkpoint == str(out) and out.is_file()
    spec = profiler.read_checkpoint(out).spec
    assert (spec.in_channels, spec.num_classes, spec.input_size) == (1, 10, (8, 8))
    meta = profiler.read_checkpoint(out).meta
    assert meta["dataset"] == "digits" and meta["epochs"] == 1
    assert meta["test_accuracy"] == pytest.approx(result.test.accuracy)
    model = profiler.load_model("resnet20", checkpoint=out)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    data = load_data("digits")
    assert evaluate(model, data.test).accuracy == pytest.approx(result.test.accuracy)
    again = TrainResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_unknown_model_fails_before_loading_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet99'.*resnet20"):
        train_baseline("resnet99", "no-such-data", 1, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_baseline("resnet20", "digits", 0, tmp_path / "x.pt")


def test_cached_baseline_trains_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    path = cached_baseline("resnet20", "synthetic", 1, limit=96, batch_size=32, progress=False)
    assert path == tmp_path / "resnet20_synthetic_e1_n96.pt" and path.is_file()
    assert profiler.read_checkpoint(path).spec.input_size == (16, 16)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached baseline was trained again")

    monkeypatch.setattr(baselines_mod, "train_baseline", must_not_train)
    assert cached_baseline("resnet20", "synthetic", 1, limit=96) == path
    assert cached_baseline("resnet20", "synthetic", 1, cache_dir=tmp_path, limit=96) == path


def test_baseline_filename() -> None:
    assert baseline_filename("resnet56", "fashion-mnist", 30) == "resnet56_fashion-mnist_e30.pt"
    assert (
        baseline_filename("pkg.mod:make", "digits", 2, seed=1, limit=10)
        == "pkg.mod-make_digits_e2_n10_s1.pt"
    )


# ---------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch):
    # Only this command: other subcommands belong to other modules and their own tests.
    monkeypatch.setattr(service.cli, "COMMAND_MODULES", ("train",))
    return service.cli.main


def test_cli_train_json(cli, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ckpt.pt"
    argv = ["train", "resnet20", "--data", "digits", "--epochs", "1", "--limit", "200"]
    rc = cli([*argv, "--batch-size", "32", "--out", str(out), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"] == str(out) and out.is_file()
    assert report["spec"]["input_size"] == [8, 8] and report["test"]["n"] == 200
    rc = cli([*argv, "--out", str(tmp_path / "b.pt"), "--resume"])
    printed = capsys.readouterr()
    assert rc == 0 and "test accuracy:" in printed.out and str(tmp_path / "b.pt") in printed.out
    # --resume with nothing to resume trains from the start, and says so
    assert f"--resume: no interrupted run at '{tmp_path / 'b.pt.state'}'" in printed.err


def test_cli_train_errors(cli, tmp_path: Path, capsys) -> None:
    assert cli(["train", "resnet20", "--data", "cifar", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "prunerd train: error: unknown dataset 'cifar'" in err and "digits" in err
    argv = ["train", "resnet20", "--data", "fashion-mnist", "--data-root", str(tmp_path)]
    assert cli([*argv, "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "apt-get install dataset-fashion-mnist" in err
    assert cli(["train", "nonet", "--data", "digits", "--out", str(tmp_path / "x.pt")]) == 2
    assert "unknown model 'nonet'" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_fit_steps_per_epoch_without_len() -> None:
    class NoLen:
        """Re-iterable batches that cannot say how many there are."""

        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(3):
                yield torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 4, (8,), generator=g)

    result = fit(tiny_cnn(), NoLen(), NoLen(), epochs=2, lr=0.1, progress=False)
    # The cosine schedule then steps once per epoch: 0.1, then half of it.
    assert [e.lr for e in result.history] == pytest.approx([0.1, 0.05])


def test_train_model_resumes_an_interrupted_run(tmp_path: Path, monkeypatch, cli, capsys) -> None:
    from pruner.baselines import train_model
    from pruner.train_config import TrainConfig, state_path_for
    from pruner.train_state import load_state

    out = tmp_path / "r20.pt"
    config = TrainConfig("resnet20", "digits", str(out), epochs=2, batch_size=64, limit=300)
    real_evaluate, calls = train_mod.evaluate, []

    def dies_in_epoch_2(model, batches, device="cpu"):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(model, batches, device)

    monkeypatch.setattr(train_mod, "evaluate", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_model(config, progress=False)
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    state = state_path_for(out)
    assert load_state(state).epoch == 1 and not out.exists()

    argv = ["train", "resnet20", "--data", "digits", "--epochs", "2", "--batch-size", "64"]
    assert cli([*argv, "--limit", "300", "--out", str(out)]) == 2
    assert "holds an interrupted run: add --resume" in capsys.readouterr().err
    assert cli([*argv, "--limit", "300", "--out", str(out), "--epochs", "3", "--resume"]) == 2
    assert "epochs: 2 there, 3 now" in capsys.readouterr().err

    result = train_model(config.with_(resume=True), progress=False)
    assert [e.epoch for e in result.fit.history] == [1, 2]
    assert out.is_file() and not state.exists()  # the checkpoint is written: nothing to resume
    meta = profiler.read_checkpoint(out).meta
    assert meta["config"]["epochs"] == 2 and meta["test_n"] == result.test.n
    assert TrainConfig.from_dict(meta["config"]) == config.with_(resume=True)
