"""Blocks as selection sees them: latencies in end-to-end seconds, gains, and what removal buys."""

from __future__ import annotations

from profiler import BlockProfile

from .select import Candidate


def candidates_from_profile(
    profile: BlockProfile, gains: dict[str, float]
) -> tuple[tuple[Candidate, ...], float, float]:
    """Candidates in end-to-end seconds, the scaled rest (s), and the scale applied.

    The per-piece latencies of a profile add up to a little more or less than
    the measured end-to-end latency (its additivity error); they are scaled by
    ``end_to_end / (blocks + rest)`` so predictions are in end-to-end seconds,
    the unit of the budget.
    """
    pieces = profile.blocks_s + profile.rest_s
    scale = profile.end_to_end_s / pieces if pieces > 0 else 1.0
    cands = tuple(
        Candidate(
            name=t.block.name,
            stage=t.block.stage,
            latency_s=t.latency_s * scale,
            replacement_s=(t.replacement_latency_s or 0.0) * scale,
            gain=gains.get(t.block.name, 0.0),
            removable=t.block.removable,
        )
        for t in profile.blocks
    )
    return cands, profile.rest_s * scale, scale


def block_yield(profile: BlockProfile) -> float:
    """Latency fraction saved per fraction of MACs removed, removing every removable block."""
    cands, _, _ = candidates_from_profile(profile, {})
    saved = sum(c.latency_s - c.replacement_s for c in cands if c.removable)
    macs = sum(t.block.macs for t in profile.blocks)
    macs += sum(seg.flops // 2 for seg in profile.rest)
    cut = sum(t.block.macs for t in profile.blocks if t.block.removable)
    if macs <= 0 or cut <= 0:
        return 0.0
    return (saved / profile.end_to_end_s) / (cut / macs)
