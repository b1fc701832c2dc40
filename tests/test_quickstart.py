"""The main job end to end on a tiny dataset: train (cached), profile, prune, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.cli import main


def test_quickstart_trains_profiles_and_prunes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "quickstart",
        "--data",
        "digits",
        "--limit",
        "300",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    argv += ["--threads", "1", "--timing-budget-s", "0.3", "--table", str(tmp_path / "lut.sqlite")]
    argv += [
        "--json",
        str(tmp_path / "profile.json"),
        "--out",
        str(tmp_path / "pruned"),
        "--budget",
        "0.7",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "layer3.2" in printed and "additivity error" in printed  # the profile table
    assert "baseline" in printed and "pruned" in printed  # the before/after table
    # Under it, one whole line each (a centred caption broke "budget met" across lines).
    lines = [line.rstrip() for line in printed.splitlines()]
    assert any(line.startswith("removed ") and "layer" in line for line in lines)
    assert any(re.fullmatch(r"speed-up [0-9.]+x; budget (met|MISSED)", line) for line in lines)
    checkpoints = list((tmp_path / "cache").glob("*.pt"))
    assert len(checkpoints) == 1
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["input_shape"] == [1, 1, 8, 8]  # digits: the spec comes from the dataset
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert (
        report["removed_blocks"] and report["pruned"]["latency_s"] < report["baseline"]["latency_s"]
    )
    # A second run reuses the cached baseline and the latency table.
    assert main([*argv, "--no-prune"]) == 0
    assert list((tmp_path / "cache").glob("*.pt")) == checkpoints
    assert "pieces from the latency table" in capsys.readouterr().out


def test_quickstart_missing_dataset_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "quickstart",
        "--data",
        "fashion-mnist",
        "--data-root",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "apt-get install dataset-fashion-mnist" in err
