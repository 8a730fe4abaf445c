"""Which replica holds which GPU, host-wide: derived from the containers, never remembered.

GPUs are a host resource, so one ledger serves every deployment's worker. What is held has
two sources, and nothing else:
- **Observed**: each successful observation of a deployment's containers replaces that
  deployment's holdings whole (`observed`), from the `io.berth.gpus` label of every
  container that runs or was created and not started yet. A container that vanished
  (`podman rm -f`), died or failed to start holds nothing from the next observation on, and
  a restarted berthd knows every holding again before it places anything. A failed
  observation changes nothing (`observed` is not called).
- **Placed**: what `place` gave a replica whose container is being created. A placement
  lasts until the create is over (`settle`, or `release` when it failed) *and* an
  observation of its deployment began after that (`observing` hands out the stamps), so a
  container that a list could not have seen yet keeps its GPU.

Invariant: a whole GPU is never held by two replicas. `claim` holds a stopped container's
own devices again before it is started, and refuses when they went to another replica
meanwhile (the container must then be replaced).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from daemon.gpu.model import GpuInfo, GpuInventory
from daemon.gpu.placement import Assignment, GpuRequest, Placed, Unplaceable, place
from daemon.gpu.reader import GpuReader

LABEL_GPUS = "io.berth.gpus"  # CDI names, comma-separated


def replica_key(deployment: str, replica_id: str) -> str:
    return f"{deployment}/{replica_id}"


def deployment_of(key: str) -> str:
    return key.partition("/")[0]


class GpuLedger:
    def __init__(self, inventory: GpuInventory) -> None:
        self.inventory = inventory
        self.reader = GpuReader(inventory)  # every GPU sample goes through it
        self._gpus: list[GpuInfo] = inventory.gpus()
        self._observed: dict[str, dict[str, Assignment]] = {}  # deployment -> key -> held
        self._placed: dict[str, Assignment] = {}
        self._settled: dict[str, int] = {}  # key -> stamp at which its create was over
        self._stamps = itertools.count()

    def __repr__(self) -> str:
        return f"<GpuLedger {len(self._gpus)} GPUs, {len(self.holdings())} held>"

    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def holdings(self) -> dict[str, Assignment]:
        """Every replica's GPUs now, observed or placed (a placement wins for its key)."""
        held = {k: a for by_key in self._observed.values() for k, a in by_key.items()}
        held.update(self._placed)
        return held

    def observing(self) -> int:
        """A stamp to take just before listing a deployment's containers; pass it to
        `observed` with what the list showed."""
        return next(self._stamps)

    def observed(self, deployment: str, held: Iterable[Assignment], *, stamp: int) -> None:
        """A successful observation of `deployment` that began at `stamp` showed `held`."""
        self._observed[deployment] = {a.replica: a for a in held if a.devices}
        for key in [k for k in self._placed if deployment_of(k) == deployment]:
            settled = self._settled.get(key)
            if settled is not None and settled < stamp:
                self._drop_placement(key)

    def place(
        self, key: str, request: GpuRequest, *, free_memory: Mapping[str, int] | None = None
    ) -> Placed | Unplaceable:
        """Choose devices for a new replica and hold them for it (`free_memory` from NVML)."""
        others = [a for k, a in self.holdings().items() if k != key]
        result = place(request, self._gpus, others, free_memory=free_memory)
        if isinstance(result, Placed) and result.devices:
            self._placed[key] = Assignment(key, result.devices, request.gpu_memory)
            self._settled.pop(key, None)
        return result

    def settle(self, key: str) -> None:
        """The replica's container was created: its placement ends with the next observation
        that begins from now on (which shows the container's own label)."""
        if key in self._placed:
            self._settled[key] = next(self._stamps)

    def release(self, key: str) -> None:
        """The replica's GPUs are free now: its create failed, or its container was removed."""
        self._drop_placement(key)
        observed = self._observed.get(deployment_of(key))
        if observed is not None:
            observed.pop(key, None)

    def claim(self, key: str, devices: tuple[str, ...], gpu_memory: int | None) -> str | None:
        """Hold a stopped container's own `devices` again before it starts; None when they
        are its, else who holds them now (the container cannot start with them)."""
        if not devices:
            return None
        others = [a for k, a in self.holdings().items() if k != key]
        for other in others:
            shared = other.devices if other.gpu_memory is not None else ()
            taken = set(other.devices) & set(devices)
            if taken and not (gpu_memory is not None and set(taken) <= set(shared)):
                return f"{', '.join(sorted(taken))} held by {other.replica}"
        self._placed[key] = Assignment(key, devices, gpu_memory)
        self._settled[key] = next(self._stamps)  # observation shows it from now on
        return None

    def _drop_placement(self, key: str) -> None:
        self._placed.pop(key, None)
        self._settled.pop(key, None)


def parse_gpus_label(text: str) -> tuple[str, ...]:
    return tuple(d for d in text.split(",") if d)
