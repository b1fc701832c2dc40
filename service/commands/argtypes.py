"""Argument types shared by the commands: each names the bad value in its error."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def positive(kind: type, finite: bool = False) -> Callable[[str], float | int]:
    """An int or float > 0 (and, with ``finite``, not infinite)."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if not value > 0 or (finite and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(
                f"must be {'finite and ' if finite else ''}> 0, got {value}"
            )
        return value

    parse.__name__ = f"positive {kind.__name__}"  # what argparse prints as the type
    return parse


positive_int = positive(int)
positive_float = positive(float)
positive_seconds = positive(float, finite=True)  # a wait: inf would never end


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
