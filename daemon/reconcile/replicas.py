"""What a worker remembers about each of its replicas between rounds, and how it shows them.

Containers are the source of truth for what exists and runs; this memory holds what Podman
does not know: the replica's health for the current run of its container, its restart
count and last exit reason (also kept in the store, so they survive a berthd restart), its
last readiness verdict (in the store too: a restarted berthd serves a replica that was
ready at once), its back-off, and whether it is being drained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.health.backoff import RestartBackoff
from daemon.health.verdicts import ReplicaHealth
from daemon.runtime.interface import ContainerInfo


def exit_reason(c: ContainerInfo) -> str:
    if c.oom_killed:
        return "OOM-killed (memory limit reached)"
    if c.status == "created":
        return "never started"
    if c.exit_code is None:
        return f"container {c.status}"
    if c.exit_code == 137:
        return "killed (exit code 137)"
    return f"exited with code {c.exit_code}"


@dataclass
class ReplicaMemory:
    replica_id: str
    first_seen: float
    restarts: int = 0
    last_exit_reason: str | None = None
    health: ReplicaHealth | None = None  # for the current run of the container
    ports: dict[int, int] = field(default_factory=dict)  # container port -> 127.0.0.1 port
    gpus: tuple[str, ...] = ()  # the CDI devices its container was created with
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    healthy_since: float | None = None
    draining: bool = False
    down_recorded: bool = False  # this stop was counted (reason, back-off) already
    started_here: bool = False  # this berthd started the current run (else: adopted)
    container_id: str = ""  # its container, and the template it was made from
    template_id: str = ""
    # The readiness verdict the store holds for this container (None: none, or one about
    # another container); written only when it changes (DeploymentWorker._keep_verdict).
    verdict: bool | None = None
    # Found running and ready by the store's verdict when this worker first saw it (a
    # restarted berthd): its first health begins ready, confirmed by a probe at once.
    restorable: bool = False

    def __repr__(self) -> str:
        return (
            f"<Replica {self.replica_id} restarts={self.restarts} health={self.health!r} "
            f"draining={self.draining}>"
        )

    def state(self, running: bool, now: float) -> str:
        if self.draining:
            return "draining"
        if not running:
            retry_at = self.backoff.retry_at
            return "crashloop" if retry_at is not None and retry_at > now else "stopped"
        health = self.health
        if health is None:
            return "starting"
        if health.ready:
            return "ready"
        if health.restart_reason is not None or health.ever_ready:
            return "unhealthy"
        return "loading" if health.loading else "starting"


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the admin API shows it (`berth get`)."""

    id: str
    container_id: str
    state: str
    ready: bool
    restarts: int
    host_port: int | None
    spec_id: str
    gpus: tuple[str, ...] = ()
    last_probe: str | None = None
    consecutive_failures: int = 0
    last_exit_reason: str | None = None
    restart_in: float | None = None  # seconds until the next restart attempt (crashloop)
