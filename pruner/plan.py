"""A pruning plan: what was removed from which model, and what it is predicted to cost.

A pruned model is never pickled: it is rebuilt from (base model spec, plan,
state_dict) by :func:`pruner.load_pruned`. The plan names blocks by
the names block discovery gives them on the unpruned model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from profiler import ADAPTER_ACTIVATIONS, ModelSpec
from profiler.plain import check_version, from_plain, to_plain

PLAN_VERSION = 1


@dataclass(frozen=True)
class RemovedBlock:
    """One removed block and what stands in its place ("identity" | "shortcut" | "adapter" | "zero").

    ``adapter_activation``: what an adapter ends in ("relu", "relu6" or ""); a plan
    written before adapters could end in one reads as "", the model it was tuned as.
    """

    name: str
    replacement: str
    adapter_activation: str = ""

    def __post_init__(self) -> None:
        if self.adapter_activation not in ("", *ADAPTER_ACTIVATIONS):
            raise ValueError(
                f"removed block {self.name!r}: adapter_activation {self.adapter_activation!r} "
                f"is not one of {['', *ADAPTER_ACTIVATIONS]}"
            )


@dataclass(frozen=True)
class PrunePlan:
    """Depth (blocks) and, later, width (channels per layer, HFP) pruning of one base model.

    ``predicted_latency_s`` and ``budget_s`` are seconds per batch of
    ``batch_size`` on the device the latency table describes; 0 when unknown.
    ``channels`` maps a layer's module path to its kept output channels (empty
    for depth-only plans).
    """

    spec: ModelSpec
    removed: tuple[RemovedBlock, ...] = ()
    predicted_latency_s: float = 0.0
    budget_s: float = 0.0
    batch_size: int = 1
    method: str = "dbp"
    channels: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed", tuple(self.removed))
        names = [r.name for r in self.removed]
        if len(set(names)) != len(names):
            raise ValueError(f"plan removes a block twice: {names}")

    @property
    def removed_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, **to_plain(self)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrunePlan:
        check_version("plan version", d.get("version", PLAN_VERSION), PLAN_VERSION)
        return from_plain(cls, d)

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        return cls.from_dict(json.loads(text))
