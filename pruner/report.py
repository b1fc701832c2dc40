"""What a prune found: a typed, versioned record with one section per pass; ``report.json``.

``depth`` is present when blocks were scored and selected, ``width`` when
channels were gated and fitted, ``split`` when one budget was divided between
the two; there are no placeholder sections.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .depth import BlockScore, Candidate
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelStats:
        return cls(
            float(d["latency_s"]),
            float(d["accuracy"]),
            int(d["flops"]),
            int(d["params"]),
            int(d.get("macs", 0)),
        )


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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "removed": list(self.removed)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundRecord:
        return cls(**{**d, "removed": tuple(d["removed"])})


@dataclass(frozen=True)
class DepthSection:
    """The block pass: probe scores (DBP only), the candidates with their gains and latencies
    (end-to-end seconds), the scale from piece latencies to end to end, and the fraction of
    the baseline latency it was asked for."""

    scores: tuple[BlockScore, ...]
    candidates: tuple[Candidate, ...]
    additivity_scale: float
    budget: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": [s.to_dict() for s in self.scores],
            "candidates": [c.to_dict() for c in self.candidates],
            "additivity_scale": self.additivity_scale,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DepthSection:
        return cls(
            tuple(BlockScore.from_dict(s) for s in d["scores"]),
            tuple(Candidate.from_dict(c) for c in d["candidates"]),
            float(d["additivity_scale"]),
            None if d.get("budget") is None else float(d["budget"]),
        )


@dataclass(frozen=True)
class WidthSection:
    """The width pass: its targets and the ratios the fit reached (of the model entering the
    pass), kept channels per group root, where gate training ended, and the MACs and
    parameter ratios of the final model to the unpruned one."""

    targets: dict[str, float]
    ratios: dict[str, float]
    widths: dict[str, int]
    gates: GateRecord
    macs_ratio: float
    params_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gates": self.gates.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WidthSection:
        return cls(
            {str(k): float(v) for k, v in d["targets"].items()},
            {str(k): float(v) for k, v in d["ratios"].items()},
            {str(k): int(v) for k, v in d["widths"].items()},
            GateRecord.from_dict(d["gates"]),
            float(d["macs_ratio"]),
            float(d["params_ratio"]),
        )


def _opt(section: Any) -> dict[str, Any] | None:
    return None if section is None else section.to_dict()


@dataclass(frozen=True)
class PruneReport:
    """Everything a prune found.

    ``budget_s`` is the budget when the last pass started (0: no latency
    budget). For fraction budgets the check at the end compares against
    ``budget_check_s`` = fraction x the baseline latency measured interleaved
    with the pruned model (so a change in machine load shifts both alike); for
    budgets in seconds the two are equal. The paths are "" until
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
    depth: DepthSection | None = None
    width: WidthSection | None = None
    split: BudgetSplit | None = None
    plan_path: str = ""
    checkpoint_path: str = ""
    export_path: str = ""
    created_at: float = field(default_factory=time.time)
    version: int = REPORT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d.update(
            removed_blocks=list(self.removed_blocks),
            baseline=self.baseline.to_dict(),
            pruned=self.pruned.to_dict(),
            rounds=[r.to_dict() for r in self.rounds],
            warnings=list(self.warnings),
            depth=_opt(self.depth),
            width=_opt(self.width),
            split=_opt(self.split),
        )
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneReport:
        version = int(d.get("version", 1))
        if version != REPORT_VERSION:
            raise ValueError(
                f"report version {version} is not supported (this prunerd reads {REPORT_VERSION})"
            )
        sections = {"depth": DepthSection, "width": WidthSection, "split": BudgetSplit}
        return cls(
            **{k: d[k] for k in ("model", "dataset", "method", "device", "config")},
            **{k: float(d[k]) for k in _FLOATS},
            **{k: str(d.get(k, "")) for k in ("plan_path", "checkpoint_path", "export_path")},
            removed_blocks=tuple(d["removed_blocks"]),
            baseline=ModelStats.from_dict(d["baseline"]),
            pruned=ModelStats.from_dict(d["pruned"]),
            budget_met=bool(d["budget_met"]),
            rounds=tuple(RoundRecord.from_dict(r) for r in d["rounds"]),
            warnings=tuple(d.get("warnings", ())),
            **{k: None if d.get(k) is None else t.from_dict(d[k]) for k, t in sections.items()},
            version=version,
        )

    @classmethod
    def from_json(cls, text: str) -> PruneReport:
        return cls.from_dict(json.loads(text))


_FLOATS = (
    "budget_s",
    "budget_check_s",
    "predicted_latency_s",
    "accuracy_before_finetune",
    "speedup",
    "seconds",
    "created_at",
)
