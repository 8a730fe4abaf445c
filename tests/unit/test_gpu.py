"""Choosing the inventory (NVML, else CDI, else none), and the fake."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.gpu import nvml as gpu_nvml
from daemon.gpu.cdi import CdiInventory, CdiScan
from daemon.gpu.fake import FakeGpuInventory, GiB, fake_gpus
from daemon.gpu.inventory import NoGpu, load_inventory
from daemon.gpu.model import GpuInventory, GpuSample, free_memory


@pytest.fixture(autouse=True)
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never touch a real driver, even on a GPU machine."""

    def refuse(cdi: CdiScan | None = None) -> gpu_nvml.NvmlInventory:
        raise gpu_nvml.NvmlUnavailable("NVML did not load (NVML Shared Library Not Found)")

    monkeypatch.setattr(gpu_nvml.NvmlInventory, "open", staticmethod(refuse))


def test_no_nvml_no_cdi_says_why(tmp_path: Path) -> None:
    inventory = load_inventory([str(tmp_path / "etc"), str(tmp_path / "run")])
    assert isinstance(inventory, NoGpu)
    assert inventory.gpus() == [] and inventory.sample() == []
    assert inventory.describe() == (
        "no GPU found: NVML did not load (NVML Shared Library Not Found); no CDI spec in "
        f"{tmp_path}/etc or {tmp_path}/run declares nvidia.com/gpu devices"
    )


def test_cdi_when_nvml_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("kind: nvidia.com/gpu\ndevices:\n- name: '0'\n- name: '1'\n")
    inventory = load_inventory([str(tmp_path)])
    assert isinstance(inventory, CdiInventory)
    assert [g.cdi_name for g in inventory.gpus()] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert inventory.describe() == (
        "2 GPUs declared by CDI (no metrics); NVML did not load (NVML Shared Library Not Found)"
    )


def test_nvml_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeGpuInventory(fake_gpus(1))
    monkeypatch.setattr(gpu_nvml.NvmlInventory, "open", staticmethod(lambda cdi=None: fake))
    (tmp_path / "x.yaml").write_text("kind: nvidia.com/gpu\ndevices:\n- name: '0'\n")
    assert load_inventory([str(tmp_path)]) is fake


def test_free_memory_by_device() -> None:
    samples = [
        GpuSample(0, "nvidia.com/gpu=0", memory_used_bytes=3 * GiB, memory_total_bytes=24 * GiB),
        GpuSample(1, "nvidia.com/gpu=1"),
    ]
    assert free_memory(samples) == {"nvidia.com/gpu=0": 21 * GiB}


def test_fake_inventory_is_an_inventory() -> None:
    inventory: GpuInventory = FakeGpuInventory(fake_gpus(2, memory=None))
    assert inventory.describe() == "2 fake GPUs"
    assert [g.memory_total_bytes for g in inventory.gpus()] == [None, None]
    assert FakeGpuInventory().describe().startswith("no GPU found")
