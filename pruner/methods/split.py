"""The split step: how far the block step goes, and how much the width step takes after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from profiler import example_input
from profiler.plain import to_plain

from ..depth import block_yield, candidates_from_profile, min_latency
from ..plan import PrunePlan
from ..rebuild import apply_plan
from ..width import ChannelSpace, split_budget, width_floor, width_yield
from .state import PruneState
from .widths import width_model


@dataclass(frozen=True)
class SplitStep:
    """Divide the budget (a fraction of the baseline latency) by what each pass saves per
    multiplication removed on this device (see :func:`pruner.width.split_budget`)."""

    needs_profile: ClassVar[bool] = True
    needs_heldout: ClassVar[bool] = False

    def __call__(self, s: PruneState) -> None:
        profile, round_to = s.profile, s.options.width.round_to
        fraction = s.options.budget.fraction
        assert profile is not None and fraction is not None  # PruneOptions checks it
        full = apply_plan(s.teacher, PrunePlan(s.spec))
        space = ChannelSpace(full, example_input(s.spec))
        widths = width_model(s, space, profile.end_to_end_s)
        cands, rest_s, _ = candidates_from_profile(profile, {})
        s.split = split_budget(
            fraction,
            depth_floor=min_latency(rest_s, cands) / profile.end_to_end_s,
            width_floor=width_floor(space, widths, round_to),
            block_yield=block_yield(profile),
            width_yield=width_yield(space, widths, round_to),
            depth_share=s.options.width.depth_share,
        )
        s.emit({"event": "split", **to_plain(s.split)})
        s.depth_fraction = s.split.depth
