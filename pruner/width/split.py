"""How one latency budget is divided between removing blocks and thinning channels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetSplit:
    """How dbp+hfp and removal+hfp divide one latency budget between their two passes.

    ``depth`` is the block pass's budget (a fraction of the baseline latency),
    ``width`` the latency ratio the width pass takes of what the blocks leave;
    their product is the budget. The yields are the latency fraction each pass
    saves per fraction of multiplications it removes on this device: removing
    every removable block, and thinning every channel group to half.
    """

    depth: float
    width: float
    block_yield: float
    width_yield: float
    reason: str


def split_budget(
    budget: float,
    *,
    depth_floor: float,
    width_floor: float,
    block_yield: float,
    width_yield: float,
    depth_share: float | None = None,
) -> BudgetSplit:
    """Divide ``budget`` (fraction of the baseline latency) between blocks and widths.

    Where thinning saves less latency per multiplication than removing blocks
    (a CPU at batch 1: the removed channels mostly ran in parallel with the kept
    ones), the blocks take the budget alone, down to 5% above their floor
    (``depth_floor``, every stage keeping one block), and the widths only what
    is left. Otherwise, or with an explicit ``depth_share``, the width pass
    takes ``budget ** (1 - share)`` (share 0.5 by default), never more than
    halfway from 1 to ``width_floor`` (every group at its narrowest).
    """
    ceiling = min(1.0, depth_floor * 1.05)  # the least the block pass is asked for
    if depth_share is None and width_yield < block_yield:
        depth = max(budget, ceiling)
        reason = (
            f"removing blocks saves more latency per multiplication removed than thinning "
            f"({block_yield:.2f} against {width_yield:.2f}): blocks take the budget"
            + (f" down to {depth:.3f}, widths the rest" if depth > budget else " alone")
        )
    else:
        share = 0.5 if depth_share is None else depth_share
        halfway = width_floor + 0.5 * (1.0 - width_floor)
        width = min(1.0, max(budget ** (1.0 - share), halfway))
        depth = max(budget / width, ceiling)
        reason = (
            f"depth_share {depth_share}"
            if depth_share is not None
            else f"thinning saves as much latency per multiplication removed as removing "
            f"blocks ({width_yield:.2f} against {block_yield:.2f}): the passes share the cut"
        )
        if budget ** (1.0 - share) < halfway:
            reason += (
                f"; widths capped at {halfway:.3f}, halfway to their floor {width_floor:.3f}, "
                "blocks take the rest"
            )
    return BudgetSplit(depth, min(1.0, budget / depth), block_yield, width_yield, reason)
