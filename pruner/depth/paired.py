"""Per-sample outcomes and paired differences: what the probe and removal scores share.

Both compare two predictors on the very same held-out images, so each score
is the mean of per-sample differences and carries their standard error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def outcomes(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample of logits (N, K), y (N,): (1.0 where right else 0.0, cross-entropy in nats),
    each (N,) float32."""
    logits = logits.float()
    return (logits.argmax(1) == y).float(), F.cross_entropy(logits, y, reduction="none")


def paired_se(diff: torch.Tensor) -> float:
    """The standard error of the mean of per-sample differences (N,); 0 with one sample."""
    return float(diff.std() / len(diff) ** 0.5) if len(diff) > 1 else 0.0
