"""Device fingerprint and telemetry: nvidia-ml-py (pynvml) on GPU, CPU model and threads otherwise.

The fingerprint keys the latency table, so it holds exactly what changes
latency and stays put between runs: device model, GPU (or MIG slice) UUID and
SM count, driver, thread count, torch/CUDA versions, and on CPU the heap
policy. Temperatures and clocks are telemetry. No GPU is never an error on a CPU run.

NVML numbers GPUs its own way: CUDA's index 0 under ``CUDA_VISIBLE_DEVICES=3``
is NVML's index 3, and a MIG slice is not an NVML index at all. So the NVML
handle of a CUDA device is found by the UUID CUDA reports for it (a MIG slice
has its own, ``MIG-...``), and by its PCI bus id when NVML knows no such UUID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .allocator import allocator_policy
from .nvml import clock_event_reasons, nvml_text, open_nvml, read_gpu, throttle_names
from .records import DeviceInfo


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


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def canonical_uuid(text: str) -> str:
    """The bare lower-case 8-4-4-4-12 UUID of ``GPU-...``, ``MIG-...`` or a bare UUID (torch's form)."""
    t = text.strip().lower()
    for prefix in ("gpu-", "mig-"):
        t = t.removeprefix(prefix)
    if not _UUID.match(t):
        raise ValueError(f"not a GPU UUID: {text!r}")
    return t


def nvml_uuid_candidates(torch_uuid: str) -> tuple[str, str]:
    """The names NVML may know a CUDA device by: a whole GPU (``GPU-``) or a MIG slice (``MIG-``)."""
    bare = canonical_uuid(torch_uuid)
    return (f"GPU-{bare}", f"MIG-{bare}")


def match_uuid(torch_uuid: str, nvml_uuids: Sequence[str]) -> int | None:
    """Position in ``nvml_uuids`` of the device CUDA calls ``torch_uuid`` (None when absent).

    Malformed entries (NVML's pre-R470 ``MIG-GPU-<uuid>/<gi>/<ci>`` names among them) never match.
    """
    want = canonical_uuid(torch_uuid)
    for i, u in enumerate(nvml_uuids):
        with contextlib.suppress(ValueError):
            if canonical_uuid(u) == want:
                return i
    return None


def pci_bus_id(domain: int, bus: int, device: int) -> str:
    """NVML's form of a PCI address, ``DDDDDDDD:BB:DD.0`` (hex; function 0)."""
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


@dataclass(frozen=True)
class CudaIdentity:
    """How CUDA names one of its devices: UUID (bare, as torch reports it) and PCI address."""

    index: int
    uuid: str
    pci_bus_id: str | None
    multiprocessors: int


def cuda_identity(index: int) -> CudaIdentity:
    """The identity of CUDA device ``index`` (as numbered under ``CUDA_VISIBLE_DEVICES``)."""
    props = torch.cuda.get_device_properties(index)
    pci = None
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        pci = pci_bus_id(props.pci_domain_id, props.pci_bus_id, props.pci_device_id)
    return CudaIdentity(index, canonical_uuid(str(props.uuid)), pci, props.multi_processor_count)


def nvml_handle(nv: object, ident: CudaIdentity) -> tuple[object, str]:
    """NVML's handle of the CUDA device ``ident`` and NVML's UUID for it (``GPU-``/``MIG-``).

    By UUID first (right under ``CUDA_VISIBLE_DEVICES`` and for MIG slices), then
    by PCI bus id (the whole GPU). Raises LookupError when NVML knows neither.
    """
    for name in nvml_uuid_candidates(ident.uuid):
        with contextlib.suppress(Exception):
            return nv.nvmlDeviceGetHandleByUUID(name.encode()), name
    if ident.pci_bus_id is not None:
        for lookup in ("nvmlDeviceGetHandleByPciBusId_v2", "nvmlDeviceGetHandleByPciBusId"):
            fn = getattr(nv, lookup, None)
            with contextlib.suppress(Exception):
                if fn is not None:
                    h = fn(ident.pci_bus_id.encode())
                    return h, nvml_text(nv.nvmlDeviceGetUUID(h))
    raise LookupError(
        f"NVML knows no device with UUID {ident.uuid} or PCI bus id {ident.pci_bus_id}"
    )


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
    ident = cuda_identity(index)
    details = {
        "cuda": str(torch.version.cuda),
        "capability": f"{props.major}.{props.minor}",
        "memory_bytes": str(props.total_memory),
        "multiprocessors": str(props.multi_processor_count),
        "cuda_index": str(index),
        "uuid": f"GPU-{ident.uuid}",
    }
    if ident.pci_bus_id:
        details["pci_bus_id"] = ident.pci_bus_id
    telemetry: dict[str, float] = {}
    name = props.name
    with open_nvml() as nv:
        if nv is not None:
            with contextlib.suppress(Exception):
                h, details["uuid"] = nvml_handle(nv, ident)
                details["mig"] = str(details["uuid"].startswith("MIG-"))
                name = nvml_text(nv.nvmlDeviceGetName(h))
                details["driver"] = nvml_text(nv.nvmlSystemGetDriverVersion())
                telemetry = read_gpu(nv, h)
    # The UUID tells MIG slices apart; the SM count says how big a slice is.
    fp = _hash(
        "cuda",
        name,
        details["uuid"],
        props.multi_processor_count,
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
    with open_nvml() as nv:
        if nv is None:
            return None
        try:
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            handle, _ = nvml_handle(nv, cuda_identity(index))
            mask = clock_event_reasons(nv, handle)
        except Exception:
            return None
    names = throttle_names(mask)
    return f"GPU throttled during measurement: {', '.join(names)}" if names else None
