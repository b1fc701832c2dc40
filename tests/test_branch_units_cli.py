"""A network of Inception modules through the installed ``prunerd``: trained, pruned by
removing whole modules (each a unit of parallel branches), then evaluated and profiled
from the pruned checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from .cli_helpers import PRUNERD, ok, run

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tests.models_for_tests:GoogLeNetLike"
QUICK = ["--timing-budget-s", "0.3", "--no-table", "--threads", "1"]


def prunerd(*args: str) -> str:
    return ok(run(PRUNERD, *args, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})).stdout


def profile(checkpoint: Path) -> dict:
    path = checkpoint.with_suffix(".json")
    prunerd("profile", MODEL, "--checkpoint", str(checkpoint), *QUICK, "--json", str(path))
    return json.loads(path.read_text())


def test_inception_modules_are_pruned_whole(tmp_path: Path) -> None:
    base, out = tmp_path / "base.pt", tmp_path / "pruned"
    prunerd("train", MODEL, "--data", "digits", "--epochs", "1", "--limit", "300",
            "--out", str(base))  # fmt: skip
    units = {b["name"]: (b["kind"], b["replacement"]) for b in profile(base)["blocks"]}
    assert units == {
        "conv1": ("conv_bn_act", "none"),
        "inception_a": ("branches", "adapter"),
        "inception_b": ("branches", "identity"),
        "reduce": ("branches", "none"),
    }
    prunerd("prune", MODEL, "--checkpoint", str(base), "--data", "digits", "--budget", "0.5",
            "--epochs", "0", "--limit", "300", "--out", str(out), *QUICK)  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    removed = set(report["removed_blocks"])
    assert removed and removed <= {"inception_a", "inception_b"}
    pruned = out / "pruned.pt"
    scores = json.loads(prunerd("eval", MODEL, "--checkpoint", str(pruned), "--json"))
    assert scores["n"] == 359
    left = {b["name"] for b in profile(pruned)["blocks"]}
    adapters = {f"prunerd_adapter_{name}" for name in removed if units[name][1] == "adapter"}
    assert left == set(units) - removed | adapters  # an adapter is a 1x1 conv: a unit itself
