"""The real NVML inventory, on a machine with an NVIDIA GPU and driver.

Skips, with NVML's own reason, where NVML cannot load (no driver: the usual CI machine).
Run it with `-s` to see what the inventory found.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.gpu.inventory import load_inventory
from daemon.gpu.nvml import NvmlInventory, NvmlUnavailable

pytestmark = pytest.mark.gpu


@pytest.fixture
def nvml() -> Iterator[NvmlInventory]:
    try:
        inventory = NvmlInventory.open()
    except NvmlUnavailable as exc:
        pytest.skip(f"no NVIDIA GPU to test against: {exc}")
    try:
        yield inventory
    finally:
        inventory.close()


def test_real_gpus_and_samples(nvml: NvmlInventory) -> None:
    print(f"\n{nvml.describe()}")
    gpus = nvml.gpus()
    assert gpus
    for gpu in gpus:
        print(f"  {gpu}")
        assert gpu.uuid is not None and gpu.uuid.startswith(("GPU-", "MIG-"))
        assert gpu.memory_total_bytes is not None and gpu.memory_total_bytes > 0
        assert gpu.cdi_name.startswith("nvidia.com/gpu=")
    samples = nvml.sample()
    assert [s.index for s in samples] == [g.index for g in gpus]
    for gpu, s in zip(gpus, samples, strict=True):
        print(f"  {s}")
        assert s.memory_total_bytes == gpu.memory_total_bytes
        assert s.memory_used_bytes is not None and s.memory_total_bytes is not None
        assert 0 <= s.memory_used_bytes <= s.memory_total_bytes
        assert s.utilization_percent is not None and 0 <= s.utilization_percent <= 100
        assert s.temperature_c is None or 0 < s.temperature_c < 120
        assert s.power_w is None or 0 < s.power_w < 2000


def test_load_inventory_prefers_nvml(nvml: NvmlInventory) -> None:
    inventory = load_inventory()
    try:
        assert isinstance(inventory, NvmlInventory)
        assert inventory.describe().startswith(f"{len(nvml.gpus())} NVIDIA GPU")
    finally:
        inventory.close()
