"""The profile's own checks: interference, spread, drift, additivity; what the table keeps."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler import (
    BlockProfile,
    InterferenceWatch,
    LatencyTable,
    Measurement,
    ModelSpec,
    ProfileQuality,
    QualityLimits,
    TimingOptions,
    load_model,
    profile_model,
)
from profiler.interference import logical_cores
from profiler.quality import drift, spread

QUICK = TimingOptions(budget_s=0.3, min_rounds=9, max_rounds=30)
SPEC = ModelSpec("resnet20", input_size=(8, 8))
needs_proc = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")


def test_spread_is_latency_weighted_relative_iqr() -> None:
    steady = Measurement((1.0, 1.0, 1.0, 1.0, 1.0))
    noisy = Measurement((0.5, 1.0, 1.0, 1.5, 2.0))  # IQR 0.5, median 1.0
    assert spread([steady]) == 0.0
    assert spread([steady, noisy]) == pytest.approx(0.5 / 2.0)
    # Exact (single-sample) measurements, e.g. an identity replacement, carry no spread.
    assert math.isnan(spread([Measurement.exact(0.0)]))


def test_drift_compares_first_and_last_third_of_the_rounds() -> None:
    assert drift(Measurement((1.0,) * 12)) == 0.0
    assert drift(Measurement((1.0,) * 6 + (1.5,) * 6)) == pytest.approx(0.5)
    assert math.isnan(drift(Measurement((1.0,) * 5)))  # too few rounds to tell
    assert math.isnan(drift(None))


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="QualityLimits.spread must be > 0, got -1"):
        QualityLimits(spread=-1)


@needs_proc
def test_watch_counts_this_process_cpu() -> None:
    """What the watch calls our own CPU time is this process's CPU time, whatever the load."""
    cpu0 = time.process_time()
    watch = InterferenceWatch(threads=1).start()
    end = time.perf_counter() + 0.4
    while time.perf_counter() < end:
        pass
    seen = watch.stop()
    used = time.process_time() - cpu0
    assert seen is not None and seen.cores == logical_cores() and seen.threads == 1
    assert seen.wall_s >= 0.4 and used > 0.05
    assert seen.own_cores * seen.wall_s == pytest.approx(used, abs=0.03)  # clock-tick resolution
    assert seen.other_cores >= 0.0 and seen.load_1m_end >= 0.0


def test_failed_profile_is_reported_and_not_stored(tmp_path: Path) -> None:
    """A profile that fails its checks says why and with which fix, and leaves the table alone."""
    strict = QualityLimits(additivity=1e-12, spread=1e-12, drift=1e-12)
    with LatencyTable(tmp_path / "lut.sqlite") as table:
        p = profile_model(
            load_model(SPEC), SPEC, device="cpu", options=QUICK, threads=1, table=table,
            limits=strict,
        )  # fmt: skip
        q = p.quality
        assert q is not None and not q.ok
        assert any("blocks + rest differ from end to end" in x and "Fix:" in x for x in q.problems)
        assert any("timings scatter" in x for x in q.problems)
        (moved,) = [x for x in q.problems if "between the first and last third" in x]
        assert "quieter machine" in moved and "fewer --threads" in moved
        assert q.additivity_error == pytest.approx(p.additivity_error)
        assert len(table) == 0
        # Forced: stored, and marked as failed with its conditions.
        profile_model(
            load_model(SPEC), SPEC, device="cpu", options=QUICK, threads=1, table=table,
            limits=strict, store_failed=True,
        )  # fmt: skip
        summary = table.quality_summary()[p.device.fingerprint]
        assert summary.measurements == len(table) == summary.failed > 0
    # The checks travel with the profile's JSON.
    back = BlockProfile.from_json(p.to_json())
    assert back.quality == q or (back.quality is not None and back.quality.problems == q.problems)
    assert ProfileQuality.from_dict(json.loads(json.dumps(q.to_dict()))).problems == q.problems


def _spinners(n: int) -> list[subprocess.Popen[bytes]]:
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


@needs_proc
def test_a_short_watch_still_sees_others_spinning() -> None:
    """A profile over in a few ms would read the tick counters as zero: the watch waits them out."""
    cores = logical_cores()
    spinners = _spinners(cores)
    try:
        time.sleep(0.3)
        seen = InterferenceWatch(threads=1).start().stop()
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    assert seen is not None and seen.wall_s >= 0.1
    assert seen.other_cores > 0.5


@needs_proc
def test_busy_machine_is_detected_with_cause_and_fix(tmp_path: Path) -> None:
    """Other processes spinning on every core while all cores are timed: flagged, not stored."""
    cores = logical_cores()
    spinners = _spinners(cores)
    try:
        time.sleep(0.3)
        with LatencyTable(tmp_path / "lut.sqlite") as table:
            # A small net and few rounds: threads competing for cores wait at every operator's
            # barrier, so each call is slow, which is the point.
            few = TimingOptions(budget_s=0.1, min_rounds=3, max_rounds=4)
            small = ModelSpec("tests.models_for_tests:inline_residual_net", input_size=(8, 8))
            p = profile_model(
                load_model(small), small, device="cpu", options=few, threads=cores, table=table
            )
            stored = len(table)
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    q = p.quality
    assert q is not None and q.interference is not None
    assert q.interference.threads == cores and q.interference.other_cores > 0.5
    assert not q.ok and stored == 0
    (problem,) = [x for x in q.problems if x.startswith("other processes used")]
    assert "--threads" in problem and "quieter machine" in problem


def _prunerd() -> str:
    exe = shutil.which("prunerd", path=str(Path(sys.executable).parent)) or shutil.which("prunerd")
    assert exe, "the prunerd console script is not installed in this environment"
    return exe


def test_cli_table_lists_quality_and_clears_failed(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    ok = ProfileQuality(ok=True, additivity_error=0.01)
    bad = ProfileQuality(ok=False, problems=("scatter",), additivity_error=0.4)
    with LatencyTable(path) as table:
        from profiler import DeviceInfo

        table.remember_device(DeviceInfo("cpu", "test cpu", "fp0", threads=1))
        table.put_many("fp0", [("a", Measurement((1.0, 1.0, 1.0)), "block:a")], quality=ok)
        table.put_many("fp0", [("b", Measurement((1.0, 2.0, 4.0)), "block:b")], quality=bad)
        table.put_many("fp0", [("c", Measurement((1.0, 1.5, 3.0)), "block:c")], quality=ok)
    env = {**os.environ, "PRUNERD_CACHE": str(tmp_path)}

    def prunerd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_prunerd(), "table", *args, "--table", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    listing = prunerd("list", "--json")
    assert listing.returncode == 0, listing.stderr
    (device,) = json.loads(listing.stdout)["devices"]
    assert device["measurements"] == 3 and device["quality"]["failed"] == 1
    assert device["quality"]["worst_spread"] == pytest.approx(0.75)  # IQR 1.5 / median 2 on "b"
    assert "failed checks=1" in prunerd("list").stdout
    cleared = prunerd("clear", "--failed")
    assert cleared.returncode == 0 and "removed 1 " in cleared.stdout
    cleared = prunerd("clear", "--spread-above", "0.5")  # "c": IQR 1.0 / median 1.5
    assert cleared.returncode == 0 and "removed 1 " in cleared.stdout
    refused = prunerd("clear", "--spread-above", "-1")
    assert refused.returncode != 0 and "must be finite and > 0, got -1.0" in refused.stderr
    with LatencyTable(path) as table:
        assert len(table) == 1 and table.get("fp0", "a") is not None


def test_a_prune_warns_when_its_baseline_profile_failed() -> None:
    import dataclasses

    from pruner.skeleton import profile_warnings

    p = profile_model(load_model(SPEC), SPEC, device="cpu", options=QUICK, threads=1)
    # The real timing's own prediction check may land either side of its tolerance: the
    # quality warnings are checked without it, the check's warning on its own below.
    p = dataclasses.replace(p, check=None)
    failed = dataclasses.replace(
        p, quality=ProfileQuality(ok=False, problems=("timings scatter: ...",))
    )
    assert profile_warnings(dataclasses.replace(p, quality=ProfileQuality(ok=True))) == []
    (warning,) = profile_warnings(failed)
    assert "baseline profile failed its checks" in warning and "timings scatter" in warning


def test_a_prune_warns_when_the_profile_mispredicted_its_own_check() -> None:
    import dataclasses

    from profiler import PREDICTION_TOLERANCE, Measurement, PredictionCheck
    from pruner.skeleton import profile_warnings

    p = profile_model(load_model(SPEC), SPEC, device="cpu", options=QUICK, threads=1)
    removed = tuple(b.block.name for b in p.blocks if b.block.removable)[:2]
    predicted = p.predicted_fraction(removed)
    reference = Measurement((1.0,))

    def checked(error: float):
        measured = Measurement((predicted / (1.0 + error),))
        check = PredictionCheck(removed, predicted, measured, reference)
        return dataclasses.replace(p, quality=ProfileQuality(ok=True), check=check)

    assert profile_warnings(checked(PREDICTION_TOLERANCE / 2)) == []
    (warning,) = profile_warnings(checked(2 * PREDICTION_TOLERANCE))
    assert f"without {len(removed)} blocks +{2 * PREDICTION_TOLERANCE:.1%} off" in warning
