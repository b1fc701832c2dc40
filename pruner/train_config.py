"""What a training run is asked to do: one typed, JSON round-tripping record.

``prunerd train`` fills it from the command line; the checkpoint's meta and the
manifest of shipped weights store it, so a baseline says exactly how it was made.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .schedule import Schedule

TRAIN_CONFIG_VERSION = 1
STATE_SUFFIX = ".state"


def state_path_for(out: str | os.PathLike[str]) -> Path:
    """Where the resume file of a run writing checkpoint ``out`` lives: ``<out>.state`` beside it."""
    out = Path(out)
    return out.with_name(out.name + STATE_SUFFIX)


def default_schedule() -> Schedule:
    """One epoch of linear warm-up from a tenth of the peak, then cosine to zero."""
    return Schedule(decay="cosine", warmup_epochs=1.0, warmup_start=0.1, final=0.0)


@dataclass(frozen=True)
class TrainConfig:
    """A training run: model, data, optimiser, schedule, augmentation and where it writes.

    ``lr`` is the peak learning rate; ``weight_decay`` applies to conv and
    linear weights only. ``val_fraction`` of the train split is held out for
    best-epoch selection and ``patience`` (0 trains on every training image and
    keeps the last epoch). ``crop_pad`` is the random-crop padding in pixels for
    datasets that support cropping. ``input_size`` (H, W) resizes the images to
    what the model should see (None: the dataset's own size). ``threads`` fixes torch's intra-op threads
    (None leaves torch's choice). ``resume`` continues from the resume file
    beside ``out`` when one is there.
    """

    model: str
    data: str
    out: str
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: Schedule = field(default_factory=default_schedule)
    label_smoothing: float = 0.1
    augment: bool = True
    crop_pad: int = 3
    val_fraction: float = 0.0
    patience: int | None = None
    seed: int = 0
    limit: int | None = None
    input_size: tuple[int, int] | None = None
    data_root: str | None = None
    device: str = "cpu"
    threads: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.input_size is not None:
            object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", 0 < self.lr < math.inf, "finite and > 0"),
            ("weight_decay", 0 <= self.weight_decay < math.inf, "finite and >= 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("crop_pad", self.crop_pad >= 0, ">= 0"),
            ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
            ("patience", self.patience is None or self.patience >= 1, ">= 1"),
            ("threads", self.threads is None or self.threads >= 1, ">= 1"),
            (
                "input_size",
                self.input_size is None
                or (len(self.input_size) == 2 and min(self.input_size) >= 1),
                "two positive ints (H, W)",
            ),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def resume_settings(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (besides fit's own settings)."""
        d = self.to_dict()
        for key in ("out", "resume", "device", "threads", "data_root", "version"):
            d.pop(key)
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schedule"] = self.schedule.to_dict()
        d["input_size"] = None if self.input_size is None else list(self.input_size)
        return {"version": TRAIN_CONFIG_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        if int(d.get("version", TRAIN_CONFIG_VERSION)) != TRAIN_CONFIG_VERSION:
            raise ValueError(
                f"train config version {d.get('version')} is not {TRAIN_CONFIG_VERSION}; "
                "it was written by another prunerd"
            )
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["schedule"] = Schedule.from_dict(d["schedule"])
        return cls(**kwargs)
