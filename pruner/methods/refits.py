"""When the width pass refits, to what, and which fit it keeps: pure functions of the
fits measured so far, so a simulation runs the same decisions as the pruner.

Ratios are of the student's latency before thinning; ``goal`` is the budget as a ratio,
``tolerance`` the run's (0.03: 3%).
"""

from __future__ import annotations

from collections.abc import Sequence

# Refits aim this fraction of the tolerance under the budget. The kept fit is timed again
# at the end, with fresh noise, and a refit that lands over the tolerance is a fit wasted.
# Simulated (bench/refit_aim.py, 4 fits, 2% timing noise), half the tolerance under failed
# that check in 13.3% of runs against 17.4% aiming at the budget, and kept the most fits
# within the tolerance (79.0% against 77.5%; a full tolerance under: 70.8%).
REFIT_AIM = 0.5


def refit_ratio(fits: Sequence[tuple[float, float]], goal: float) -> float:
    """The predicted latency ratio to fit next, given each fit so far as (the ratio it was
    fitted to, the ratio it measured) and the ratio ``goal`` to reach.

    Full width measures (1, 1). Where the fits bracket the goal, the next ratio is
    interpolated between the nearest measurement on each side (the first refit after a
    fit that measured under the goal: a secant through (1, 1) and that fit). The width
    model's error grows with how much is thinned, so before any fit measured under the
    goal, the savings it predicts are scaled by what the last fit measured per saving
    predicted. Where the last fit measured no saving at all, or the nearest bracket runs
    backwards (a thinner fit measured slower: noise), the last fit alone decides.
    """
    points = [(1.0, 1.0), *fits]
    under = [p for p in points if p[1] < goal]
    above = [p for p in points if p[1] >= goal]
    if under and above:
        (x0, y0), (x1, y1) = max(under, key=lambda p: p[1]), min(above, key=lambda p: p[1])
        if x1 > x0 and y1 > y0:
            return x0 + (goal - y0) * (x1 - x0) / (y1 - y0)
    fitted, measured = fits[-1]
    if measured < 1.0 and fitted < 1.0:
        return 1.0 - (1.0 - goal) * (1.0 - fitted) / (1.0 - measured)
    return fitted * goal / measured


def next_fit(
    fits: Sequence[tuple[float, float]],
    goal: float,
    *,
    tolerance: float,
    max_fits: int,
    floor: float = 0.0,
    aim: float = REFIT_AIM,
) -> float | None:
    """The ratio to fit next (between ``floor`` and 1, aimed ``aim`` x ``tolerance`` under
    ``goal``), or None to stop: the last fit measured within ``tolerance`` of ``goal``
    either way, ``max_fits`` fits were made, or the refit would repeat a ratio already
    fitted. ``fits`` as for :func:`refit_ratio`."""
    if abs(fits[-1][1] / goal - 1.0) <= tolerance or len(fits) >= max_fits:
        return None
    ratio = min(max(refit_ratio(fits, goal * (1.0 - aim * tolerance)), floor), 1.0)
    return None if any(abs(ratio - r) < 1e-6 for r, _ in fits) else ratio


def kept_fit(overs: Sequence[float], tolerance: float) -> int:
    """Index of the fit to keep, given each fit's measured latency over the budget
    (``latency / budget - 1``): the slowest within the tolerance, else the fastest."""
    within = [i for i, o in enumerate(overs) if o <= tolerance]
    if within:
        return max(within, key=lambda i: overs[i])
    return min(range(len(overs)), key=lambda i: overs[i])
