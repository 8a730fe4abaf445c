"""Which GPU inventory this host has: NVML, else CDI, else none (with the reason).

Above the inventories in the import graph: `load_inventory` picks one of
`daemon.gpu.nvml.NvmlInventory` and `daemon.gpu.cdi.CdiInventory`, or `NoGpu`, once, at start.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.gpu.cdi import CdiInventory, scan_cdi
from daemon.gpu.model import CDI_KIND, DEFAULT_CDI_DIRS, GpuInfo, GpuInventory, GpuSample
from daemon.gpu.nvml import NvmlInventory, NvmlUnavailable


class NoGpu:
    """No GPU berth can use; `describe()` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"NoGpu({self.reason!r})"

    def gpus(self) -> list[GpuInfo]:
        return []

    def sample(self) -> list[GpuSample]:
        return []

    def describe(self) -> str:
        return f"no GPU found: {self.reason}"

    def close(self) -> None:
        pass


def load_inventory(cdi_dirs: Sequence[str] = DEFAULT_CDI_DIRS) -> GpuInventory:
    """NVML if it loads and sees a GPU, else the GPUs CDI declares, else `NoGpu` with why.

    Blocks briefly (NVML initialisation, reading the CDI files): call it in a thread.
    """
    cdi = scan_cdi(cdi_dirs)
    try:
        return NvmlInventory.open(cdi)
    except NvmlUnavailable as exc:
        nvml_reason = str(exc)
    inventory = CdiInventory(cdi, nvml_reason=nvml_reason)
    if inventory.gpus():
        return inventory
    dirs = " or ".join(cdi_dirs)
    reason = f"{nvml_reason}; no CDI spec in {dirs} declares {CDI_KIND} devices"
    if cdi.problems:
        reason += f" ({'; '.join(cdi.problems)})"
    return NoGpu(reason)
