"""What a model costs, measured: block discovery, serial latency, device fingerprint, latency table."""

from .allocator import allocator_policy, retain_freed_memory
from .blocks import BlockGraph, count_ops, discover
from .bypass import adapter_name, bypass, finish, new_adapter, without_blocks
from .chain import CpuChain, time_chain
from .compare import measure_pair, torch_threads
from .cost import ModelCost, example_input, model_cost
from .cut import graph_pass
from .device import cpu_model, device_info, gpu_telemetry, resolve_device
from .graph import TraceError, trace
from .interference import InterferenceWatch
from .lookups import direct_lookups
from .measure import profile_model
from .models import (
    Checkpoint,
    ModelSpec,
    ModelSpecError,
    build_model,
    build_model_for,
    builtin_models,
    load_model,
    model_input_channels,
    module_device,
    read_checkpoint,
    resolve_spec,
    save_checkpoint,
)
from .quality import PREDICTION_TOLERANCE, QualityLimits
from .records import (
    Block,
    BlockProfile,
    BlockTiming,
    DeviceInfo,
    Interference,
    Measurement,
    PredictionCheck,
    ProfileQuality,
    Segment,
)
from .table import LatencyTable, TableQuality, default_table_path
from .timing import TimingOptions, measure

__all__ = [
    "adapter_name",
    "bypass",
    "finish",
    "new_adapter",
    "without_blocks",
    "allocator_policy",
    "retain_freed_memory",
    "BlockGraph",
    "count_ops",
    "CpuChain",
    "graph_pass",
    "time_chain",
    "cpu_model",
    "example_input",
    "measure_pair",
    "model_cost",
    "ModelCost",
    "torch_threads",
    "LatencyTable",
    "Interference",
    "InterferenceWatch",
    "PredictionCheck",
    "ProfileQuality",
    "PREDICTION_TOLERANCE",
    "QualityLimits",
    "TableQuality",
    "TimingOptions",
    "TraceError",
    "default_table_path",
    "device_info",
    "direct_lookups",
    "discover",
    "module_device",
    "gpu_telemetry",
    "measure",
    "profile_model",
    "resolve_device",
    "trace",
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
    "build_model_for",
    "builtin_models",
    "load_model",
    "model_input_channels",
    "read_checkpoint",
    "resolve_spec",
    "save_checkpoint",
]
