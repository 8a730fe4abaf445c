"""Reconcile planning: a pure function from (desired, observed) to the actions that close the gap.

Theory of operation (Kubernetes controllers, STYLE.md #4): the worker observes the world
afresh every round (containers from Podman, readiness from probes), calls `plan`, and runs
the actions. `plan` holds no state and does no I/O, so it is safe to call as often as we like
and repeating a round after a crash or a restart converges to the same place.

Invariants the plan keeps:
- A rolling update, surge first (Kubernetes' Deployment): replicas of an older container
  template (a spec update) are replaced by new ones, never more than `replicas + max_surge`
  in all, and a ready old replica is removed only while at least
  `replicas - max_unavailable` replicas stay ready. With the defaults (surge 1,
  unavailable 0), an old replica goes only once its replacement is ready.
- A replica whose container is not running (exited, or created but never started) is
  started again in place, keeping its replica id, once its back-off allows
  (`restart_due`); until then it waits (crashloop) and still counts as one of the replicas,
  so a crashing replica is never "replaced" by a pile of new ones.
- A running replica whose startup or liveness probe failed (`must_restart`) is stopped; the
  rule above starts it again.
- No desired state (removed, disabled, or zero replicas) means every replica goes.
- Up to date means no actions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Desired:
    """What one deployment should look like now."""

    spec_id: str
    template_id: str
    replicas: int
    max_surge: int = 1  # replicas above `replicas` allowed while old ones are replaced
    max_unavailable: int = 0  # ready replicas below `replicas` allowed while replacing


@dataclass(frozen=True)
class ObservedReplica:
    """One replica as observed this round: its container and its readiness."""

    replica_id: str
    container_id: str
    template_id: str
    running: bool
    ready: bool
    created_at: float = 0.0  # monotonic order of creation, newest highest
    restart_due: bool = True  # not running: its back-off has run out
    must_restart: str | None = None  # running: why it must be restarted


@dataclass(frozen=True)
class CreateReplica:
    """Create and start one new replica of the current template."""


@dataclass(frozen=True)
class StartReplica:
    replica_id: str
    container_id: str
    reason: str


@dataclass(frozen=True)
class StopReplica:
    """Drain and stop a replica that failed its startup or liveness probe."""

    replica_id: str
    container_id: str
    reason: str


@dataclass(frozen=True)
class RemoveReplica:
    replica_id: str
    container_id: str
    reason: str


Action = CreateReplica | StartReplica | StopReplica | RemoveReplica


def plan(
    desired: Desired | None, observed: list[ObservedReplica], *, creating: int = 0
) -> list[Action]:
    """The actions that close the gap; `creating` replicas are being made already (their
    containers are not observed yet) and count as present."""
    if desired is None or desired.replicas == 0:
        reason = "deployment removed" if desired is None else "scaled to zero"
        return [RemoveReplica(o.replica_id, o.container_id, reason) for o in observed]

    current = [o for o in observed if o.template_id == desired.template_id]
    stale = [o for o in observed if o.template_id != desired.template_id]
    actions: list[Action] = []

    # Too many of the current template: remove the least useful first (not ready, then newest).
    surplus = len(current) - desired.replicas
    by_usefulness = sorted(current, key=lambda o: (o.ready, -o.created_at))
    for o in by_usefulness[: max(surplus, 0)]:
        actions.append(RemoveReplica(o.replica_id, o.container_id, "scaled down"))
    kept = by_usefulness[max(surplus, 0) :]

    for o in kept:
        if not o.running and o.restart_due:
            actions.append(StartReplica(o.replica_id, o.container_id, "container not running"))
        elif o.running and o.must_restart:
            actions.append(StopReplica(o.replica_id, o.container_id, o.must_restart))

    # Old replicas go as far as availability allows: those not ready serve nothing and go at
    # once; ready ones only while at least `replicas - max_unavailable` stay ready.
    min_available = max(desired.replicas - desired.max_unavailable, 0)
    ready_current = sum(1 for o in kept if o.ready)
    ready_stale = sorted((o for o in stale if o.ready), key=lambda o: o.created_at)
    removable = ready_current + len(ready_stale) - min_available
    leaving = [o for o in stale if not o.ready] + ready_stale[: max(removable, 0)]
    actions.extend(RemoveReplica(o.replica_id, o.container_id, "replaced") for o in leaving)

    # New replicas: as many as are missing, within replicas + max_surge in all.
    remaining = len(kept) + len(stale) - len(leaving) + creating
    room = desired.replicas + desired.max_surge - remaining
    missing = desired.replicas - len(kept) - creating
    actions.extend(CreateReplica() for _ in range(max(0, min(missing, room))))
    return actions
