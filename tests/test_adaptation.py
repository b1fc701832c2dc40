"""A dataset fed to a model built for other images: channels repeated, resized, recorded.

The end-to-end part runs the installed ``prunerd`` as a user would: train a model whose
builder takes three channels (torchvision's signature) on one-channel digits at another
size, then eval and prune it, each command feeding the data the way the checkpoint says.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from profiler import build_model_for, model_input_channels, read_checkpoint
from pruner.adapt import AdaptationError, InputAdaptation, recorded_adaptation
from pruner.data import load_data

from .cli_helpers import PRUNERD, ok
from .cli_helpers import run as cli
from .models_for_tests import torchvision_style_resnet

ROOT = Path(__file__).resolve().parents[1]
RGB_MODEL = "tests.models_for_tests:torchvision_style_resnet"


def test_one_channel_is_repeated_then_resized() -> None:
    a = InputAdaptation(1, (8, 8), 3, (16, 12))
    x = torch.randn(5, 1, 8, 8)
    y = a.apply(x)
    assert y.shape == (5, 3, 16, 12) and y.is_contiguous()
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])
    # bilinear resize of a constant image is the same constant
    assert torch.allclose(a.apply(torch.full((1, 1, 8, 8), 0.7)), torch.full((1, 3, 16, 12), 0.7))
    assert a.describe() == "1x8x8 -> 3x16x12 (channel repeated, resized bilinearly)"


def test_identity_changes_nothing_and_round_trips() -> None:
    a = InputAdaptation(3, (32, 32), 3, (32, 32))
    assert a.is_identity
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.apply(x), x)
    b = InputAdaptation(1, (28, 28), 3, (64, 64))
    assert InputAdaptation.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    assert recorded_adaptation({"input_adaptation": b.to_dict()}) == b
    assert recorded_adaptation({}) is None


def test_channels_that_neither_match_nor_repeat_are_refused() -> None:
    with pytest.raises(AdaptationError, match="3 channels cannot feed a model that takes 1"):
        InputAdaptation(3, (8, 8), 1, (8, 8))
    with pytest.raises(AdaptationError, match="version"):
        InputAdaptation.from_dict({"version": 99, "source_channels": 1})


def test_a_fixed_rgb_builder_says_it_takes_three_channels() -> None:
    spec, model = build_model_for(RGB_MODEL, 1, 10, (16, 16))
    assert (spec.in_channels, spec.input_size) == (3, (16, 16))
    assert model_input_channels(model) == 3
    assert model_input_channels(torchvision_style_resnet(10)) == 3


def test_bundle_for_model_adapts_every_split_and_checks_the_record() -> None:
    bundle = load_data("digits", batch_size=32, limit=64)
    fed, a = bundle.for_model(3, (16, 16))
    for split in (fed.train, fed.val, fed.test):
        x, y = next(iter(split))
        assert x.shape[1:] == (3, 16, 16) and y.dim() == 1
    assert fed.info == bundle.info  # the dataset is still what it is
    assert len(fed.train) == len(bundle.train)
    assert fed.train.num_samples == bundle.train.num_samples  # the source's attributes
    other = InputAdaptation(1, (8, 8), 3, (32, 32))
    with pytest.raises(AdaptationError, match="trained on images adapted 1x8x8 -> 3x32x32"):
        bundle.for_model(3, (16, 16), recorded=other)
    assert bundle.for_model(1, (8, 8))[0] is bundle


def run(*args: str) -> subprocess.CompletedProcess:
    return ok(cli(PRUNERD, *args, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}))


def test_train_eval_prune_a_three_channel_model_on_one_channel_digits(tmp_path: Path) -> None:
    ckpt = tmp_path / "rgb.pt"
    out = run("train", RGB_MODEL, "--data", "digits", "--input-size", "16", "--epochs", "1",
              "--limit", "300", "--threads", "1", "--out", str(ckpt))  # fmt: skip
    assert "input adapted for the model: 1x8x8 -> 3x16x16" in out.stdout
    stored = read_checkpoint(ckpt)
    assert (stored.spec.in_channels, stored.spec.input_size) == (3, (16, 16))
    assert recorded_adaptation(stored.meta) == InputAdaptation(1, (8, 8), 3, (16, 16))

    ev = json.loads(run("eval", RGB_MODEL, "--checkpoint", str(ckpt), "--json").stdout)
    assert ev["n"] == 359 and 0.0 <= ev["accuracy"] <= 1.0  # digits' full test split

    pruned = tmp_path / "pruned"
    # A tiny model's latency moves with the machine: whether the budget is met is the
    # benchmarks' business (bench/real_models.py); here the exit code must say the verdict.
    pruned_run = cli(PRUNERD, "prune", RGB_MODEL, "--checkpoint", str(ckpt), "--data", "digits",
                     "--budget", "0.8", "--epochs", "0", "--limit", "300", "--threads", "1",
                     "--timing-budget-s", "0.2", "--no-table", "--out", str(pruned),
                     cwd=ROOT, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    report = json.loads((pruned / "report.json").read_text())
    assert pruned_run.returncode == (0 if report["budget_met"] else 1), pruned_run.stderr[-3000:]
    assert report["removed_blocks"]
    inherited = read_checkpoint(pruned / "pruned.pt")
    assert recorded_adaptation(inherited.meta) == InputAdaptation(1, (8, 8), 3, (16, 16))
    ev2 = json.loads(
        run("eval", RGB_MODEL, "--checkpoint", str(pruned / "pruned.pt"), "--json").stdout
    )
    assert ev2["n"] == 359
