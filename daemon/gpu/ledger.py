"""Which replica holds which GPU, host-wide: the memory behind placement.

GPUs are a host resource, so one ledger serves every deployment's worker. It is rebuilt from
observation (each container carries its devices in the `io.berth.gpus` label, so a
restarted berthd knows them again before it places anything) and from placements made
here. Placing records the assignment at once, so two replicas created in one round never
get the same whole GPU.
"""

from __future__ import annotations

from collections.abc import Mapping

from daemon.gpu.model import GpuInfo, GpuInventory
from daemon.gpu.placement import Assignment, GpuRequest, Placed, Unplaceable, place

LABEL_GPUS = "io.berth.gpus"  # CDI names, comma-separated


def replica_key(deployment: str, replica_id: str) -> str:
    return f"{deployment}/{replica_id}"


class GpuLedger:
    def __init__(self, inventory: GpuInventory) -> None:
        self.inventory = inventory
        self._gpus: list[GpuInfo] = inventory.gpus()
        self._held: dict[str, Assignment] = {}

    def __repr__(self) -> str:
        return f"<GpuLedger {len(self._gpus)} GPUs, {len(self._held)} held>"

    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def note(self, key: str, devices: tuple[str, ...], gpu_memory: int | None) -> None:
        """An observed replica holds these devices (from its label)."""
        if devices:
            self._held[key] = Assignment(key, devices, gpu_memory)

    def forget(self, key: str) -> None:
        self._held.pop(key, None)

    def place(
        self, key: str, request: GpuRequest, *, free_memory: Mapping[str, int] | None = None
    ) -> Placed | Unplaceable:
        """Choose devices for a new replica and hold them for it (`free_memory` from NVML)."""
        others = [a for k, a in self._held.items() if k != key]
        result = place(request, self._gpus, others, free_memory=free_memory)
        if isinstance(result, Placed) and result.devices:
            self._held[key] = Assignment(key, result.devices, request.gpu_memory)
        return result


def parse_gpus_label(text: str) -> tuple[str, ...]:
    return tuple(d for d in text.split(",") if d)
