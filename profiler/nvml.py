"""GPU telemetry and names from NVML (nvidia-ml-py), without importing torch.

The daemon's /metrics reads these at every scrape; importing torch for them would hold
its memory (and start CUDA) in a process that runs no model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# NVML clock-event reasons that mean the GPU slowed itself down (not idle or app-clock settings).
THROTTLE_REASONS = {
    0x0000000000000004: "sw_power_cap",
    0x0000000000000008: "hw_slowdown",
    0x0000000000000020: "sw_thermal_slowdown",
    0x0000000000000040: "hw_thermal_slowdown",
    0x0000000000000080: "hw_power_brake_slowdown",
}


@contextlib.contextmanager
def open_nvml() -> Iterator[object | None]:
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


def nvml_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpu(nv: object, handle: object) -> dict[str, float]:
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
        "throttle_reasons": lambda: float(clock_event_reasons(nv, handle)),
    }
    for key, read in readers.items():
        with contextlib.suppress(Exception):
            out[key] = read()
    return out


def clock_event_reasons(nv: object, handle: object) -> int:
    fn = (
        getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or nv.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    return int(fn(handle))


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


def gpu_telemetry() -> list[dict[str, float]]:
    """Telemetry of every GPU NVML sees (with an ``index`` key); empty without a GPU."""
    with open_nvml() as nv:
        if nv is None:
            return []
        gpus = []
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception:
            return []
        for i in range(count):
            with contextlib.suppress(Exception):
                gpus.append({"index": float(i), **read_gpu(nv, nv.nvmlDeviceGetHandleByIndex(i))})
        return gpus


def gpu_names() -> list[str]:
    with open_nvml() as nv:
        if nv is None:
            return []
        try:
            return [
                nvml_text(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i)))
                for i in range(nv.nvmlDeviceGetCount())
            ]
        except Exception:
            return []


def gpu_count() -> int:
    """The GPUs NVML sees on this machine (all of them, whatever CUDA_VISIBLE_DEVICES
    says); 0 without a driver or a GPU."""
    with open_nvml() as nv:
        if nv is None:
            return 0
        try:
            return int(nv.nvmlDeviceGetCount())
        except Exception:
            return 0
