"""Argument types shared by the commands: each names the bad value in its error."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def _number(kind: type, text: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None


def _bounded(kind: type, zero: bool) -> Callable[[str], float | int]:
    """An int, or a finite float, > 0 (or >= 0 with ``zero``): an infinite rate, budget or
    wait means nothing here, and NaN fails every comparison."""
    rule = ("finite and " if kind is float else "") + (">= 0" if zero else "> 0")

    def parse(text: str) -> float | int:
        value = _number(kind, text)
        if not ((value >= 0) if zero else (value > 0)) or not value < math.inf:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    parse.__name__ = f"{'non-negative' if zero else 'positive'} {kind.__name__}"  # argparse's name
    return parse


positive_int = _bounded(int, zero=False)
positive_float = _bounded(float, zero=False)
non_negative_int = _bounded(int, zero=True)
non_negative_float = _bounded(float, zero=True)


def refused(message: str) -> Callable[[str], Any]:
    """The type of a flag no value passes (one whose meaning moved): argparse prints
    ``argument --FLAG: message``."""

    def parse(text: str) -> Any:
        raise argparse.ArgumentTypeError(message)

    return parse


# `--budget-s` read as the latency budget in seconds by some, the timing budget by others.
BUDGET_S_REFUSED = (
    "ambiguous: the latency budget is --budget-ms MS (or --budget FRACTION), the timing "
    "budget per measurement --timing-budget-s S"
)


def fraction(text: str) -> float:
    """A fraction of the baseline latency, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"a fraction of the baseline latency in (0, 1], got {value}"
        )
    return value


def input_size(text: str) -> tuple[int, int]:
    """'32', '32,32' or '28x28' -> (H, W)."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"input size must be H,W (e.g. 32,32), got {text!r}"
        ) from None
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"input size must be two positive ints H,W, got {text!r}")
    return hw  # type: ignore[return-value]
