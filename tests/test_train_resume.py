"""Resumable training: a run killed after epoch k continues to the state an uninterrupted run reaches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pruner.data import load_data
from pruner.schedule import Schedule
from pruner.train import fit, smoothed_cross_entropy
from pruner.train_config import state_path_for
from pruner.train_state import load_state

EPOCHS = 4
SCHEDULE = Schedule(decay="cosine", warmup_epochs=1.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Killed(Exception):
    """Stands in for the signal that ends a training process."""


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def run(state: Path, kill_at_step: int | None = None, resume: bool = False):
    """Fit a fresh model on fresh (seeded, augmented) data; optionally die at a given step."""
    data = load_data("synthetic", size=8, count=256, batch_size=32, seed=3)
    data.train.augment_pad, data.train.augment_flip = 1, True  # the augmentation draws too
    model = tiny_cnn()
    base = smoothed_cross_entropy(0.1)
    steps = [0]

    def loss_fn(logits, labels, inputs):
        steps[0] += 1
        if kill_at_step is not None and steps[0] > kill_at_step:
            raise Killed
        return base(logits, labels, inputs)

    kwargs = dict(lr=0.1, schedule=SCHEDULE, loss_fn=loss_fn, progress=False)
    result = fit(model, data.train, data.val, EPOCHS, state_path=state, resume=resume, **kwargs)
    return model, result


def test_a_killed_run_resumes_to_the_uninterrupted_state(tmp_path: Path) -> None:
    whole_model, whole = run(tmp_path / "whole.state")
    steps_per_epoch = len(load_data("synthetic", size=8, count=256, batch_size=32, seed=3).train)
    state = tmp_path / "killed.state"
    with pytest.raises(Killed):
        run(state, kill_at_step=2 * steps_per_epoch + 3)  # dies inside epoch 3
    saved = load_state(state)
    assert saved.epoch == 2 and saved.step == 2 * steps_per_epoch
    assert [e["epoch"] for e in saved.history] == [1, 2]

    resumed_model, resumed = run(state, resume=True)
    assert [e.epoch for e in resumed.history] == list(range(1, EPOCHS + 1))
    assert [e.lr for e in resumed.history] == [e.lr for e in whole.history]
    for key, value in whole_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert resumed.best_epoch == whole.best_epoch
    assert [e.val.accuracy for e in resumed.history] == [e.val.accuracy for e in whole.history]


def test_resume_continues_with_the_saved_optimizer_state(tmp_path: Path) -> None:
    state = tmp_path / "run.state"
    steps_per_epoch = len(load_data("synthetic", size=8, count=256, batch_size=32, seed=3).train)
    with pytest.raises(Killed):
        run(state, kill_at_step=steps_per_epoch)  # dies as epoch 2 starts
    saved = load_state(state)
    momentum = {k: v["momentum_buffer"] for k, v in saved.optimizer["state"].items()}
    assert saved.epoch == 1 and momentum and all(m.abs().sum() > 0 for m in momentum.values())
    captured = {}
    original = torch.optim.SGD.load_state_dict

    def capture(self, state_dict):
        original(self, state_dict)
        captured.update(
            {k: v["momentum_buffer"].clone() for k, v in self.state_dict()["state"].items()}
        )

    torch.optim.SGD.load_state_dict = capture
    try:
        run(state, resume=True)
    finally:
        torch.optim.SGD.load_state_dict = original
    assert captured.keys() == momentum.keys()
    for k in momentum:
        assert torch.equal(captured[k], momentum[k])


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    state = tmp_path / "run.state"
    with pytest.raises(Killed):
        run(state, kill_at_step=10)
    data = load_data("synthetic", size=8, count=256, batch_size=32, seed=3)
    with pytest.raises(ValueError, match=r"other settings \(epochs: 4 there, 5 now\).*delete it"):
        fit(tiny_cnn(), data.train, data.val, 5, lr=0.1, schedule=SCHEDULE, progress=False,
            state_path=state, resume=True)  # fmt: skip


def test_without_resume_a_run_starts_over_and_rewrites_the_file(tmp_path: Path) -> None:
    state = tmp_path / "run.state"
    with pytest.raises(Killed):
        run(state, kill_at_step=10)
    assert load_state(state).epoch == 1
    _, result = run(state)  # resume=False: epoch 1 again, from fresh weights
    assert [e.epoch for e in result.history] == list(range(1, EPOCHS + 1))
    saved = load_state(state)
    assert saved.epoch == EPOCHS
    assert [e["val"]["accuracy"] for e in saved.history] == [e.val.accuracy for e in result.history]


def test_state_path_sits_beside_the_checkpoint() -> None:
    assert state_path_for("/x/runs/r20.pt") == Path("/x/runs/r20.pt.state")
