"""The methods: each a registered list of steps over one :class:`PruneState`.

A step is a callable on the state; ``needs_profile`` says whether it reads the
baseline's block profile (the skeleton takes it once, before the first step),
``needs_heldout`` whether it scores on the held-out split (checked before the profile).
Adding a method is a :class:`pruner.config.MethodInfo` line (its name and what
its options may be) and a :func:`register` call here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config import METHOD_INFO
from .blocks import BlockStep, ExactDP, Greedy, InOrder, l1, probes, removals, seeded_random
from .refits import REFIT_AIM, kept_fit, next_fit, refit_ratio
from .split import SplitStep
from .state import EventFn, ProgressFn, PruneState, first_samples
from .widths import WidthStep


class Step(Protocol):
    @property
    def needs_profile(self) -> bool: ...

    @property
    def needs_heldout(self) -> bool: ...

    def __call__(self, state: PruneState) -> None: ...


@dataclass(frozen=True)
class Method:
    name: str
    steps: tuple[Step, ...]

    @property
    def needs_profile(self) -> bool:
        return any(step.needs_profile for step in self.steps)

    @property
    def needs_heldout(self) -> bool:
        return any(step.needs_heldout for step in self.steps)


REGISTRY: dict[str, Method] = {}


def register(name: str, steps: Sequence[Step]) -> Method:
    """Register ``steps`` as method ``name`` (one :data:`pruner.config.METHOD_INFO` names)."""
    if name not in METHOD_INFO:
        raise ValueError(f"method {name!r} has no MethodInfo in pruner.config.METHOD_INFO")
    REGISTRY[name] = Method(name, tuple(steps))
    return REGISTRY[name]


def method(name: str) -> Method:
    """The registered method ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"method must be one of {tuple(REGISTRY)}, got {name!r}") from None


register("dbp", [BlockStep(probes, ExactDP())])
register("greedy", [BlockStep(probes, Greedy())])
register("removal", [BlockStep(removals, ExactDP())])
register("random", [BlockStep(seeded_random, InOrder("random"))])
register("l1", [BlockStep(l1, InOrder("l1"))])
register("hfp", [WidthStep()])
register("dbp+hfp", [SplitStep(), BlockStep(probes, ExactDP()), WidthStep()])
register("removal+hfp", [SplitStep(), BlockStep(removals, ExactDP()), WidthStep()])

__all__ = [
    "REFIT_AIM",
    "REGISTRY",
    "BlockStep",
    "EventFn",
    "Method",
    "ProgressFn",
    "PruneState",
    "SplitStep",
    "Step",
    "WidthStep",
    "first_samples",
    "kept_fit",
    "next_fit",
    "refit_ratio",
    "method",
    "register",
]
