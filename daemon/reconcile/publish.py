"""Publishing a deployment's ready replicas to its endpoint, and what the endpoint holds.

Each round ends by pointing the endpoint at the replicas that are ready and staying (never
one draining or being replaced: `leaving`); between rounds the prober takes a replica that
failed readiness out at once (`withdraw`), so an unready replica never waits for a round.

With no ready replica the endpoint holds requests, bounded by `cold_start_timeout`, while
one is on its way (a new deployment's first load, a restart, a scale from zero; the
endpoint tells the worker of a held request, so a replica starts at once), and answers 503
at once when none is (none can be made, or every one crash-loops or fails its probes).
An endpoint that cannot be bound is said once per distinct error, and again when it binds.

Passive health (`proxy.outlier`) is the endpoint's; the publisher tells it of each passing
readiness probe (`probe_passed`: an ejected replica returns only at one, after its
ejection time), asks for a probe when an ejection's time is up (the endpoint marks the
replica suspect), and says each ejection and return as an event (`ejected`, `returned`)
at the next round: the endpoint's callbacks run on its hot path and never block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from daemon.reconcile.context import ActiveRevision, WorkerContext
from daemon.reconcile.endpoint_tls import TlsFileError
from daemon.reconcile.replica_ops import ReplicaOps
from daemon.reconcile.replica_spec import REPLICA_HOST
from daemon.reconcile.replicas import ReplicaMemory
from daemon.runtime.interface import LABEL_REPLICA, ContainerInfo
from daemon.scaling.driver import scales_to_zero
from proxy.endpoint import Endpoint
from proxy.upstreams import Upstream


class EndpointPublisher:
    def __init__(
        self,
        name: str,
        ctx: WorkerContext,
        memory: dict[str, ReplicaMemory],
        ops: ReplicaOps,
        *,
        on_suspect: Callable[[str], None],
        on_nudge: Callable[[], None],
    ) -> None:
        self.name = name
        self._ctx = ctx
        self._memory = memory
        self._ops = ops
        self._on_suspect = on_suspect
        self._on_nudge = on_nudge
        self.endpoint_error: str | None = None  # why the endpoint cannot be bound, if so
        self._hold: tuple[Endpoint, float | None] | None = None
        self._watched: Endpoint | None = None  # the endpoint whose ejections are watched
        self._notices: list[tuple[str, str, str]] = []  # (kind, replica, message) to say

    def __repr__(self) -> str:
        return f"<EndpointPublisher {self.name} hold={self._hold and self._hold[1]}>"

    async def publish(
        self, active: ActiveRevision | None, containers: list[ContainerInfo], leaving: set[str]
    ) -> None:
        """Point the endpoint at the ready replicas that are staying."""
        if active is None or not active.spec.enabled:
            await self._ctx.endpoints.close(self.name)
            return
        try:
            endpoint = await self._ctx.endpoints.ensure(
                self.name,
                active.spec.endpoint,
                on_suspect=self._on_suspect,
                drain_timeout=active.spec.update.drain_timeout,
                on_lost=self._on_nudge,
            )
        except (OSError, TlsFileError) as exc:
            error = f"endpoint {active.spec.endpoint.bind}:{active.spec.endpoint.port}: {exc}"
            if error != self.endpoint_error:
                await self._ctx.events.emit(
                    "endpoint-failed", error, deployment=self.name, level=logging.ERROR
                )
            self.endpoint_error = error
            return
        if self._watched is not endpoint:
            endpoint.watch_outliers(self._ejected, self._returned, by_probe=True)
            self._watched = endpoint
        await self._say_notices()
        if self.endpoint_error is not None:
            self.endpoint_error = None
            await self._ctx.events.emit(
                "endpoint",
                f"endpoint listening on {active.spec.endpoint.port}",
                deployment=self.name,
            )
        # With no ready replica, the endpoint holds requests (bounded by cold_start_timeout)
        # while one is on its way: a new deployment's first load, a restart, a scale from
        # zero (the endpoint tells us of a held request, so a replica starts at once).
        coming = active.desired_replicas > 0 or scales_to_zero(active.spec)
        hold = active.spec.endpoint.cold_start_timeout if coming else None
        if hold is not None and self._hopeless(containers):
            hold = None  # nothing is on its way: a held request is answered 503 now
        if self._hold != (endpoint, hold):
            endpoint.hold_when_empty(hold, on_wait=self._on_nudge)
            self._hold = (endpoint, hold)
        endpoint.set_upstreams(self._ready_upstreams(containers, leaving))

    def _hopeless(self, containers: list[ContainerInfo]) -> bool:
        """No replica is on its way to a held request: none is being made, and either none
        can be (its image cannot be pulled, a mount fails) or every one there is crash-loops
        or fails its probes."""
        if self._ops.creating:
            return False
        if not containers:
            return self._ops.create_blocked
        now = trio.current_time()
        states = {
            self._memory[c.labels[LABEL_REPLICA]].state(c.running, now)
            for c in containers
            if c.labels.get(LABEL_REPLICA) in self._memory
        }
        return bool(states) and states <= {"crashloop", "unhealthy"}

    def _ready_upstreams(
        self, containers: list[ContainerInfo], leaving: set[str]
    ) -> list[Upstream]:
        upstreams = []
        for c in containers:
            memory = self._memory.get(c.labels[LABEL_REPLICA])
            if (
                memory is not None
                and c.running
                and c.host_port is not None
                and memory.health is not None
                and memory.health.ready
                and not memory.draining
                and memory.replica_id not in leaving
            ):
                upstreams.append(Upstream(memory.replica_id, REPLICA_HOST, c.host_port))
        return upstreams

    def _ejected(self, upstream: Upstream, why: str, seconds: float) -> None:
        message = f"replica {upstream.replica_id} out of rotation for {seconds:g}s: {why}"
        self._notices.append(("ejected", upstream.replica_id, message))
        self._on_nudge()

    def _returned(self, upstream: Upstream) -> None:
        message = f"replica {upstream.replica_id} back in rotation (its probe passed)"
        self._notices.append(("returned", upstream.replica_id, message))
        self._on_nudge()

    async def _say_notices(self) -> None:
        notices, self._notices = self._notices, []
        for kind, replica, message in notices:
            level = logging.WARNING if kind == "ejected" else logging.INFO
            await self._ctx.events.emit(
                kind, message, deployment=self.name, replica=replica, level=level
            )

    def probe_passed(self, replica_id: str) -> None:
        """A readiness probe of this replica passed (the prober calls it). Never blocks."""
        endpoint = self._ctx.endpoints.get(self.name)
        if endpoint is not None:
            endpoint.probe_passed(replica_id)

    def withdraw(self, replica_id: str) -> None:
        """Out of the endpoint's rotation now, without waiting for a round (the prober calls
        it when the replica's readiness fails). Never blocks."""
        endpoint = self._ctx.endpoints.get(self.name)
        if endpoint is not None:
            upstreams = endpoint.upstreams()
            if any(u.replica_id == replica_id for u in upstreams):
                endpoint.set_upstreams(u for u in upstreams if u.replica_id != replica_id)
