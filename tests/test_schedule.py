"""The learning-rate schedule: linear warm-up to the peak, then cosine or linear decay."""

from __future__ import annotations

import json
import math

import pytest

from pruner.schedule import Schedule

STEPS, EPOCHS = 10, 5  # 50 steps, warm-up of 1 epoch = 10 steps


def curve(schedule: Schedule) -> list[float]:
    return [schedule.factor(s, STEPS, EPOCHS) for s in range(STEPS * EPOCHS + 1)]


def test_warmup_rises_linearly_then_cosine_decays_to_final() -> None:
    s = Schedule(decay="cosine", warmup_epochs=1.0, warmup_start=0.1, final=0.0)
    f = curve(s)
    assert f[0] == pytest.approx(0.1)
    assert f[5] == pytest.approx(0.1 + 0.9 * 5 / 10)  # halfway up the ramp
    rises = [b - a for a, b in zip(f[:10], f[1:11])]
    assert all(d == pytest.approx(0.09) for d in rises)  # a straight line
    assert f[10] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    decay = f[10:]
    assert all(b <= a for a, b in zip(decay, decay[1:]))  # never rises again
    assert f[30] == pytest.approx(0.5)  # the cosine's midpoint
    assert f[50] == pytest.approx(0.0, abs=1e-12)
    # Cosine: slow at both ends, fastest in the middle.
    assert f[10] - f[11] < f[29] - f[30] and f[49] - f[50] < f[29] - f[30]


def test_linear_decay_is_one_cycle_shaped() -> None:
    f = curve(Schedule(decay="linear", warmup_epochs=2.0, warmup_start=0.0, final=0.1))
    assert f[0] == 0.0 and f[20] == pytest.approx(1.0)
    falls = [a - b for a, b in zip(f[20:50], f[21:51])]
    assert all(d == pytest.approx(0.9 / 30) for d in falls)
    assert f[50] == pytest.approx(0.1)


def test_no_warmup_is_plain_cosine_and_constant_holds() -> None:
    f = curve(Schedule())
    for s, v in enumerate(f):
        assert v == pytest.approx(0.5 * (1 + math.cos(math.pi * s / 50)))
    assert set(curve(Schedule(decay="constant"))) == {1.0}


def test_steps_past_the_end_stay_at_the_end() -> None:
    s = Schedule(warmup_epochs=1.0, final=0.2)
    assert s.factor(10_000, STEPS, EPOCHS) == pytest.approx(0.2)
    assert s.factor(-3, STEPS, EPOCHS) == pytest.approx(s.warmup_start)


def test_round_trip_and_errors() -> None:
    s = Schedule(decay="linear", warmup_epochs=0.5, warmup_start=0.2, final=0.01)
    assert Schedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="schedule decay 'step' is not one of cosine"):
        Schedule(decay="step")
    with pytest.raises(ValueError, match="warmup_epochs must be finite and >= 0, got -1"):
        Schedule(warmup_epochs=-1)
    with pytest.raises(ValueError, match=r"final must be in \[0, 1\], got 2"):
        Schedule(final=2)
    with pytest.raises(ValueError, match="version 9"):
        Schedule.from_dict({**s.to_dict(), "version": 9})


def test_fit_sets_the_scheduled_rate_before_every_step(monkeypatch) -> None:
    import torch
    from torch import nn

    from pruner.data import load_data
    from pruner.train import fit

    seen: list[float] = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        assert all(g["lr"] == seen[-1] for g in self.param_groups)  # decay and no-decay groups
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    data = load_data("synthetic", size=8, count=128, batch_size=32, val_fraction=0.0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 1, 8, 8))
    schedule = Schedule(decay="cosine", warmup_epochs=1.0)
    result = fit(model, data.train, None, 3, lr=0.2, schedule=schedule, progress=False)
    per_epoch = len(data.train)
    assert len(seen) == 3 * per_epoch
    expected = [0.2 * schedule.factor(s, per_epoch, 3) for s in range(3 * per_epoch)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.02) and max(seen) == pytest.approx(0.2)
    assert [e.lr for e in result.history] == pytest.approx(seen[per_epoch - 1 :: per_epoch])


def test_a_run_no_longer_than_its_warmup_still_decays() -> None:
    # One epoch with the default one-epoch warm-up: half the run rises, half decays.
    s = Schedule(decay="cosine", warmup_epochs=1.0, warmup_start=0.1, final=0.0)
    f = [s.factor(step, STEPS, 1) for step in range(STEPS + 1)]
    assert f[STEPS // 2] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert f[STEPS] == pytest.approx(0.0, abs=1e-12)
    # A warm-up asked longer than the run is capped the same way.
    assert Schedule(warmup_epochs=9.0).factor(STEPS * EPOCHS, STEPS, EPOCHS) == pytest.approx(0.0)


def test_one_epoch_of_training_ends_near_zero_rate(tmp_path) -> None:
    from .cli_helpers import PRUNERD, ok, run

    out = ok(run(PRUNERD, "train", "resnet20", "--data", "digits", "--epochs", "1",
                 "--out", str(tmp_path / "m.pt"), "--json"))  # fmt: skip
    history = json.loads(out.stdout)["fit"]["history"]
    assert history[-1]["lr"] < 0.1 * 0.1  # the last step's rate, a tenth of the peak at most
