"""GPU placement: which CDI devices a new replica gets, or why it cannot have any. Pure.

A replica asks for whole GPUs (`resources.gpus = N`) or for a share of one GPU's VRAM
(`resources.gpu_memory = bytes`). The worker passes the inventory's GPUs and every current
assignment on the host (all deployments: GPUs are a host-wide resource); `place` answers.

Invariants:
- A whole GPU goes to one replica only, and never to a GPU that shared replicas use.
- Shared replicas pack onto GPUs while the VRAM they declare fits the GPU's total (and, when
  the caller passes NVML's free memory, what is free right now): GPUs already shared first,
  then the one with the least room left that fits, so whole GPUs stay free for `gpus = N`.
- The choice is deterministic (lowest index on ties), so a retried round asks for the same.
- `apply_problems` refuses at apply what no placement could ever satisfy on this host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from config.spec import Resources
from config.units import format_size
from daemon.gpu.model import GpuInfo


@dataclass(frozen=True)
class GpuRequest:
    """What one replica needs: `gpus` whole GPUs, or `gpu_memory` bytes on one shared GPU."""

    gpus: int = 0
    gpu_memory: int | None = None

    @classmethod
    def of(cls, resources: Resources) -> GpuRequest:
        return cls(gpus=resources.gpus, gpu_memory=resources.gpu_memory)

    @property
    def wants_gpu(self) -> bool:
        return self.gpus > 0 or self.gpu_memory is not None


@dataclass(frozen=True)
class Assignment:
    """GPUs a running (or starting) replica holds."""

    replica: str  # "deployment/replica-id", as reasons show it
    devices: tuple[str, ...]  # CDI names
    gpu_memory: int | None = None  # bytes claimed on each device when shared; None: whole


@dataclass(frozen=True)
class Placed:
    devices: tuple[str, ...]  # CDI names for ContainerSpec.devices; () when none asked


@dataclass(frozen=True)
class Unplaceable:
    reason: str  # e.g. "needs 2 GPUs, 1 free (GPU 0 held by web/abc123)"


def place(
    request: GpuRequest,
    gpus: Sequence[GpuInfo],
    assignments: Sequence[Assignment],
    *,
    free_memory: Mapping[str, int] | None = None,
) -> Placed | Unplaceable:
    """Where a new replica's GPUs come from; `free_memory` (CDI name -> bytes) from NVML."""
    if not request.wants_gpu:
        return Placed(())
    if not gpus:
        return Unplaceable("needs a GPU, and this host has none that berth can use")
    whole: dict[str, str] = {}  # device -> the replica holding it
    shared: dict[str, list[Assignment]] = {}
    for a in assignments:
        for device in a.devices:
            if a.gpu_memory is None:
                whole[device] = a.replica
            else:
                shared.setdefault(device, []).append(a)
    ordered = sorted(gpus, key=lambda g: g.index)
    if request.gpu_memory is None:
        return _place_whole(request.gpus, ordered, whole, shared)
    return _place_shared(request.gpu_memory, ordered, whole, shared, free_memory or {})


def _place_whole(
    count: int, gpus: list[GpuInfo], whole: dict[str, str], shared: dict[str, list[Assignment]]
) -> Placed | Unplaceable:
    free = [g for g in gpus if g.cdi_name not in whole and g.cdi_name not in shared]
    if len(free) >= count:
        return Placed(tuple(g.cdi_name for g in free[:count]))
    busy = []
    for g in gpus:
        if g.cdi_name in whole:
            busy.append(f"GPU {g.index} held by {whole[g.cdi_name]}")
        elif g.cdi_name in shared:
            names = ", ".join(a.replica for a in shared[g.cdi_name])
            busy.append(f"GPU {g.index} shared by {names}")
    noun = "GPU" if count == 1 else "GPUs"
    return Unplaceable(f"needs {count} {noun}, {len(free)} free ({'; '.join(busy)})")


def _place_shared(
    need: int,
    gpus: list[GpuInfo],
    whole: dict[str, str],
    shared: dict[str, list[Assignment]],
    free_memory: Mapping[str, int],
) -> Placed | Unplaceable:
    fits: list[tuple[bool, int, int, GpuInfo]] = []
    why: list[str] = []
    for g in gpus:
        if g.cdi_name in whole:
            why.append(f"GPU {g.index} held by {whole[g.cdi_name]}")
            continue
        if g.memory_total_bytes is None:
            why.append(f"GPU {g.index} has unknown memory")
            continue
        claimed = sum(a.gpu_memory or 0 for a in shared.get(g.cdi_name, ()))
        room = g.memory_total_bytes - claimed
        if room < need:
            why.append(f"GPU {g.index} has {format_size(max(room, 0))} unclaimed")
            continue
        free_now = free_memory.get(g.cdi_name)
        if free_now is not None and free_now < need:
            why.append(f"GPU {g.index} has {format_size(free_now)} free now")
            continue
        # Sort key: already shared first, then the least room left, then the lowest index.
        fits.append((g.cdi_name not in shared, room - need, g.index, g))
    if fits:
        return Placed((min(fits, key=lambda f: f[:3])[3].cdi_name,))
    return Unplaceable(f"needs {format_size(need)} of GPU memory, no GPU has it ({'; '.join(why)})")


def apply_problems(resources: Resources, gpus: Sequence[GpuInfo]) -> list[str]:
    """What a spec's GPU request asks that this host can never give; each names its field."""
    if resources.gpus > 0:
        asked = resources.gpus
        if not gpus:
            return [f"resources.gpus: this host has no GPU that berth can use (got {asked})"]
        if asked > len(gpus):
            have = f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''}"
            return [
                f"resources.gpus: this host has {have}, the spec asks {asked} per replica "
                f"(got {asked})"
            ]
        return []
    if resources.gpu_memory is not None:
        got = format_size(resources.gpu_memory)
        if not gpus:
            return [f"resources.gpu_memory: this host has no GPU that berth can use (got {got})"]
        known = [g.memory_total_bytes for g in gpus if g.memory_total_bytes is not None]
        if not known:
            return [
                "resources.gpu_memory: the memory of this host's GPUs is unknown (declared by "
                f"CDI only, NVML not available), so replicas cannot share them; use "
                f"resources.gpus (got {got})"
            ]
        if resources.gpu_memory > max(known):
            return [
                f"resources.gpu_memory: more than the largest GPU here has "
                f"({format_size(max(known))}) (got {got})"
            ]
    return []


def surge_warnings(
    resources: Resources, replicas: int, surge: int, gpus: Sequence[GpuInfo]
) -> list[str]:
    """An explicit `strategy = "surge"` whose update can never fit on this host: `replicas`
    replicas and `surge` more at once need more GPUs (or VRAM) than it has, even with
    nothing else running. Not a refusal (the first revision runs; an update waits for room
    that never comes): a warning at apply, naming the field."""
    if surge <= 0 or not gpus:
        return []
    needed = replicas + surge
    if resources.gpus > 0:
        fits = len(gpus) // resources.gpus
        each = f"{resources.gpus} GPU{'s' if resources.gpus != 1 else ''} each"
        have = f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''}"
    elif resources.gpu_memory is not None:
        known = [g.memory_total_bytes for g in gpus if g.memory_total_bytes is not None]
        fits = sum(total // resources.gpu_memory for total in known)
        each = f"{format_size(resources.gpu_memory)} of VRAM each"
        have = f"room for {fits}"
    else:
        return []
    if needed <= fits:
        return []
    return [
        f'update.strategy: "surge" starts {surge} new replica{"s" if surge != 1 else ""} beside '
        f"the {replicas} running ({each}) during an update, and this host has {have}: the "
        'update would wait for room that never frees; use strategy = "replace" or leave it '
        "unset (surge while there is room, else replace in place)"
    ]
