"""What a model costs, measured: block discovery, serial latency, device fingerprint, latency table."""

from .models import (
    Checkpoint,
    ModelSpec,
    ModelSpecError,
    build_model,
    builtin_models,
    load_model,
    read_checkpoint,
    resolve_spec,
    save_checkpoint,
)
from .records import Block, BlockProfile, BlockTiming, DeviceInfo, Measurement, Segment

__all__ = [
    "Block",
    "BlockProfile",
    "BlockTiming",
    "Checkpoint",
    "DeviceInfo",
    "Measurement",
    "ModelSpec",
    "ModelSpecError",
    "Segment",
    "build_model",
    "builtin_models",
    "load_model",
    "read_checkpoint",
    "resolve_spec",
    "save_checkpoint",
]
