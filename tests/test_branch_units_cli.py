"""Networks that concatenate, through the installed ``prunerd``: Inception modules pruned
whole (each a unit of parallel branches) and the pruned checkpoint evaluated and profiled;
auxiliary logits in training; filter pruning where layers read a concatenation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    prunerd("prune", MODEL, "--checkpoint", str(base), "--data", "digits", "--budget", "0.5",
            "--epochs", "0", "--limit", "300", "--out", str(out), *QUICK)  # fmt: skip
    # conv1 and the strided reduction cannot go; the two Inception modules can, whole.
    removed = set(json.loads((out / "report.json").read_text())["removed_blocks"])
    assert removed and removed <= {"inception_a", "inception_b"}
    # An Inception module's output is a concatenation of ReLU'd branches: its adapter ends
    # in a ReLU, and the plan says so (the pruned model is rebuilt from it).
    plan = json.loads((out / "plan.json").read_text())["removed"]
    ends = {r["name"]: (r["replacement"], r["adapter_activation"]) for r in plan}
    assert ends.get("inception_a", ("adapter", "relu")) == ("adapter", "relu")
    pruned = out / "pruned.pt"
    scores = json.loads(prunerd("eval", MODEL, "--checkpoint", str(pruned), "--json"))
    assert scores["n"] == 359
    left = {b["name"]: b["kind"] for b in profile(pruned)["blocks"]}
    # inception_a changes the channels: an adapter (a 1x1 conv, a unit itself) replaces it.
    adapter = {"prunerd_adapter_inception_a": "conv_bn_act"} if "inception_a" in removed else {}
    kept = {"inception_a", "inception_b"} - removed
    assert left == {"conv1": "conv_bn_act", "reduce": "branches", **adapter,
                    **dict.fromkeys(kept, "branches")}  # fmt: skip


def test_a_model_with_auxiliary_logits_trains_and_prunes(tmp_path: Path) -> None:
    """GoogLeNet and Inception-v3 return their auxiliary classifiers' logits beside the main
    ones in training mode: trained on the main logits, pruned like any other model."""
    model, base = "tests.models_for_tests:googlenet_with_aux", tmp_path / "aux.pt"
    prunerd("train", model, "--data", "digits", "--epochs", "1", "--limit", "300",
            "--out", str(base))  # fmt: skip
    prunerd("prune", model, "--checkpoint", str(base), "--data", "digits", "--budget", "0.7",
            "--epochs", "0", "--limit", "300", "--out", str(tmp_path / "p"), *QUICK)  # fmt: skip
    assert json.loads((tmp_path / "p" / "report.json").read_text())["removed_blocks"]


def test_a_training_only_layer_too_small_for_the_inputs_is_named(tmp_path: Path) -> None:
    """torchvision's Inception-v3 at --input-size 75 fails in its auxiliary head, which runs
    in training mode only, with torch's bare "Output size is too small"."""
    out = tmp_path / "aux.pt"
    result = run(PRUNERD, "train", "tests.models_for_tests:AuxNeedsLargerInputs", "--data",
                 "digits", "--epochs", "1", "--limit", "64", "--out", str(out),
                 cwd=ROOT, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "AuxNeedsLargerInputs failed in training mode on a batch of shape (" in result.stderr
    assert "Output size is too small" in result.stderr and "--input-size" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_filter_pruning_counts_the_layers_after_a_concatenation(tmp_path: Path) -> None:
    """HFP on a DenseNet: its BatchNorms read concatenations (each group at an offset), and
    the MACs it reports are the pruned model's, at the target."""
    model, base = "tests.models_for_tests:DenseNetLike", tmp_path / "dense.pt"
    prunerd("train", model, "--data", "digits", "--epochs", "1", "--limit", "300",
            "--out", str(base))  # fmt: skip
    out = prunerd("prune", model, "--checkpoint", str(base), "--data", "digits", "--method",
                  "hfp", "--target-macs", "0.6", "--round-to", "2", "--epochs", "0",
                  "--limit", "300", "--out", str(tmp_path / "p"), *QUICK)  # fmt: skip
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    macs = report["pruned"]["macs"] / report["baseline"]["macs"]
    assert 0.55 < macs <= 0.6 and f"MACs x{macs:.3f}" in out


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("ShuffleNetLike", "filter pruning cannot follow the channels of ShuffleNetLike"),
        ("SqueezeNetLike", "no channel group of this model can be thinned"),
        ("NoConv", "no channel group of this model can be thinned"),  # was a TypeError
    ],
)
def test_filter_pruning_refuses_what_it_cannot_thin_and_says_why(
    tmp_path: Path, model: str, message: str
) -> None:
    from pruner import train_baseline

    spec, base = f"tests.models_for_tests:{model}", tmp_path / "m.pt"
    train_baseline(spec, "digits", 1, base, limit=100, progress=False)  # what is pruned is not
    done = run(PRUNERD, "prune", spec, "--checkpoint", str(base), "--data", "digits",
               "--method", "hfp", "--target-macs", "0.6", "--epochs", "0", "--limit", "100",
               "--out", str(tmp_path / "p"), *QUICK, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "--method removal" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_model_returning_a_tuple_in_eval_mode_trains_and_evaluates(tmp_path: Path) -> None:
    """Training took the first element of a tuple; the evaluation after it failed with
    cross-entropy's "must be Tensor, not tuple", losing the run's result."""
    model, out = "tests.models_for_tests:TupleOutput", tmp_path / "t.pt"
    prunerd("train", model, "--data", "digits", "--epochs", "1", "--limit", "100",
            "--out", str(out))  # fmt: skip
    scores = json.loads(prunerd("eval", model, "--checkpoint", str(out), "--json"))
    assert scores["n"] == 359 and 0 <= scores["accuracy"] <= 1  # digits' whole test split


def test_a_model_with_fewer_outputs_than_classes_is_named(tmp_path: Path) -> None:
    result = run(PRUNERD, "train", "tests.models_for_tests:seven_classes", "--data", "digits",
                 "--epochs", "1", "--limit", "100", "--out", str(tmp_path / "s.pt"),
                 cwd=ROOT, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "the model gives 7 outputs per image, but the data has labels up to " in result.stderr


def test_a_builder_is_called_with_the_arguments_it_takes(tmp_path: Path) -> None:
    """A builder needing an argument prunerd cannot give ended in three chained TypeErrors;
    one taking in_channels but not num_classes was called with neither."""
    env = {"PYTHONPATH": str(ROOT)}
    done = run(PRUNERD, "profile", "tests.models_for_tests:needs_depth", "--in-channels", "1",
               "--input-size", "8,8", *QUICK, cwd=ROOT, env=env)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "needs depth, which prunerd cannot give" in done.stderr
    path = tmp_path / "p.json"
    prunerd("profile", "tests.models_for_tests:in_channels_only", "--in-channels", "1",
            "--input-size", "8,8", *QUICK, "--json", str(path))  # fmt: skip
    assert json.loads(path.read_text())["input_shape"][1] == 1  # built for one channel
