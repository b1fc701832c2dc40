"""What to remove, and removing it: ``prune`` in memory, ``prune_checkpoint`` from and to disk.

Subpackages: ``depth`` (block scorers, selection, surgery), ``width`` (filter
pruning), ``methods`` (each method a list of steps). Every name below loads
on first use, so ``pruner.config`` (method and dataset names, options) costs
no torch import.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    # the skeleton and its types
    "PruneResult": "skeleton",
    "prune": "skeleton",
    "prune_checkpoint": "skeleton",
    "Budget": "config",
    "ConfigError": "config",
    "DATASETS": "config",
    "DEFAULT_METHOD": "config",
    "DepthOptions": "config",
    "IOOptions": "config",
    "METHODS": "config",
    "PruneConfig": "config",
    "PruneOptions": "config",
    "RunOptions": "config",
    "WidthOptions": "config",
    "BudgetError": "errors",
    "DepthSection": "report",
    "ModelStats": "report",
    "PruneReport": "report",
    "RoundRecord": "report",
    "WidthSection": "report",
    "PrunePlan": "plan",
    "RemovedBlock": "plan",
    "apply_plan": "rebuild",
    "export_pruned": "rebuild",
    "load_pruned": "rebuild",
    "load_checkpoint_model": "rebuild",
    "load_to_profile": "rebuild",
    "first_samples": "methods",
    # data, training, fine-tuning
    "Batches": "data",
    "DataBundle": "data",
    "DatasetInfo": "data",
    "datasets": "data",
    "load_data": "data",
    "EpochStats": "train",
    "EvalResult": "train",
    "FitResult": "train",
    "TrainingDiverged": "train",
    "TrainResult": "baselines",
    "cached_baseline": "baselines",
    "evaluate": "train",
    "evaluate_checkpoint": "checkpoint_eval",
    "fit": "train",
    "fit_config": "baselines",
    "load_training_data": "baselines",
    "train_baseline": "baselines",
    "train_model": "baselines",
    "Schedule": "schedule",
    "TrainConfig": "train_config",
    "KDLoss": "distill",
    "finetune": "distill",
    "kd_loss": "distill",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
