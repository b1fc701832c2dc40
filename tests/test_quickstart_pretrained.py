"""The quickstart starts from shipped weights when there are some, and trains only when asked."""

from __future__ import annotations

from pathlib import Path

import pytest

import profiler.pretrained as pretrained
from profiler.pretrained import PretrainedEntry, add_to_manifest
from pruner.baselines import train_baseline
from service.cli import main


@pytest.fixture
def shipped_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A resnet20 on digits 'shipped' in a temporary pretrained directory."""
    ship = tmp_path / "pretrained"
    ship.mkdir()
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", ship)
    result = train_baseline(
        "resnet20", "digits", 1, ship / "resnet20-digits.pt", batch_size=64, progress=False
    )
    add_to_manifest(
        PretrainedEntry(
            model="resnet20",
            dataset="digits",
            file="resnet20-digits.pt",
            test_accuracy=result.test.accuracy,
            test_loss=result.test.loss,
            test_n=result.test.n,
            epochs=1,
            seed=0,
            seconds=result.fit.seconds,
            command="prunerd train resnet20 --data digits --epochs 1",
            machine="test",
            date="2026-01-01",
        )
    )
    return ship


def quickstart(tmp_path: Path, *extra: str) -> int:
    argv = ["quickstart", "--data", "digits", "--limit", "300", "--no-prune"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--timing-budget-s", "0.3"]
    return main([*argv, "--table", str(tmp_path / "lut.sqlite"), *extra])


def test_quickstart_uses_the_shipped_baseline(
    shipped_digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quickstart(tmp_path) == 0
    printed = capsys.readouterr().out
    assert "baseline: the shipped resnet20 trained on digits (1 epochs" in printed
    assert str(shipped_digits / "resnet20-digits.pt") in printed
    assert "layer3.2" in printed  # the profile ran on it
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing trained


def test_quickstart_trains_when_asked_or_when_nothing_is_shipped(
    shipped_digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quickstart(tmp_path, "--train") == 0
    assert "baseline: trained here (--train asked for it)" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    (shipped_digits / "resnet20-digits.pt").unlink()
    assert quickstart(tmp_path) == 0
    assert "trained here (no shipped resnet20 for digits)" in capsys.readouterr().out
