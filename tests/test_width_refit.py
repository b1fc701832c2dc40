"""The width pass under a latency budget measures each fit and refits one that misses it.

The width-latency model sums convolutions timed alone; what it leaves out can make a fit
miss the budget. These tests give the pass a width model that claims ten times the
savings it measured (the real model, its savings scaled, never under 5% of the model: a
fit to 0.7 runs at about 0.97) and check that the pass catches the miss by measurement,
refits from the same gates, keeps the right fit, and says so in the report and its events.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from profiler import load_model, read_checkpoint
from pruner import (
    ConfigError,
    PruneConfig,
    PruneReport,
    RunOptions,
    WidthOptions,
    apply_plan,
    cached_baseline,
    load_data,
    prune,
)
from pruner.methods import REFIT_AIM, kept_fit, next_fit, refit_ratio, widths

QUICK_RUN = RunOptions(timing_budget_s=0.3, threads=1, test_samples=200)


class Overconfident:
    """A width-latency model whose predicted savings are ``factor`` x the real model's, its
    latency never under 5% of the model's.

    The factor is large so that what it claims for the narrowest widths stays far under the
    budget asked: thinning a digits-sized resnet20 saves little on a CPU (about 10% at the
    narrowest), and three times that put the claimed floor at the budget on some runs.
    """

    def __init__(self, real, factor: float) -> None:
        self.real, self.factor = real, factor
        self.layers, self.base_s = real.layers, real.base_s

    def __call__(self, n):
        return max(self.base_s - self.factor * (self.base_s - self.real(n)), 0.05 * self.base_s)


@given(
    fitted=st.floats(0.05, 0.95),
    goal=st.floats(0.3, 0.95),
    honesty=st.floats(0.2, 1.0),
)
def test_refit_ratio_hits_the_goal_when_the_error_scales_with_the_saving(fitted, goal, honesty):
    # The device saves ``honesty`` of every saving the model predicts.
    def measured(r: float) -> float:
        return 1.0 - honesty * (1.0 - r)

    nxt = refit_ratio([(fitted, measured(fitted))], goal)
    assert measured(nxt) == pytest.approx(goal)


@given(
    saved=st.floats(0.2, 1.0),
    power=st.floats(0.5, 2.0),
    goal=st.floats(0.3, 0.95),
)
def test_refits_close_in_on_a_curved_latency(saved, power, goal):
    # The device's latency at a fitted ratio x: 1 - saved * (1 - x) ** power, which the
    # one-point secant overshoots back and forth; bracketing keeps what each fit measured.
    def measured(x: float) -> float:
        return 1.0 - saved * (1.0 - x) ** power

    assume(measured(0.0) < goal - 0.05)  # the goal is reachable
    history, x = [], goal
    for _ in range(5):
        history.append((x, measured(x)))
        x = min(max(refit_ratio(history, goal), 0.0), 1.0)
    assert min(abs(y / goal - 1.0) for _, y in history) < 0.05


def test_refit_ratio_interpolates_between_the_fits_either_side_of_the_goal():
    # Fitted 0.5, measured 0.58 (slow); fitted 0.405, measured 0.42 (fast): the goal 0.5 is
    # half way between the measurements, so the next fit is half way between the ratios.
    assert refit_ratio([(0.5, 0.58), (0.405, 0.42)], 0.5) == pytest.approx(0.4525)
    # Under the goal at once: the bracket is (1, 1) and that fit, the one-point secant.
    assert refit_ratio([(0.6, 0.5)], 0.6) == pytest.approx(1 - 0.4 * 0.4 / 0.5)


def test_refit_ratio_falls_back_to_the_last_fit_when_the_bracket_runs_backwards():
    # The thinner fit (0.45) measured slower than the wider one (0.5): noise, not a slope.
    assert refit_ratio([(0.45, 0.56), (0.5, 0.46)], 0.5) == pytest.approx(1 - 0.5 * 0.5 / 0.54)


def test_refit_ratio_without_a_measured_saving_scales_the_ratio():
    assert refit_ratio([(0.5, 1.02)], 0.8) == pytest.approx(0.5 * 0.8 / 1.02)
    assert refit_ratio([(0.6, 0.8)], 0.6) == pytest.approx(0.2)  # savings measured at half


def test_next_fit_aims_under_the_budget_and_stops_when_done():
    # Measured 0.58 for 0.5 against a goal of 0.5: refit, aimed REFIT_AIM * 3% under it.
    aim = 0.5 * (1 - REFIT_AIM * 0.03)
    nxt = next_fit([(0.5, 0.58)], 0.5, tolerance=0.03, max_fits=3)
    assert nxt == pytest.approx(refit_ratio([(0.5, 0.58)], aim)) and nxt < 0.5
    # Within the tolerance either way, or out of fits, or clamped onto a ratio fitted: stop.
    assert next_fit([(0.5, 0.514)], 0.5, tolerance=0.03, max_fits=3) is None
    assert next_fit([(0.5, 0.486)], 0.5, tolerance=0.03, max_fits=3) is None
    assert next_fit([(0.5, 0.58), (0.4, 0.56)], 0.5, tolerance=0.03, max_fits=2) is None
    assert next_fit([(0.3, 0.58)], 0.5, tolerance=0.03, max_fits=3, floor=0.3) is None
    assert next_fit([(0.3, 0.58)], 0.5, tolerance=0.03, max_fits=3, floor=0.25) == 0.25


def test_kept_fit_is_the_slowest_within_the_tolerance_else_the_fastest():
    assert kept_fit([0.08, 0.02, -0.05], 0.03) == 1
    assert kept_fit([-0.01, 0.031, -0.2], 0.03) == 0
    assert kept_fit([0.09, 0.05, 0.07], 0.03) == 1


def test_max_fits_is_checked_by_name():
    with pytest.raises(ConfigError, match="max_fits must be >= 1, got 0"):
        WidthOptions(max_fits=0)
    common = dict(model="resnet20", checkpoint="c.pt", data="digits", out="o", method="hfp")
    config = PruneConfig.from_flat(dict(common, budget=0.5, max_fits=2))
    assert config.options.width.max_fits == 2


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    ckpt = cached_baseline(
        "resnet20", "digits", 3, cache_dir=tmp_path_factory.mktemp("ckpt"), progress=False
    )
    spec = read_checkpoint(ckpt).spec
    return load_model(spec, checkpoint=ckpt), spec, load_data("digits", batch_size=128)


def _prune(digits_model, monkeypatch, max_fits: int):
    real = widths.width_model
    monkeypatch.setattr(widths, "width_model", lambda *a: Overconfident(real(*a), 10.0))
    model, spec, data = digits_model
    events: list[dict] = []
    result = prune(
        model, spec, data, 0.7, method="hfp", epochs=0, run=QUICK_RUN,
        width=WidthOptions(max_fits=max_fits), on_event=events.append,
    )  # fmt: skip
    return result, events


def test_a_fit_that_misses_the_budget_is_measured_and_refitted(digits_model, monkeypatch):
    result, events = _prune(digits_model, monkeypatch, max_fits=3)
    report, tolerance = result.report, QUICK_RUN.tolerance
    fits = [e for e in events if e["event"] == "fit"]
    over = [e["latency_s"] / e["budget_s"] - 1 for e in fits]
    assert fits[0]["latency_ratio"] == pytest.approx(0.7)  # the budget, fitted as asked
    assert over[0] > tolerance, "a model claiming 10x its savings fits widths too slow"
    # Refitted while it missed either way, up to max_fits; each refit asked for another ratio.
    assert 2 <= len(fits) <= 3 and all(abs(o) > tolerance for o in over[:-1])
    ratios = [e["latency_ratio"] for e in fits]
    assert len(set(ratios)) == len(ratios)
    width = report.width
    assert width.fits == len(fits)
    assert width.fit_latencies_s == pytest.approx([e["latency_s"] for e in fits])
    # Kept: the slowest fit within the budget, else the fastest; the report names its target.
    within = [i for i, o in enumerate(over) if o <= tolerance]
    best = (
        max(within, key=over.__getitem__) if within else min(range(len(fits)), key=over.__getitem__)
    )
    assert width.kept_fit == best
    assert width.targets["latency"] == pytest.approx(ratios[best])
    assert PruneReport.from_json(report.to_json()) == report
    # The kept model is what the plan rebuilds.
    model, _, _ = digits_model
    apply_plan(model, result.plan).load_state_dict(result.model.state_dict())


def test_one_fit_trusts_the_width_model(digits_model, monkeypatch):
    result, events = _prune(digits_model, monkeypatch, max_fits=1)
    assert not [e for e in events if e["event"] == "fit"]  # nothing measured
    width = result.report.width
    assert (width.fits, width.fit_latencies_s, width.kept_fit) == (1, (), 0)
