"""What to remove, and removing it: data, training, scores, selection, surgery, fine-tuning."""

from importlib import import_module
from typing import Any

from .data import Batches, DataBundle, DatasetInfo, datasets, load_data
from .discrimination import BlockScore, score_blocks
from .finetune import KDLoss, finetune, kd_loss
from .plan import PrunePlan, RemovedBlock
from .surgery import SurgeryError, apply_plan, export_pruned, load_pruned, remove_blocks
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

# Selection and the pipeline import numba (about a second): loaded on first use only.
_LAZY = {
    "BudgetError": "select",
    "Candidate": "select",
    "Selection": "select",
    "greedy_select": "select",
    "select_blocks": "select",
    "ModelStats": "pipeline",
    "PruneConfig": "pipeline",
    "PruneReport": "pipeline",
    "run_pipeline": "pipeline",
    "ChannelSpace": "hfp",
    "fit_widths": "hfp",
    "thin": "hfp",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Batches",
    "BlockScore",
    "BudgetError",
    "Candidate",
    "ChannelSpace",
    "DataBundle",
    "DatasetInfo",
    "EpochStats",
    "EvalResult",
    "FitResult",
    "KDLoss",
    "ModelStats",
    "PruneConfig",
    "PrunePlan",
    "PruneReport",
    "RemovedBlock",
    "Selection",
    "SurgeryError",
    "TrainResult",
    "apply_plan",
    "cached_baseline",
    "datasets",
    "evaluate",
    "export_pruned",
    "finetune",
    "fit",
    "fit_widths",
    "greedy_select",
    "kd_loss",
    "load_data",
    "load_pruned",
    "remove_blocks",
    "run_pipeline",
    "score_blocks",
    "select_blocks",
    "thin",
    "train_baseline",
]
