"""What to remove, and removing it: data, training, scores, selection, surgery, fine-tuning."""

from .data import Batches, DataBundle, DatasetInfo, datasets, load_data
from .finetune import KDLoss, finetune, kd_loss
from .train import (
    EpochStats,
    EvalResult,
    FitResult,
    TrainResult,
    cached_baseline,
    evaluate,
    fit,
    train_baseline,
)

__all__ = [
    "Batches",
    "DataBundle",
    "DatasetInfo",
    "EpochStats",
    "EvalResult",
    "FitResult",
    "KDLoss",
    "TrainResult",
    "cached_baseline",
    "datasets",
    "evaluate",
    "finetune",
    "fit",
    "kd_loss",
    "load_data",
    "train_baseline",
]
