"""The swap: which idle deployments to scale to zero so that a woken one's replica fits. Pure.

Theory of operation. A deployment is *woken* when requests wait at its endpoint, no replica
of it is ready, and the placement could not give its new replica the GPUs (or VRAM) it
asks (`daemon.gpu.placement`: Unplaceable). The worker then asks `choose_victims` which
other deployments to scale to zero, with a `Candidate` per deployment that holds GPUs now
(`daemon.gpu.ledger`, derived from containers) and its endpoint's live figures.

The rules (docs/architecture.md, "Scaling"; docs/gateway.md):
- A victim has `replicas.min = 0`, its count is the autoscaler's (not pinned by `berth
  scale`, not fixed), holds GPUs, has nothing in flight and nothing queued at its endpoint,
  has been idle (no request) for at least its `min_idle`, and a priority <= the woken one's.
  One already being swapped out (for another) is no candidate: what it frees is that one's.
- Order: lowest priority first, then least recently used (longest idle), then name.
- A deployment in the woken one's `group` is evicted only when the others outside it cannot
  free enough: first only outside the group, then with the group after them.
- Victims are added in that order until the woken request fits (by the placement, with
  the victims' holdings gone; NVML's free memory is not asked here, as the victims' VRAM
  is not free yet); then any victim the fit does not need is dropped, the last added first,
  so no more is evicted than the fit needs.
- Nothing fits even with every candidate gone: no swap (`NoVictim`, with why, per
  deployment): the request waits in its queue up to `cold_start_timeout`.

`settled` says when the victims' GPUs are free enough to create at once: their holdings are
gone (the caller's check), and, where NVML reports the memory of those GPUs, the woken
replica's VRAM is free on one of them (`gpu_memory`), or, for whole GPUs, at least
`SETTLED_FREE_FRACTION` of each freed GPU is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from config.units import format_duration
from daemon.gpu.model import GpuInfo, GpuSample
from daemon.gpu.placement import Assignment, GpuRequest, Placed, place

# A whole GPU is free once NVML shows at least this share of its memory free.
SETTLED_FREE_FRACTION = 0.9


@dataclass(frozen=True)
class Woken:
    """The deployment whose replica found no room, and what it asks."""

    deployment: str
    request: GpuRequest
    priority: int = 0
    group: str | None = None


@dataclass(frozen=True)
class Candidate:
    """Another deployment that holds GPUs now, as the swap sees it."""

    deployment: str
    holds: tuple[Assignment, ...]  # its replicas' GPUs (the ledger's)
    min_replicas: int = 0
    autoscaled: bool = True  # its count is the autoscaler's: not pinned, not fixed
    priority: int = 0
    group: str | None = None
    min_idle: float = 0.0
    in_flight: int = 0  # requests under way at its endpoint (queued ones included)
    waiting: int = 0  # requests queued at its endpoint
    idle_for: float = 0.0  # seconds since its last request ended (or since it was loaded)
    leaving: bool = False  # being swapped out already (for another deployment)

    def refusal(self, woken: Woken) -> str | None:
        """Why it cannot be evicted for `woken`; None when it can."""
        if self.leaving:
            return "is being swapped out already"
        if self.min_replicas > 0:
            return f"has replicas.min = {self.min_replicas}"
        if not self.autoscaled:
            return "has its count pinned (berth scale)"
        if self.in_flight > 0 or self.waiting > 0:
            return f"has {self.in_flight} request{'s' if self.in_flight != 1 else ''} in flight"
        if self.idle_for < self.min_idle:
            return (
                f"has been idle {format_duration(round(self.idle_for, 1))} "
                f"< min_idle {format_duration(self.min_idle)}"
            )
        if self.priority > woken.priority:
            return f"has priority {self.priority} > {woken.priority}"
        return None

    def same_group(self, woken: Woken) -> bool:
        return self.group is not None and self.group == woken.group


@dataclass(frozen=True)
class SwapChoice:
    victims: tuple[Candidate, ...]  # in eviction order

    def describe(self, woken: Woken, placement_reason: str) -> str:
        """The `swap` event's text: who goes, for whom, why, and the inputs."""
        parts = []
        for v in self.victims:
            group = f", group {v.group} (the woken one's)" if v.same_group(woken) else ""
            parts.append(
                f"{v.deployment} (idle {format_duration(round(v.idle_for, 1))}, min_idle "
                f"{format_duration(v.min_idle)}, priority {v.priority} <= {woken.priority}"
                f"{group})"
            )
        names = ", ".join(v.deployment for v in self.victims)
        return (
            f"swapping out {names} for {woken.deployment}: its new replica {placement_reason}; "
            f"victim{'s' if len(self.victims) != 1 else ''} {'; '.join(parts)}"
        )


@dataclass(frozen=True)
class NoVictim:
    reason: str  # e.g. "b has 1 request in flight; c has replicas.min = 1"


def _order(c: Candidate) -> tuple[int, float, str]:
    return (c.priority, -c.idle_for, c.deployment)


def choose_victims(
    woken: Woken,
    candidates: Iterable[Candidate],
    gpus: Sequence[GpuInfo],
    held: Sequence[Assignment],
) -> SwapChoice | NoVictim:
    """The deployments to scale to zero so that `woken.request` fits (see the module doc).

    `held`: every GPU holding on the host but the woken deployment's own (the candidates'
    included)."""
    eligible: list[Candidate] = []
    refused: list[str] = []
    for c in candidates:
        if c.deployment == woken.deployment or not c.holds:
            continue
        why = c.refusal(woken)
        if why is None:
            eligible.append(c)
        else:
            refused.append(f"{c.deployment} {why}")
    outside = sorted((c for c in eligible if not c.same_group(woken)), key=_order)
    inside = sorted((c for c in eligible if c.same_group(woken)), key=_order)
    for pool in (outside, outside + inside):
        chosen = _fill(woken.request, pool, gpus, held)
        if chosen is not None:
            return SwapChoice(tuple(chosen))
    if not refused:
        refused.append(
            "no other deployment with replicas.min = 0 holds a GPU"
            if not eligible
            else "evicting every idle deployment would not free enough"
        )
    elif eligible:
        refused.append(
            f"evicting {', '.join(c.deployment for c in eligible)} would not free enough"
        )
    return NoVictim("; ".join(refused))


def _fill(
    request: GpuRequest,
    pool: Sequence[Candidate],
    gpus: Sequence[GpuInfo],
    held: Sequence[Assignment],
) -> list[Candidate] | None:
    """The victims from `pool`, in its order, that let `request` fit; None when all do not."""

    def fits(victims: Sequence[Candidate]) -> bool:
        gone = {a.replica for v in victims for a in v.holds}
        left = [a for a in held if a.replica not in gone]
        return isinstance(place(request, gpus, left), Placed)

    chosen: list[Candidate] = []
    for c in pool:
        chosen.append(c)
        if fits(chosen):
            break
    else:
        return None
    for c in reversed(list(chosen)):  # the last added first: keep the earliest in order
        if len(chosen) > 1 and fits([v for v in chosen if v is not c]):
            chosen.remove(c)
    return chosen


def settled(request: GpuRequest, devices: Iterable[str], samples: Sequence[GpuSample]) -> bool:
    """Whether NVML shows the freed `devices` free enough for `request`: for a share of VRAM,
    one of them has it free; for whole GPUs, each has `SETTLED_FREE_FRACTION` free. A device
    NVML reports nothing about counts as free (the holdings alone decide there)."""
    by_name = {s.cdi_name: s for s in samples if s.cdi_name}
    verdicts = []
    for device in devices:
        sample = by_name.get(device)
        free = sample.memory_free_bytes if sample is not None else None
        if sample is None or free is None or sample.memory_total_bytes is None:
            verdicts.append(True)
        elif request.gpu_memory is not None:
            verdicts.append(free >= request.gpu_memory)
        else:
            verdicts.append(free >= SETTLED_FREE_FRACTION * sample.memory_total_bytes)
    if request.gpu_memory is not None:
        return any(verdicts) or not verdicts
    return all(verdicts)
