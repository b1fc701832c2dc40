"""The resume file of a training run: everything needed to continue after the last whole epoch.

Written atomically after every epoch (a killed run loses at most the epoch in
progress) as a ``torch.save``d dict of plain data, loadable with
``weights_only=True``: model and optimiser state, the step and epoch reached,
the RNG states (torch's global one and the training batches' own), the
history so far, the best-epoch bookkeeping and the settings the run was
started with, which a resume must match.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from profiler.files import write_with

STATE_FORMAT = "prunerd-train-state"
STATE_VERSION = 1


@dataclass
class TrainState:
    """A run after ``epoch`` whole epochs (``step`` optimiser steps).

    ``history`` holds ``EpochStats.to_dict()`` entries; ``best_state`` the
    weights of the best val epoch so far (None without a val split).
    """

    epoch: int
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    torch_rng: torch.Tensor
    data_rng: dict[str, Any] | None
    history: list[dict[str, Any]]
    settings: dict[str, Any]
    best_accuracy: float | None = None
    best_epoch: int = 0
    since_best: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_state(path: str | os.PathLike[str], state: TrainState) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "model": {k: v.detach().cpu() for k, v in state.model.items()},
        "optimizer": state.optimizer,
        "torch_rng": state.torch_rng,
        "data_rng": state.data_rng,
        # JSON text: floats such as NaN and nested dicts survive weights_only loading.
        "history": json.dumps(state.history),
        "settings": json.dumps(state.settings, sort_keys=True),
        "best": json.dumps(
            {
                "accuracy": state.best_accuracy,
                "epoch": state.best_epoch,
                "since_best": state.since_best,
            }
        ),
        "best_state": state.best_state,
        "extra": json.dumps(state.extra),
    }
    # Complete and synced before it replaces the previous epoch's file, never through a link.
    return write_with(path, lambda f: torch.save(payload, f))


def load_state(path: str | os.PathLike[str]) -> TrainState:
    """Read a resume file written by :func:`save_state`."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"resume file {str(path)!r} cannot be read ({e}); delete it to start over"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a prunerd resume file; delete it to start over")
    if payload.get("version") != STATE_VERSION:
        raise ValueError(
            f"resume file {str(path)!r} has version {payload.get('version')}, this prunerd "
            f"reads {STATE_VERSION}; delete it to start over"
        )
    best = json.loads(payload["best"])
    return TrainState(
        epoch=int(payload["epoch"]),
        step=int(payload["step"]),
        model=payload["model"],
        optimizer=payload["optimizer"],
        torch_rng=payload["torch_rng"],
        data_rng=payload["data_rng"],
        history=json.loads(payload["history"]),
        settings=json.loads(payload["settings"]),
        best_accuracy=best["accuracy"],
        best_epoch=int(best["epoch"]),
        since_best=int(best["since_best"]),
        best_state=payload["best_state"],
        extra=json.loads(payload["extra"]),
    )


def check_settings(path: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Refuse to resume a run started with other settings: the schedule would no longer match.

    Only the settings the stored run recorded are compared, so a file written
    before a setting existed still resumes (with that setting at its default).
    """
    wanted = json.loads(json.dumps(wanted, sort_keys=True))  # compare as stored: JSON types
    diffs = [
        f"{k}: {stored[k]!r} there, {wanted.get(k)!r} now"
        for k in sorted(stored)
        if stored[k] != wanted.get(k)
    ]
    if diffs:
        raise ValueError(
            f"resume file {str(path)!r} belongs to a run with other settings ({'; '.join(diffs)}): "
            "rerun with the same settings to continue it, or delete it to start over"
        )
