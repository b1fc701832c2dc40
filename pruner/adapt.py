"""A dataset fed to a model built for other images: channels repeated, then resized.

Fashion-MNIST is 1x28x28; torchvision's resnet18 takes three channels and does
best well above 28 pixels. :class:`InputAdaptation` says how one becomes the
other: a single channel is repeated to the model's channels (what "grayscale
as RGB" means), then the image is resized bilinearly to the model's input size.
It is applied after normalisation, on float batches, so the statistics stay
those of the original images. A checkpoint records the adaptation its model was
trained with, so later commands (eval, prune, fine-tuning) feed it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

ADAPTATION_VERSION = 1
META_KEY = "input_adaptation"  # where a checkpoint's meta keeps it


class AdaptationError(ValueError):
    """A dataset that cannot feed a model: channel counts that neither match nor repeat."""


@dataclass(frozen=True)
class InputAdaptation:
    """Images of ``source_channels`` x ``source_size`` (H, W) into ``channels`` x ``size``."""

    source_channels: int
    source_size: tuple[int, int]
    channels: int
    size: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_size", tuple(int(v) for v in self.source_size))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if self.source_channels not in (1, self.channels):
            raise AdaptationError(
                f"images with {self.source_channels} channels cannot feed a model that takes "
                f"{self.channels}: only equal counts, or one channel repeated, are adapted; "
                "give a dataset with the model's channels or build the model for the data's"
            )

    @property
    def is_identity(self) -> bool:
        return self.source_channels == self.channels and self.source_size == self.size

    def describe(self) -> str:
        """E.g. ``1x28x28 -> 3x64x64 (channel repeated, resized bilinearly)``."""
        steps = []
        if self.source_channels != self.channels:
            steps.append("channel repeated")
        if self.source_size != self.size:
            steps.append("resized bilinearly")
        src = "x".join(str(v) for v in (self.source_channels, *self.source_size))
        dst = "x".join(str(v) for v in (self.channels, *self.size))
        return f"{src} -> {dst} ({', '.join(steps) or 'unchanged'})"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (B, source_channels, *source_size) -> (B, channels, *size)."""
        if self.source_channels != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        if self.source_size != self.size:
            shrink = self.size[0] < self.source_size[0] or self.size[1] < self.source_size[1]
            x = F.interpolate(
                x, size=self.size, mode="bilinear", align_corners=False, antialias=shrink
            )
        return x.contiguous()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": ADAPTATION_VERSION,
            "source_channels": self.source_channels,
            "source_size": list(self.source_size),
            "channels": self.channels,
            "size": list(self.size),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputAdaptation:
        if int(d.get("version", 0)) != ADAPTATION_VERSION:
            raise AdaptationError(
                f"input adaptation version {d.get('version')!r} is not {ADAPTATION_VERSION}; "
                "it was written by another prunerd"
            )
        return cls(
            int(d["source_channels"]), tuple(d["source_size"]), int(d["channels"]), tuple(d["size"])
        )


def recorded_adaptation(meta: Mapping[str, Any] | None) -> InputAdaptation | None:
    """The adaptation a checkpoint's meta recorded, if any."""
    d = (meta or {}).get(META_KEY)
    return None if not d else InputAdaptation.from_dict(d)


class AdaptedBatches:
    """Re-iterable batches of ``source`` with ``adaptation`` applied to every x.

    Everything else (``num_samples``, ``rng_state``, ``len``) is the source's.
    """

    def __init__(self, source: Iterable[Any], adaptation: InputAdaptation) -> None:
        self.source = source
        self.adaptation = adaptation

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.source:
            yield self.adaptation.apply(x), y

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not yet set: never recurse
            raise AttributeError(name)
        return getattr(self.source, name)
