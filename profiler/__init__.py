"""What a model costs, measured: block discovery, serial latency, device fingerprint, latency table.

Every name below loads its module on first use, so the light parts (records, the latency
table, the shipped weights' manifest) cost no torch import: a client command of the
``prunerd`` script starts in a fraction of a second.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "allocator_policy": "allocator",
    "retain_freed_memory": "allocator",
    "BlockGraph": "blocks",
    "count_ops": "blocks",
    "discover": "blocks",
    "ADAPTER_ACTIVATIONS": "records",
    "adapter_name": "rewire",
    "bypass": "rewire",
    "finish": "rewire",
    "new_adapter": "rewire",
    "without_blocks": "rewire",
    "CpuChain": "chain",
    "time_chain": "chain",
    "measure_pair": "compare",
    "torch_threads": "compare",
    "ModelCost": "cost",
    "example_input": "cost",
    "model_cost": "cost",
    "graph_pass": "cut",
    "DatabaseUnusable": "database",
    "open_database": "database",
    "cpu_model": "device",
    "device_info": "device",
    "gpu_count": "nvml",
    "gpu_names": "nvml",
    "gpu_telemetry": "nvml",
    "resolve_device": "device",
    "TraceError": "graph",
    "propagate_shapes": "graph",
    "trace": "graph",
    "InterferenceWatch": "interference",
    "direct_lookups": "lookups",
    "ActivationEstimate": "memory",
    "BatchTooLarge": "memory",
    "available_memory": "memory",
    "check_fits": "memory",
    "estimate_activations": "memory",
    "saved_for_backward": "memory",
    "profile_model": "profiling",
    "Checkpoint": "models",
    "ModelSpec": "models",
    "ModelSpecError": "models",
    "build_model": "models",
    "build_model_for": "models",
    "DEFAULT_INPUT_SIZE": "model_names",
    "DEFAULT_IN_CHANNELS": "model_names",
    "DEFAULT_NUM_CLASSES": "model_names",
    "builtin_models": "model_names",
    "is_program": "model_names",
    "load_model": "models",
    "model_input_channels": "models",
    "model_of_checkpoint": "models",
    "module_device": "models",
    "read_checkpoint": "models",
    "resolve_spec": "models",
    "save_checkpoint": "models",
    "PREDICTION_TOLERANCE": "quality",
    "QualityLimits": "quality",
    "Block": "records",
    "BlockProfile": "records",
    "BlockTiming": "records",
    "DeviceInfo": "records",
    "Interference": "records",
    "Measurement": "records",
    "PredictionCheck": "records",
    "ProfileQuality": "records",
    "Segment": "records",
    "LatencyTable": "table",
    "TableQuality": "table",
    "default_table_path": "table",
    "TimingOptions": "timing",
    "measure": "timing",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
