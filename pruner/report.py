"""What a prune found: a typed, versioned record with one section per pass; ``report.json``.

``depth`` is present when blocks were scored and selected, ``width`` when
channels were gated and fitted, ``split`` when one budget was divided between
the two; there are no placeholder sections.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from profiler.plain import check_version, from_plain, to_plain

from .depth import BlockScore, Candidate, RemovalScore
from .width import BudgetSplit, GateRecord

REPORT_VERSION = 2


@dataclass(frozen=True)
class ModelStats:
    """One model: measured latency (seconds per batch), test accuracy in [0, 1], and per image
    FLOPs, multiply-accumulates and the parameter count."""

    latency_s: float
    accuracy: float
    flops: int
    params: int
    macs: int = 0


@dataclass(frozen=True)
class RoundRecord:
    """One removal round: target (s), what it removed, prediction (s), accuracy before/after
    fine-tuning, and the measured latency (s) when this round was measured."""

    round: int
    target_s: float
    removed: tuple[str, ...]
    predicted_latency_s: float
    accuracy_before_finetune: float
    accuracy_after_finetune: float
    measured_latency_s: float | None = None


@dataclass(frozen=True)
class DepthSection:
    """The block pass: probe scores (DBP only), the candidates with their gains and latencies
    (end-to-end seconds), the scale from piece latencies to end to end, the fraction of
    the baseline latency it was asked for, the baseline profile's prediction check
    (``BlockProfile.check.error``; None when the profile came from the latency table), and
    the removal scores (the removal method only)."""

    scores: tuple[BlockScore, ...]
    candidates: tuple[Candidate, ...]
    additivity_scale: float
    budget: float | None = None
    prediction_check_error: float | None = None
    removals: tuple[RemovalScore, ...] = ()


@dataclass(frozen=True)
class WidthSection:
    """The width pass: its targets and the ratios the fit reached (of the model entering the
    pass), kept channels per group root, where gate training ended, and the MACs and
    parameter ratios of the final model to the unpruned one. Under a latency budget the
    widths were fitted ``fits`` times (see ``WidthOptions.max_fits``), each measured
    (``fit_latencies_s``, seconds per batch, before fine-tuning), and fit ``kept_fit``
    (0-based) was kept; ``targets`` holds the latency ratio that fit used."""

    targets: dict[str, float]
    ratios: dict[str, float]
    widths: dict[str, int]
    gates: GateRecord
    macs_ratio: float
    params_ratio: float
    fits: int = 1
    fit_latencies_s: tuple[float, ...] = ()
    kept_fit: int = 0


@dataclass(frozen=True)
class PruneReport:
    """Everything a prune found.

    ``budget_s`` is the budget when the last pass started (0: no latency
    budget). For fraction budgets the check at the end compares against
    ``budget_check_s`` = fraction x the baseline latency measured interleaved
    with the pruned model (so a change in machine load shifts both alike), the
    baseline traced by torch.fx as the pruned model is (``baseline.latency_s``); for
    budgets in seconds the two are equal. ``profiled_latency_s`` is the baseline's end
    to end in the profile the selection used (None without one), the scale of
    ``predicted_latency_s``. The paths are "" until
    :func:`pruner.prune_checkpoint` writes the files.
    """

    model: str
    dataset: str
    method: str
    budget_s: float
    budget_check_s: float
    predicted_latency_s: float
    removed_blocks: tuple[str, ...]
    baseline: ModelStats
    pruned: ModelStats
    accuracy_before_finetune: float
    speedup: float
    budget_met: bool
    rounds: tuple[RoundRecord, ...]
    device: dict[str, Any]
    config: dict[str, Any]
    seconds: float
    warnings: tuple[str, ...] = ()
    profiled_latency_s: float | None = None
    depth: DepthSection | None = None
    width: WidthSection | None = None
    split: BudgetSplit | None = None
    plan_path: str = ""
    checkpoint_path: str = ""
    export_path: str = ""
    created_at: float = field(default_factory=time.time)
    version: int = REPORT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneReport:
        check_version("report version", d.get("version", 1), REPORT_VERSION)
        return from_plain(cls, d)

    @classmethod
    def from_json(cls, text: str) -> PruneReport:
        return cls.from_dict(json.loads(text))
