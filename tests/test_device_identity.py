"""Naming the GPU right: CUDA's UUID and PCI address to NVML's device, MIG slices apart."""

import pytest
import torch

from profiler.device import (
    canonical_uuid,
    cuda_identity,
    device_info,
    match_uuid,
    nvml_handle,
    nvml_uuid_candidates,
    pci_bus_id,
)

BARE = "8d1b5c0f-3e2a-4b7c-9d11-0a1b2c3d4e5f"


def test_canonical_uuid_takes_every_spelling() -> None:
    for text in (BARE, BARE.upper(), f"GPU-{BARE}", f"MIG-{BARE}", f"  gpu-{BARE.upper()}\n"):
        assert canonical_uuid(text) == BARE
    for bad in ("", "GPU-", "GPU-1234", f"MIG-GPU-{BARE}/1/0", BARE.replace("-", "")):
        with pytest.raises(ValueError, match="not a GPU UUID"):
            canonical_uuid(bad)


def test_candidates_name_a_whole_gpu_and_a_mig_slice() -> None:
    assert nvml_uuid_candidates(BARE.upper()) == (f"GPU-{BARE}", f"MIG-{BARE}")


def test_match_uuid_finds_the_cuda_device_among_nvml_devices() -> None:
    # NVML sees every GPU, whatever CUDA_VISIBLE_DEVICES hides: CUDA's device 0 can be
    # NVML's third; a MIG slice is found by its own UUID, not its parent's.
    other = "11111111-2222-3333-4444-555555555555"
    slice_ = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    nvml = [f"GPU-{other}", "MIG-GPU-garbled/1/0", f"GPU-{BARE.upper()}", f"MIG-{slice_}"]
    assert match_uuid(BARE, nvml) == 2
    assert match_uuid(slice_, nvml) == 3
    assert match_uuid("99999999-2222-3333-4444-555555555555", nvml) is None
    with pytest.raises(ValueError):
        match_uuid("not-a-uuid", nvml)


def test_pci_bus_id_in_nvml_form() -> None:
    assert pci_bus_id(0, 0x3B, 0) == "00000000:3B:00.0"
    assert pci_bus_id(1, 0xA1, 0x1F) == "00000001:A1:1F.0"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none present")
def test_nvml_finds_each_cuda_device_by_its_uuid() -> None:
    pynvml = pytest.importorskip("pynvml")
    pynvml.nvmlInit()
    try:
        for i in range(torch.cuda.device_count()):
            ident = cuda_identity(i)
            handle, name = nvml_handle(pynvml, ident)
            got = pynvml.nvmlDeviceGetUUID(handle)
            got = got.decode() if isinstance(got, bytes) else got
            assert canonical_uuid(got) == ident.uuid == canonical_uuid(name)
            info = device_info(torch.device("cuda", i))
            assert canonical_uuid(info.details["uuid"]) == ident.uuid
            assert info.details["multiprocessors"] == str(ident.multiprocessors)
            assert "driver" in info.details and info.telemetry
    finally:
        pynvml.nvmlShutdown()
