"""The profile's own checks: does it add up, is it stable, was the machine quiet?

A profile fails when the pieces do not add up to the whole (additivity), when
samples scatter (spread), when the whole model's latency moved while it was
timed (drift), or when other processes used the cores the timed threads
needed (interference). A failed profile is still returned and reported, but
its measurements are not stored in the latency table unless the caller insists,
so a disturbed run cannot be served later as if it were true.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .records import BlockProfile, Interference, Measurement, ProfileQuality

# The prediction check's error beyond which predictions for pruned models count as rough.
# Reported (CLI, prune warnings, metrics), not a reason to refuse storing: each piece is
# what was measured; how pieces combine in a pruned model is what the check tells.
PREDICTION_TOLERANCE = 0.05


@dataclass(frozen=True)
class QualityLimits:
    """What a profile must meet to be stored. Ratios, not percentages.

    ``additivity_cuda`` is looser than on CPU, for GPU profiles whose pieces were
    timed alone: such a piece pays launch overhead the whole model overlaps
    (measured +14% to +33% at batch 1). Pieces timed in one pass (the default on
    CUDA) are held to ``additivity``.
    ``other_cores`` is how much more than the spare cores (cores - threads)
    other processes may use, on average, before the run counts as disturbed.
    """

    additivity: float = 0.10
    additivity_cuda: float = 0.40
    spread: float = 0.25
    drift: float = 0.15
    other_cores: float = 0.3

    def __post_init__(self) -> None:
        for name in ("additivity", "additivity_cuda", "spread", "drift", "other_cores"):
            if not getattr(self, name) > 0:
                raise ValueError(f"QualityLimits.{name} must be > 0, got {getattr(self, name)}")


def spread(measurements: Sequence[Measurement]) -> float:
    """Latency-weighted relative IQR: sum of IQRs / sum of medians (nan if nothing timed)."""
    timed = [m for m in measurements if m.runs > 1]
    total = sum(m.median_s for m in timed)
    return sum(m.iqr_s for m in timed) / total if total > 0 else math.nan


def drift(whole: Measurement | None) -> float:
    """Median of the last third of the rounds over the first third, minus one (nan if < 9 rounds)."""
    if whole is None or whole.runs < 9:
        return math.nan
    third = whole.runs // 3
    first = statistics.median(whole.samples_s[:third])
    last = statistics.median(whole.samples_s[-third:])
    return last / first - 1.0 if first > 0 else math.nan


def _suggested_threads(seen: Interference) -> int:
    return max(1, math.floor(seen.cores - seen.other_cores))


def _interference_problem(seen: Interference | None, limits: QualityLimits) -> str | None:
    if seen is None or seen.other_cores <= seen.spare_cores + limits.other_cores:
        return None
    fewer = _suggested_threads(seen)
    fix = (
        f"profile on a quieter machine, or with --threads {fewer} (no more threads than the "
        "cores left free)"
        if fewer < seen.threads
        else "profile on a quieter machine (other processes leave no core free)"
    )
    threads = f"{seen.threads} threads were" if seen.threads != 1 else "1 thread was"
    return (
        f"other processes used {seen.other_cores:.2f} of {seen.cores} cores on average while "
        f"{threads} timed (load average {seen.load_1m_end:.2f}): the timed threads were "
        f"competing for the CPU. Fix: {fix}"
    )


# Other processes' average use of the cores, in cores, below which the machine counts as
# quiet: a profile that scatters or does not add up there is short of work, not disturbed.
QUIET_OTHER_CORES = 0.1


def _noise_fix(
    profile: BlockProfile, timed: Sequence[Measurement], seen: Interference | None
) -> str:
    """What to do about timings that scatter or do not add up: on a quiet machine the pieces
    themselves are too short to time to that precision (fixed costs of a call and the
    clock's own jitter are a large share of a few microseconds), elsewhere the machine."""
    pieces = [m.median_s for m in timed if m is not profile.end_to_end and m.runs > 1]
    if seen is None or seen.other_cores > QUIET_OTHER_CORES or not pieces:
        return "re-run on a quieter machine, with fewer --threads or a longer --timing-budget-s"
    return (
        f"no other process here was busy ({seen.other_cores:.2f} cores); the timed pieces are "
        f"short (median {statistics.median(pieces) * 1e6:.0f} us), so fixed costs of a call and "
        "clock jitter weigh on them: give each more work (a larger --batch-size or input size) "
        "or a longer --timing-budget-s"
    )


def assess(
    profile: BlockProfile,
    timed: Sequence[Measurement],
    interference: Interference | None,
    limits: QualityLimits | None = None,
) -> ProfileQuality:
    """Check ``profile``; ``timed`` are the measurements taken in this run (not from the table)."""
    limits = limits or QualityLimits()
    err = profile.additivity_error
    whole = profile.end_to_end if any(m is profile.end_to_end for m in timed) else None
    spr, dft = spread(timed), drift(whole)
    problems = []
    if (p := _interference_problem(interference, limits)) is not None:
        problems.append(p)
    alone_on_gpu = profile.device.kind == "cuda" and profile.timing == "alone"
    add_limit = limits.additivity_cuda if alone_on_gpu else limits.additivity
    noisy = _noise_fix(profile, timed, interference)
    if not abs(err) <= add_limit:
        hint = (
            f"{profile.from_table} pieces came from the latency table: --remeasure times them again"
            if profile.from_table
            else noisy
        )
        problems.append(
            f"blocks + rest differ from end to end by {err:+.1%} (limit ±{add_limit:.0%}). "
            f"Fix: {hint}"
        )
    if spr > limits.spread:
        problems.append(
            f"timings scatter: IQR is {spr:.0%} of the median over the timed pieces (limit "
            f"{limits.spread:.0%}). Fix: {noisy}"
        )
    if abs(dft) > limits.drift:
        problems.append(
            f"the whole model's latency moved {dft:+.0%} between the first and last third of "
            f"the timing (limit ±{limits.drift:.0%}): load or clocks changed while timing. "
            "Fix: re-run on a quieter machine, or with fewer --threads than it has cores "
            "(on a shared host, timing on every core moves most with the other tenants)"
        )
    pred = profile.check.error if profile.check is not None else math.nan
    return ProfileQuality(not problems, tuple(problems), err, spr, dft, interference, pred)
