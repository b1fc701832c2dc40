"""Shipped weights: baselines trained with ``prunerd train``, kept as package data.

Each is a prunerd checkpoint (model spec + state_dict + meta, plain data)
named ``<model>-<dataset>.pt`` in this directory; ``manifest.json`` beside it
records, per checkpoint, the exact command, seed, epochs, training seconds,
machine and measured test accuracy. ``profiler.load_model(name,
pretrained=dataset)`` and every command's ``--pretrained DATASET`` resolve
through :func:`pretrained_checkpoint`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_text
from ..plain import from_plain, to_plain

PRETRAINED_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class PretrainedError(ValueError):
    """Weights asked for that are not shipped."""


@dataclass(frozen=True)
class PretrainedEntry:
    """One shipped checkpoint and how it was made.

    ``test_accuracy`` is a fraction over ``test_n`` test images; ``seconds``
    the training wall time; ``machine`` the CPU (or GPU) and threads it ran on.
    """

    model: str
    dataset: str
    file: str
    test_accuracy: float
    test_loss: float
    test_n: int
    epochs: int
    seed: int
    seconds: float
    command: str
    machine: str
    date: str
    config: dict[str, Any] = field(default_factory=dict)

    to_dict = to_plain
    from_dict = classmethod(from_plain)


def pretrained_filename(model: str, dataset: str) -> str:
    return f"{model}-{dataset}.pt"


def manifest_path(directory: str | os.PathLike[str] | None = None) -> Path:
    return Path(directory or PRETRAINED_DIR) / MANIFEST_NAME


def shipped(directory: str | os.PathLike[str] | None = None) -> list[PretrainedEntry]:
    """The manifest's entries whose checkpoint file is present, in manifest order."""
    path = manifest_path(directory)
    if not path.is_file():
        return []
    manifest = json.loads(path.read_text())
    if manifest.get("version") != MANIFEST_VERSION:
        raise PretrainedError(
            f"{str(path)!r} has manifest version {manifest.get('version')}, this prunerd "
            f"reads {MANIFEST_VERSION}"
        )
    entries = [PretrainedEntry.from_dict(e) for e in manifest.get("checkpoints", [])]
    return [e for e in entries if (path.parent / e.file).is_file()]


def find_pretrained(
    model: str, dataset: str, directory: str | os.PathLike[str] | None = None
) -> PretrainedEntry | None:
    """The shipped entry for ``model`` trained on ``dataset``, or None."""
    for entry in shipped(directory):
        if (entry.model, entry.dataset) == (model, dataset):
            return entry
    return None


def shipped_text(directory: str | os.PathLike[str] | None = None) -> str:
    """What is shipped, for messages: "resnet20 on fashion-mnist, ..." or "none yet"."""
    return ", ".join(f"{e.model} on {e.dataset}" for e in shipped(directory)) or "none yet"


def pretrained_checkpoint(
    model: str, dataset: str, directory: str | os.PathLike[str] | None = None
) -> Path:
    """Path of the shipped checkpoint of ``model`` on ``dataset``; a clear error when absent."""
    entry = find_pretrained(model, dataset, directory)
    if entry is not None:
        return Path(directory or PRETRAINED_DIR) / entry.file
    have = shipped_text(directory)
    out = pretrained_filename(model, dataset)
    raise PretrainedError(
        f"no pretrained {model!r} for dataset {dataset!r} is shipped (shipped: {have}). "
        f"Train one with `prunerd train {model} --data {dataset} --out {out}` and pass "
        f"--checkpoint {out} instead"
    )


def add_to_manifest(
    entry: PretrainedEntry, directory: str | os.PathLike[str] | None = None
) -> Path:
    """Record ``entry`` in the manifest, replacing any entry for the same model and dataset."""
    path = manifest_path(directory)
    entries = []
    if path.is_file():
        entries = json.loads(path.read_text()).get("checkpoints", [])
    entries = [e for e in entries if (e["model"], e["dataset"]) != (entry.model, entry.dataset)]
    entries.append(entry.to_dict())
    text = json.dumps({"version": MANIFEST_VERSION, "checkpoints": entries}, indent=2) + "\n"
    return write_text(path, text)
