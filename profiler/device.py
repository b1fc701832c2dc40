"""Device fingerprint and telemetry: nvidia-ml-py (pynvml) on GPU, CPU model and threads otherwise.

The fingerprint keys the latency table, so it holds exactly what changes
latency and stays put between runs: device model (and GPU UUID), driver,
thread count, torch/CUDA versions, and on CPU the heap policy. Temperatures and clocks are telemetry.
No GPU is never an error on a CPU run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from collections.abc import Iterator

import torch

from .allocator import allocator_policy
from .records import DeviceInfo

# NVML clock-event reasons that mean the GPU slowed itself down (not idle or app-clock settings).
_THROTTLE_REASONS = {
    0x0000000000000004: "sw_power_cap",
    0x0000000000000008: "hw_slowdown",
    0x0000000000000020: "sw_thermal_slowdown",
    0x0000000000000040: "hw_thermal_slowdown",
    0x0000000000000080: "hw_power_brake_slowdown",
}


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(device: str | None) -> torch.device:
    """``None``/"auto" picks the GPU when there is one; "cuda" without a GPU is a clear error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be cpu or cuda, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device!r} asked for a GPU but torch sees none; use --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    return dev


@contextlib.contextmanager
def _nvml() -> Iterator[object | None]:
    """pynvml, initialised, or None when there is no NVML (no driver, no GPU)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        yield None
        return
    try:
        yield pynvml
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _nvml_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_gpu(nv: object, handle: object) -> dict[str, float]:
    """Telemetry of one GPU in base units; fields NVML cannot read are left out."""
    out: dict[str, float] = {}
    readers = {
        "utilization_ratio": lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
        "memory_used_bytes": lambda: float(nv.nvmlDeviceGetMemoryInfo(handle).used),
        "memory_total_bytes": lambda: float(nv.nvmlDeviceGetMemoryInfo(handle).total),
        "temperature_celsius": lambda: float(
            nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
        ),
        "power_watts": lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        "sm_clock_hertz": lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM) * 1e6,
        "memory_clock_hertz": lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_MEM) * 1e6,
        "throttle_reasons": lambda: float(_clock_event_reasons(nv, handle)),
    }
    for key, read in readers.items():
        with contextlib.suppress(Exception):
            out[key] = read()
    return out


def _clock_event_reasons(nv: object, handle: object) -> int:
    fn = (
        getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or nv.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    return int(fn(handle))


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in _THROTTLE_REASONS.items() if mask & bit]


def gpu_telemetry() -> list[dict[str, float]]:
    """Telemetry of every GPU NVML sees (with an ``index`` key); empty without a GPU."""
    with _nvml() as nv:
        if nv is None:
            return []
        gpus = []
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception:
            return []
        for i in range(count):
            with contextlib.suppress(Exception):
                gpus.append({"index": float(i), **_read_gpu(nv, nv.nvmlDeviceGetHandleByIndex(i))})
        return gpus


def gpu_names() -> list[str]:
    with _nvml() as nv:
        if nv is None:
            return []
        try:
            return [
                _nvml_text(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i)))
                for i in range(nv.nvmlDeviceGetCount())
            ]
        except Exception:
            return []


def device_info(device: torch.device | str = "cpu", threads: int | None = None) -> DeviceInfo:
    """Describe ``device``. CPU: model, logical cores, torch threads. CUDA: NVML name, UUID,
    driver, clocks, temperature, power (falling back to torch's view when NVML is absent)."""
    dev = torch.device(device)
    threads = threads or torch.get_num_threads()
    if dev.type != "cuda":
        name = cpu_model()
        details = {
            "logical_cores": str(os.cpu_count() or 0),
            "machine": platform.machine(),
            "mkldnn": str(torch.backends.mkldnn.is_available()),
            "interop_threads": str(torch.get_num_interop_threads()),
            "allocator": allocator_policy(),
        }
        fp = _hash(
            "cpu", name, details["logical_cores"], threads, torch.__version__, details["allocator"]
        )
        return DeviceInfo("cpu", name, fp, threads, torch.__version__, details)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    details = {
        "cuda": str(torch.version.cuda),
        "capability": f"{props.major}.{props.minor}",
        "memory_bytes": str(props.total_memory),
        "multiprocessors": str(props.multi_processor_count),
    }
    telemetry: dict[str, float] = {}
    name = props.name
    with _nvml() as nv:
        if nv is not None:
            with contextlib.suppress(Exception):
                h = nv.nvmlDeviceGetHandleByIndex(index)
                name = _nvml_text(nv.nvmlDeviceGetName(h))
                details["uuid"] = _nvml_text(nv.nvmlDeviceGetUUID(h))
                details["driver"] = _nvml_text(nv.nvmlSystemGetDriverVersion())
                telemetry = _read_gpu(nv, h)
    fp = _hash(
        "cuda",
        name,
        details.get("uuid", index),
        details.get("driver", ""),
        torch.__version__,
        torch.version.cuda,
    )
    return DeviceInfo("cuda", name, fp, threads, torch.__version__, details, telemetry)


def throttle_warning(device: torch.device | str) -> str | None:
    """A warning when the GPU reports a slowdown reason right now (None on CPU or when fine)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    with _nvml() as nv:
        if nv is None:
            return None
        try:
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            mask = _clock_event_reasons(nv, nv.nvmlDeviceGetHandleByIndex(index))
        except Exception:
            return None
    names = throttle_names(mask)
    return f"GPU throttled during measurement: {', '.join(names)}" if names else None
