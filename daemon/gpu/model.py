"""The GPU seam: which GPUs this host can give to containers, and how busy they are.

A leaf module (it imports nothing of berth's): every other GPU module and the metrics build
on its types. `GpuInventory` is the interface. Implementations, picked once at start by
`daemon.gpu.inventory.load_inventory`:
- `daemon.gpu.nvml.NvmlInventory`: NVML loaded (an NVIDIA driver is present): the GPUs with
  names, UUIDs and memory, and live samples. The only module that imports pynvml.
- `daemon.gpu.cdi.CdiInventory`: no NVML, but CDI spec files declare `nvidia.com/gpu`
  devices: their names only, no metrics (also what a host without a driver but with a
  hand-written CDI file, like the test machines, has).
- `daemon.gpu.inventory.NoGpu`: neither; it says why, and apply refuses specs that ask for GPUs.
- `daemon.gpu.fake.FakeGpuInventory` for unit tests.

Containers get GPUs by CDI name (`nvidia.com/gpu=0`), which Podman resolves from the spec
files in /etc/cdi and /var/run/cdi. `gpus()` and `describe()` never block (the GPU list is
read once, when the inventory is made); `sample()` may block (NVML calls), so the daemon
calls it through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

CDI_KIND = "nvidia.com/gpu"
# The directories Podman 4.x reads CDI specs from, lowest priority first.
DEFAULT_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str  # the model, e.g. "NVIDIA H100 80GB HBM3"; generic when only CDI knows it
    cdi_name: str  # what the container is given, e.g. "nvidia.com/gpu=0"
    uuid: str | None = None
    memory_total_bytes: int | None = None  # None: unknown (CDI only)


@dataclass(frozen=True)
class GpuSample:
    """One GPU's state at one moment; a field is None when the GPU does not report it."""

    index: int
    cdi_name: str = ""  # "nvidia.com/gpu=0"; "" when unknown
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None

    @property
    def memory_free_bytes(self) -> int | None:
        if self.memory_used_bytes is None or self.memory_total_bytes is None:
            return None
        return max(self.memory_total_bytes - self.memory_used_bytes, 0)


class GpuInventory(Protocol):
    def gpus(self) -> list[GpuInfo]:
        """The GPUs containers can be given, by index; read once, never blocks."""
        ...

    def sample(self) -> list[GpuSample]:
        """Each GPU's utilisation, memory, temperature and power now; empty when unknown.

        May block (NVML): call it through `trio.to_thread.run_sync`.
        """
        ...

    def describe(self) -> str:
        """One line for `berth status` and the log: "2 NVIDIA GPUs via NVML", ..."""
        ...

    def close(self) -> None: ...


def free_memory(samples: Sequence[GpuSample]) -> dict[str, int]:
    """Free VRAM per CDI name, for `placement.place(free_memory=...)`; known GPUs only."""
    return {s.cdi_name: free for s in samples if (free := s.memory_free_bytes) is not None}
