"""NvmlInventory's logic against a scripted stand-in for the pynvml module (no driver here).

The real NVML is exercised by tests/gpu/test_nvml_real.py on a machine with a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from daemon.gpu import nvml as gpu_nvml
from daemon.gpu.cdi import CdiDevice, CdiScan
from daemon.gpu.nvml import NvmlInventory, NvmlUnavailable

GiB = 1024**3


class NVMLError(Exception):
    pass


class FakeNvml:
    """Two GPUs; GPU 1 reports neither power nor temperature (as some boards do not)."""

    NVML_TEMPERATURE_GPU = 0
    NVMLError = NVMLError

    def __init__(self, *, loads: bool = True, count: int = 2) -> None:
        self.loads = loads
        self.count = count
        self.initialised = 0

    def nvmlInit(self) -> None:
        if not self.loads:
            raise NVMLError("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return f"GPU-{h}{h}{h}".encode()  # bytes, as old bindings returned

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA RTX 4090"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=24 * GiB, used=(h + 1) * GiB, free=(23 - h) * GiB)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=40 + h, memory=10)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        if h == 1:
            raise NVMLError("Not Supported")
        return 61

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if h == 1:
            raise NVMLError("Not Supported")
        return 215_500


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setattr(gpu_nvml, "pynvml", fake)
    return fake


def cdi(*names: str) -> CdiScan:
    return CdiScan(tuple(CdiDevice("nvidia.com/gpu", n, "/etc/cdi/nvidia.yaml") for n in names))


def test_gpus_and_cdi_names(nvml: FakeNvml) -> None:
    # GPU 0 declared by index, GPU 1 by UUID only.
    inventory = NvmlInventory.open(cdi("0", "GPU-111", "all"))
    assert [
        (g.index, g.name, g.cdi_name, g.uuid, g.memory_total_bytes) for g in inventory.gpus()
    ] == [
        (0, "NVIDIA RTX 4090", "nvidia.com/gpu=0", "GPU-000", 24 * GiB),
        (1, "NVIDIA RTX 4090", "nvidia.com/gpu=GPU-111", "GPU-111", 24 * GiB),
    ]
    assert inventory.describe() == "2 NVIDIA GPUs via NVML (driver 550.54.15): NVIDIA RTX 4090"
    inventory.close()
    inventory.close()
    assert nvml.initialised == 0


def test_samples_leave_unreported_fields_empty(nvml: FakeNvml) -> None:
    inventory = NvmlInventory.open(cdi("0", "1"))
    first, second = inventory.sample()
    assert (first.utilization_percent, first.temperature_c, first.power_w) == (40.0, 61.0, 215.5)
    assert (first.memory_used_bytes, first.memory_free_bytes) == (GiB, 23 * GiB)
    assert (second.utilization_percent, second.temperature_c, second.power_w) == (41.0, None, None)
    inventory.close()
    assert inventory.sample() == []


def test_undeclared_gpus_are_named_by_index_and_flagged(nvml: FakeNvml) -> None:
    inventory = NvmlInventory.open(None)
    assert [g.cdi_name for g in inventory.gpus()] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert inventory.describe().endswith(
        "; 2 not declared by any CDI spec, so containers cannot get them yet: "
        "run `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
    )


def test_no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_nvml, "pynvml", FakeNvml(loads=False))
    with pytest.raises(NvmlUnavailable, match=r"^NVML did not load \(NVML Shared Library"):
        NvmlInventory.open()


def test_driver_without_gpus_shuts_nvml_down(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(count=0)
    monkeypatch.setattr(gpu_nvml, "pynvml", fake)
    with pytest.raises(NvmlUnavailable, match=r"driver 550.54.15\) but sees no GPU"):
        NvmlInventory.open()
    assert fake.initialised == 0
