"""One reconcile worker per deployment: observe, plan, act, publish the ready set. Repeat.

Theory of operation. Each round reads the desired state from the store (the active revision,
or nothing once the deployment is removed), observes the deployment's containers in Podman
(by label: the source of truth, so adoption after a berthd restart needs no special case),
probes the running ones, asks the pure `plan` for actions and executes them. Rounds run on a
timer and at once when nudged (an apply, an rm, a Podman event).

Invariants:
- The endpoint is given only replicas that are ready and not about to be removed; a replica
  leaves the rotation before it is drained, stopped and removed.
- Every container this worker creates carries the instance, deployment, replica, spec-id and
  template labels before it starts, so a crash at any point leaves a container the next
  round (or the next berthd) recognises.
- Cancelling the worker (berthd stopping) never stops a container.
- A worker whose deployment is gone and whose containers are all removed closes the endpoint
  and returns.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

import trio

from config.canonical import spec_id, template_id
from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.endpoints import EndpointManager
from daemon.events import EventLog
from daemon.health import ProbeFn, ReplicaHealth
from daemon.plan import (
    Action,
    CreateReplica,
    Desired,
    ObservedReplica,
    RemoveReplica,
    StartReplica,
    plan,
)
from daemon.ports import HostPortAllocator
from daemon.replica_spec import (
    REPLICA_HOST,
    ReplicaIdentity,
    ReplicaPlacement,
    replica_container,
)
from daemon.runtime import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_REPLICA,
    LABEL_SPEC_ID,
    LABEL_TEMPLATE,
    ContainerInfo,
    ContainerRuntime,
    RuntimeFailure,
)
from daemon.store import ReplicaRecord, Store
from daemon.store_access import StoreAccess
from proxy.upstreams import Upstream

log = logging.getLogger("berthd")

FAST_ROUND = 0.5  # while converging
SLOW_ROUND = 5.0  # when up to date (capped by the readiness period)
DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the admin API shows it."""

    id: str
    container_id: str
    state: str
    ready: bool
    restarts: int
    host_port: int | None
    spec_id: str
    gpus: tuple[str, ...] = ()
    last_probe: str | None = None


@dataclass(frozen=True)
class WorkerSnapshot:
    desired: int
    ready: int
    replicas: tuple[ReplicaView, ...]
    status: str
    endpoint_error: str | None = None


@dataclass
class WorkerContext:
    instance: str
    runtime: ContainerRuntime
    store: StoreAccess
    events: EventLog
    endpoints: EndpointManager
    ports: HostPortAllocator
    probe: ProbeFn


@dataclass
class _Active:
    deployment_id: str
    revision: int
    spec: DeploymentSpec
    spec_id: str
    template_id: str
    desired_replicas: int


@dataclass
class _ReplicaMemory:
    health: ReplicaHealth = field(default_factory=ReplicaHealth)
    first_seen: float = 0.0
    restarts: int = 0
    draining: bool = False


def desired_count(spec: DeploymentSpec, pinned: int | None) -> int:
    if not spec.enabled:
        return 0
    if pinned is not None:
        return pinned
    # The autoscaler (a later issue) moves the count within [min, max]; until then, min, but
    # at least one replica so that the endpoint serves.
    return max(spec.replicas.min, 1)


class DeploymentWorker:
    def __init__(self, name: str, ctx: WorkerContext) -> None:
        self.name = name
        self._ctx = ctx
        self._wake = trio.Event()
        self._active: _Active | None = None
        self._memory: dict[str, _ReplicaMemory] = {}
        self._snapshot = WorkerSnapshot(0, 0, (), "progressing")
        self._endpoint_error: str | None = None
        self._parsed: dict[str, DeploymentSpec] = {}
        self._round_done = trio.Event()

    def __repr__(self) -> str:
        s = self._snapshot
        return f"<DeploymentWorker {self.name} {s.status} {s.ready}/{s.desired} ready>"

    def nudge(self) -> None:
        self._wake.set()

    def snapshot(self) -> WorkerSnapshot:
        return self._snapshot

    async def wait_round(self) -> None:
        """Wait until the next round has finished (the API uses this after a change)."""
        await self._round_done.wait()

    async def run(self) -> None:
        while True:
            self._wake = trio.Event()
            finished = await self.reconcile_once()
            done, self._round_done = self._round_done, trio.Event()
            done.set()
            if finished:
                return
            with trio.move_on_after(self._next_interval()):
                await self._wake.wait()

    def _next_interval(self) -> float:
        s = self._snapshot
        if s.status != "running" or s.ready != s.desired:
            return FAST_ROUND
        probe = self._active.spec.health.readiness if self._active else None
        return min(SLOW_ROUND, probe.period) if probe else SLOW_ROUND

    # -- one round -------------------------------------------------------------------------

    async def reconcile_once(self) -> bool:
        """One observe-plan-act round; True when the deployment is gone and cleaned up."""
        active = await self._load_desired()
        containers = await self._observe()
        await self._probe(active, containers)
        observed = [self._observed(c) for c in containers]
        desired = (
            Desired(active.spec_id, active.template_id, active.desired_replicas) if active else None
        )
        actions = plan(desired, observed)
        removing = {a.replica_id for a in actions if isinstance(a, RemoveReplica)}
        await self._publish(active, containers, removing)
        await self._execute(active, actions)
        self._snapshot = self._make_snapshot(active, containers, removing)
        if active is None and not containers:
            await self._ctx.endpoints.close(self.name)
            return True
        return False

    async def _load_desired(self) -> _Active | None:
        store = self._ctx.store
        deployment = await store.call(Store.get_deployment, self.name)
        if deployment is None or deployment.removed_at is not None:
            self._active = None
            return None
        revision = await store.call(Store.active_revision, self.name)
        if revision is None:
            self._active = None
            return None
        spec = self._parsed.get(revision.spec_id)
        if spec is None:
            spec = parse_spec(
                revision.spec_text, source=f"{self.name} revision {revision.revision}"
            )
            self._parsed = {revision.spec_id: spec}
        self._active = _Active(
            deployment_id=deployment.deployment_id,
            revision=revision.revision,
            spec=spec,
            spec_id=spec_id(spec),
            template_id=template_id(spec),
            desired_replicas=desired_count(spec, deployment.pinned_replicas),
        )
        return self._active

    async def _observe(self) -> list[ContainerInfo]:
        labels = {LABEL_INSTANCE: self._ctx.instance, LABEL_DEPLOYMENT: self.name}
        try:
            containers = await self._ctx.runtime.list(labels)
        except RuntimeFailure as exc:
            log.warning("cannot list containers: %s", exc, extra={"deployment": self.name})
            containers = []
        containers = [c for c in containers if c.labels.get(LABEL_REPLICA)]
        now = trio.current_time()
        for c in containers:
            rid = c.labels[LABEL_REPLICA]
            if rid not in self._memory:
                self._memory[rid] = _ReplicaMemory(first_seen=now)
            if c.host_port is not None:
                self._ctx.ports.reserve(c.host_port)
        seen = {c.labels[LABEL_REPLICA] for c in containers}
        for rid in list(self._memory):
            if rid not in seen:
                del self._memory[rid]
        return containers

    async def _probe(self, active: _Active | None, containers: list[ContainerInfo]) -> None:
        probe = active.spec.health.readiness if active else None

        async def probe_one(c: ContainerInfo) -> None:
            memory = self._memory[c.labels[LABEL_REPLICA]]
            if not c.running or c.host_port is None:
                memory.health = ReplicaHealth()
                return
            result = await self._ctx.probe(probe, REPLICA_HOST, c.host_port)
            was_ready = memory.health.ready
            memory.health.record(result, probe)
            if memory.health.ready != was_ready:
                await self._ctx.events.emit(
                    "ready" if memory.health.ready else "unready",
                    f"replica {c.labels[LABEL_REPLICA]} "
                    + ("is ready" if memory.health.ready else f"is not ready: {result.detail}"),
                    deployment=self.name,
                    replica=c.labels[LABEL_REPLICA],
                )

        async with trio.open_nursery() as nursery:
            for c in containers:
                nursery.start_soon(probe_one, c)

    def _observed(self, c: ContainerInfo) -> ObservedReplica:
        memory = self._memory[c.labels[LABEL_REPLICA]]
        return ObservedReplica(
            replica_id=c.labels[LABEL_REPLICA],
            container_id=c.container_id,
            template_id=c.labels.get(LABEL_TEMPLATE, ""),
            running=c.running,
            ready=c.running and memory.health.ready,
            created_at=memory.first_seen,
        )

    async def _publish(
        self, active: _Active | None, containers: list[ContainerInfo], removing: set[str]
    ) -> None:
        """Point the endpoint at the ready replicas that are staying."""
        if active is None or not active.spec.enabled:
            await self._ctx.endpoints.close(self.name)
            return
        try:
            endpoint = await self._ctx.endpoints.ensure(self.name, active.spec.endpoint)
        except OSError as exc:
            error = f"endpoint {active.spec.endpoint.bind}:{active.spec.endpoint.port}: {exc}"
            if error != self._endpoint_error:
                await self._ctx.events.emit(
                    "endpoint-failed", error, deployment=self.name, level=logging.ERROR
                )
            self._endpoint_error = error
            return
        if self._endpoint_error is not None:
            self._endpoint_error = None
            await self._ctx.events.emit(
                "endpoint",
                f"endpoint listening on {active.spec.endpoint.port}",
                deployment=self.name,
            )
        upstreams = [
            Upstream(c.labels[LABEL_REPLICA], REPLICA_HOST, c.host_port)
            for c in containers
            if c.host_port is not None
            and c.running
            and self._memory[c.labels[LABEL_REPLICA]].health.ready
            and c.labels[LABEL_REPLICA] not in removing
        ]
        endpoint.set_upstreams(upstreams)

    # -- actions ---------------------------------------------------------------------------

    async def _execute(self, active: _Active | None, actions: list[Action]) -> None:
        async with trio.open_nursery() as nursery:
            for action in actions:
                if isinstance(action, RemoveReplica):
                    nursery.start_soon(self._remove, action, active)
                elif isinstance(action, StartReplica):
                    await self._start_again(action)
                elif isinstance(action, CreateReplica) and active is not None:
                    await self._create(active)

    async def _create(self, active: _Active) -> None:
        ctx = self._ctx
        spec = active.spec
        rid = secrets.token_hex(4)
        host_port = ctx.ports.allocate()
        who = ReplicaIdentity(ctx.instance, self.name, rid, active.spec_id, active.template_id)
        container = replica_container(spec, who, ReplicaPlacement(host_port))
        try:
            if not await ctx.runtime.image_exists(spec.image):
                await ctx.events.emit("pull", f"pulling {spec.image}", deployment=self.name)
                await ctx.runtime.pull(spec.image)
            container_id = await ctx.runtime.create(container)
            await ctx.store.call(
                Store.save_replica,
                ReplicaRecord(
                    replica_id=rid,
                    deployment_id=active.deployment_id,
                    container_id=container_id,
                    spec_id=active.spec_id,
                    host_port=host_port,
                    state="starting",
                ),
            )
            await ctx.runtime.start(container_id)
        except RuntimeFailure as exc:
            ctx.ports.release(host_port)
            await ctx.events.emit(
                "create-failed",
                f"replica {rid} of revision {active.revision} failed to start: {exc}",
                deployment=self.name,
                replica=rid,
                level=logging.ERROR,
            )
            return
        await ctx.events.emit(
            "created",
            f"replica {rid} created (revision {active.revision}, spec {active.spec_id}, "
            f"port {host_port})",
            deployment=self.name,
            replica=rid,
        )

    async def _start_again(self, action: StartReplica) -> None:
        memory = self._memory.get(action.replica_id)
        try:
            await self._ctx.runtime.start(action.container_id)
        except RuntimeFailure as exc:
            await self._ctx.events.emit(
                "start-failed",
                f"replica {action.replica_id} failed to start: {exc}",
                deployment=self.name,
                replica=action.replica_id,
                level=logging.ERROR,
            )
            return
        if memory is not None:
            memory.restarts += 1
        await self._ctx.events.emit(
            "restarted",
            f"replica {action.replica_id} restarted ({action.reason})",
            deployment=self.name,
            replica=action.replica_id,
        )

    async def _remove(self, action: RemoveReplica, active: _Active | None) -> None:
        ctx = self._ctx
        memory = self._memory.get(action.replica_id)
        if memory is not None:
            memory.draining = True
        endpoint = ctx.endpoints.get(self.name)
        if endpoint is not None:
            with trio.move_on_after(DRAIN_TIMEOUT):
                # The proxy counts in-flight requests on its hot path and signals nothing;
                # polling here keeps the hot path free of wake-ups.
                while endpoint.in_flight(action.replica_id) > 0:  # noqa: ASYNC110
                    await trio.sleep(0.05)
        stop_timeout = active.spec.stop_timeout if active else 10.0
        try:
            info = await ctx.runtime.inspect(action.container_id)
            await ctx.runtime.stop(action.container_id, timeout=stop_timeout)
            await ctx.runtime.remove(action.container_id)
        except RuntimeFailure as exc:
            await ctx.events.emit(
                "remove-failed",
                f"replica {action.replica_id}: {exc}",
                deployment=self.name,
                replica=action.replica_id,
                level=logging.ERROR,
            )
            return
        if info.host_port is not None:
            ctx.ports.release(info.host_port)
        await ctx.store.call(Store.delete_replica, action.replica_id)
        await ctx.events.emit(
            "removed",
            f"replica {action.replica_id} stopped and removed ({action.reason})",
            deployment=self.name,
            replica=action.replica_id,
        )

    # -- what the API shows ----------------------------------------------------------------

    def _make_snapshot(
        self, active: _Active | None, containers: list[ContainerInfo], removing: set[str]
    ) -> WorkerSnapshot:
        views = []
        for c in containers:
            rid = c.labels[LABEL_REPLICA]
            memory = self._memory[rid]
            health = memory.health
            if rid in removing or memory.draining:
                state = "draining"
            elif not c.running:
                state = "stopped"
            elif health.ready:
                state = "ready"
            elif health.ever_ready:
                state = "unhealthy"
            else:
                state = "starting"
            views.append(
                ReplicaView(
                    id=rid,
                    container_id=c.container_id,
                    state=state,
                    ready=state == "ready",
                    restarts=memory.restarts,
                    host_port=c.host_port,
                    spec_id=c.labels.get(LABEL_SPEC_ID, ""),
                    last_probe=health.last_result.detail if health.last_result else None,
                )
            )
        desired = active.desired_replicas if active else 0
        current = {
            c.labels[LABEL_REPLICA]
            for c in containers
            if active and c.labels.get(LABEL_TEMPLATE) == active.template_id
        }
        ready = sum(1 for v in views if v.ready and v.id in current)
        if active is None or desired == 0:
            status = "stopped"
        elif self._endpoint_error:
            status = "failed"
        elif ready >= desired and len(views) == desired:
            status = "running"
        else:
            status = "progressing"
        return WorkerSnapshot(desired, ready, tuple(views), status, self._endpoint_error)
