"""One reconcile worker per deployment: observe, plan, act, publish the ready set. Repeat.

Theory of operation. Each round reads the desired state from the store (the active revision,
or nothing once the deployment is removed), observes the deployment's containers in Podman
(by label: the source of truth, so adoption after a berthd restart needs no special case),
asks the pure `plan` for actions and executes them. Rounds run on a timer and at once when
nudged (an apply, an rm, a Podman event, a readiness change, a back-off running out).
Beside the rounds, the worker's prober task runs each replica's probes on their own periods
(`daemon.health` judges the results) and nudges a round when a verdict changes.

Invariants:
- The endpoint is given only replicas that are ready and not about to be stopped or
  removed; a replica leaves the rotation before it is drained, stopped or removed.
- Every container this worker creates carries its labels before it starts, so a crash at
  any point leaves a container the next round (or the next berthd) recognises.
- A container that stops on its own, or fails to start, is counted once (reason, restarts,
  back-off) and started again under the same replica id when its back-off runs out.
- Cancelling the worker (berthd stopping) never stops a container.
- A worker whose deployment is gone and whose containers are all removed closes the endpoint
  and returns.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import trio

from config.canonical import spec_id, template_id
from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.autoscale import Autoscaler
from daemon.backoff import RestartBackoff
from daemon.endpoints import EndpointManager
from daemon.events import EventLog
from daemon.gpu_ledger import LABEL_GPUS, GpuLedger, parse_gpus_label, replica_key
from daemon.health import ProbeKind, ReplicaHealth, Transition
from daemon.mounts import MountPreparer
from daemon.mounts_git import MountError
from daemon.placement import GpuRequest, Unplaceable
from daemon.plan import (
    Action,
    CreateReplica,
    Desired,
    ObservedReplica,
    RemoveReplica,
    StartReplica,
    StopReplica,
    plan,
)
from daemon.ports import HostPortAllocator
from daemon.probes import ProbeFn, ProbeResult
from daemon.registry import RegistryCredentialsError, registry_auth
from daemon.replica_spec import (
    LABEL_EXTRA_PORTS,
    REPLICA_HOST,
    ReplicaIdentity,
    ReplicaPlacement,
    parse_extra_ports,
    replica_container,
)
from daemon.replicas import ReplicaMemory, ReplicaView, exit_reason
from daemon.rollout import Rollout
from daemon.runtime import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_REPLICA,
    LABEL_SPEC_ID,
    LABEL_TEMPLATE,
    ContainerInfo,
    ContainerNotFound,
    ContainerRuntime,
    MountSpec,
    RuntimeFailure,
)
from daemon.scaling import LOAD_WINDOW, LoadSource, ScaleState, autoscaled, decide, initial_count
from daemon.store import ReplicaRecord, Store
from daemon.store_access import StoreAccess
from proxy.upstreams import Upstream

log = logging.getLogger("berthd")

FAST_ROUND = 0.5  # while converging
SLOW_ROUND = 5.0  # when up to date
PROBE_IDLE = 1.0  # the prober looks for new replicas at least this often
DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class WorkerSnapshot:
    desired: int
    ready: int
    replicas: tuple[ReplicaView, ...]
    status: str
    endpoint_error: str | None = None
    # Why new replicas cannot be made now (no GPU free, image pull failed, mount failed, ...)
    error: str | None = None
    pending: int = 0  # desired replicas that have no container yet
    updated: int = 0  # replicas of the active revision's container template
    revision: int | None = None  # the revision this snapshot was taken against


@dataclass
class WorkerContext:
    instance: str
    runtime: ContainerRuntime
    store: StoreAccess
    events: EventLog
    endpoints: EndpointManager
    ports: HostPortAllocator
    probe: ProbeFn
    mounts: MountPreparer
    gpus: GpuLedger
    load: LoadSource | None = None  # the metrics sampler's windows, for the autoscaler


@dataclass
class _Active:
    deployment_id: str
    revision: int
    spec: DeploymentSpec
    spec_id: str
    template_id: str
    desired_replicas: int


class CreateRefused(Exception):
    """New replicas cannot be made now; the message says why, fit for an event."""

    def __init__(self, message: str, *, repeated: bool = False) -> None:
        super().__init__(message)
        self.repeated = repeated


def desired_count(spec: DeploymentSpec, pinned: int | None, scaled: int | None = None) -> int:
    if not spec.enabled:
        return 0
    if pinned is not None:
        return pinned
    if scaled is not None:
        # Until the endpoint can hold requests while a replica starts (scale from zero),
        # an autoscaled deployment keeps one replica even with `min = 0`.
        return max(scaled, 1)
    return spec.replicas.min


class DeploymentWorker:
    def __init__(self, name: str, ctx: WorkerContext) -> None:
        self.name = name
        self._ctx = ctx
        self._wake = trio.Event()
        self._probe_wake = trio.Event()
        self._active: _Active | None = None
        self._memory: dict[str, ReplicaMemory] = {}
        self._records: dict[str, ReplicaRecord] | None = None
        self._snapshot = WorkerSnapshot(0, 0, (), "progressing")
        self._endpoint_error: str | None = None
        self._create_error: str | None = None
        self._create_backoff = RestartBackoff()
        self.scale_ups = 0  # autoscaler decisions since this worker started (Prometheus)
        self.scale_downs = 0
        self._parsed: dict[str, DeploymentSpec] = {}
        self._round_done = trio.Event()
        self._rollout: Rollout | None = None
        self._scale: ScaleState | None = None
        self._failed_revisions: set[int] = set()
        self.finished = trio.Event()  # the deployment is gone and so are its containers

    def __repr__(self) -> str:
        s = self._snapshot
        return f"<DeploymentWorker {self.name} {s.status} {s.ready}/{s.desired} ready>"

    def nudge(self) -> None:
        self._wake.set()

    def suspect(self, replica_id: str) -> None:
        """The proxy failed to reach this replica: probe its readiness now, not next period.

        Called on the proxy's hot path: it only reschedules, never blocks.
        """
        memory = self._memory.get(replica_id)
        if memory is not None and memory.health is not None:
            memory.health.probe_soon(ProbeKind.READINESS, trio.current_time())
            self._probe_wake.set()

    def snapshot(self) -> WorkerSnapshot:
        return self._snapshot

    def active_spec(self) -> DeploymentSpec | None:
        return self._active.spec if self._active else None

    async def wait_round(self) -> None:
        """Wait until the next round has finished (the API uses this after a change)."""
        await self._round_done.wait()

    async def run(self) -> None:
        """Reconcile until the deployment is gone and cleaned up; then `finished` is set."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe_loop)
            while True:
                self._wake = trio.Event()
                finished = await self.reconcile_once()
                done, self._round_done = self._round_done, trio.Event()
                done.set()
                if finished:
                    self.finished.set()
                    nursery.cancel_scope.cancel()
                    return
                with trio.move_on_at(self._next_round_at()):
                    await self._wake.wait()

    def _next_round_at(self) -> float:
        now = trio.current_time()
        s = self._snapshot
        converged = s.status == "running" and s.ready == s.desired
        at = now + (SLOW_ROUND if converged else FAST_ROUND)
        retries = [m.backoff.retry_at for m in self._memory.values() if m.backoff.retry_at]
        future = [r for r in retries if r > now]
        return min([at, *future])

    # -- one round -------------------------------------------------------------------------

    async def reconcile_once(self) -> bool:
        """One observe-plan-act round; True when the deployment is gone and cleaned up."""
        active = await self._load_desired()
        containers = await self._observe(active)
        now = trio.current_time()
        observed = [self._observed(c, now) for c in containers]
        if active is not None:
            await self._watch_rollout(active, containers, now)
        desired = (
            Desired(
                active.spec_id,
                active.template_id,
                active.desired_replicas,
                active.spec.update.max_surge,
                active.spec.update.max_unavailable,
            )
            if active
            else None
        )
        actions = plan(desired, observed)
        leaving = {a.replica_id for a in actions if isinstance(a, RemoveReplica | StopReplica)}
        await self._publish(active, containers, leaving)
        await self._execute(active, actions)
        self._snapshot = self._make_snapshot(active, containers, leaving)
        self._probe_wake.set()
        if active is None and not containers:
            await self._ctx.endpoints.close(self.name)
            return True
        return False

    async def _watch_rollout(
        self, active: _Active, containers: list[ContainerInfo], now: float
    ) -> None:
        """Track the active revision's rollout; roll back one that stalls past its deadline."""
        updated = [c for c in containers if c.labels.get(LABEL_TEMPLATE) == active.template_id]
        ready = sum(
            1
            for c in updated
            if (m := self._memory.get(c.labels[LABEL_REPLICA])) and m.health and m.health.ready
        )
        stale = len(containers) - len(updated)
        if stale == 0 and ready >= active.desired_replicas:
            if self._rollout is not None and self._rollout.revision == active.revision:
                await self._ctx.events.emit(
                    "rollout-complete",
                    f"revision {active.revision}: {ready}/{active.desired_replicas} replicas ready",
                    deployment=self.name,
                )
            self._rollout = None
            return
        if active.revision in self._failed_revisions:
            return
        if self._rollout is None or self._rollout.revision != active.revision:
            deadline = active.spec.update.progress_deadline
            self._rollout = Rollout(active.revision, deadline, now)
        self._rollout.observe(now, ready, stale)
        if self._rollout.stalled(now):
            await self._roll_back(
                active, self._rollout.reason(active.desired_replicas, self._why())
            )

    def _why(self) -> str | None:
        """The most telling reason new replicas are not ready, for the failed revision."""
        if self._create_error:
            return self._create_error
        for memory in self._memory.values():
            health = memory.health
            if memory.backoff.failures and memory.last_exit_reason:
                return f"replica {memory.replica_id} crash-looping: {memory.last_exit_reason}"
            if health and not health.ready and health.last_result:
                return f"replica {memory.replica_id} not ready: {health.last_result.detail}"
        return None

    async def _roll_back(self, active: _Active, reason: str) -> None:
        self._failed_revisions.add(active.revision)
        self._rollout = None
        back = await self._ctx.store.call(Store.roll_back, self.name, active.revision, reason)
        if back is None:
            await self._ctx.events.emit(
                "rollout-failed",
                f"revision {active.revision} failed: {reason}; no earlier revision to roll back to",
                deployment=self.name,
                level=logging.ERROR,
            )
            return
        self._create_error = None
        self._create_backoff = RestartBackoff()
        await self._ctx.events.emit(
            "rolled-back",
            f"revision {active.revision} failed: {reason}; rolled back to revision {back.revision}",
            deployment=self.name,
            level=logging.ERROR,
        )
        self.nudge()

    async def _load_desired(self) -> _Active | None:
        store = self._ctx.store
        deployment = await store.call(Store.get_deployment, self.name)
        revision = await store.call(Store.active_revision, self.name)
        if deployment is None or deployment.removed_at is not None or revision is None:
            self._active = None
            return None
        spec = self._parsed.get(revision.spec_id)
        if spec is None:
            source = f"{self.name} revision {revision.revision}"
            spec = parse_spec(revision.spec_text, source=source)
            self._parsed = {revision.spec_id: spec}
        if self._records is None:
            records = await store.call(Store.list_replicas, deployment.deployment_id)
            self._records = {r.replica_id: r for r in records}
        scaled = await self._autoscale(spec, deployment.pinned_replicas)
        self._active = _Active(
            deployment_id=deployment.deployment_id,
            revision=revision.revision,
            spec=spec,
            spec_id=spec_id(spec),
            template_id=template_id(spec),
            desired_replicas=desired_count(spec, deployment.pinned_replicas, scaled),
        )
        return self._active

    async def _autoscale(self, spec: DeploymentSpec, pinned: int | None) -> int | None:
        """The autoscaler's count for this round, or None when the count is not its to set."""
        if pinned is not None or not autoscaled(spec) or self._ctx.load is None:
            self._scale = None  # a pin or a fixed count: a later hand-back starts afresh
            return None
        if self._scale is None:
            running = len(self._memory) or spec.replicas.min
            self._scale = ScaleState(
                Autoscaler(spec.replicas, spec.autoscale), initial_count(spec, running)
            )
        else:
            self._scale.autoscaler.reconfigure(spec.replicas, spec.autoscale)
        load = self._ctx.load(self.name, LOAD_WINDOW)
        decision = decide(self._scale, load, trio.current_time())
        if decision.changed:
            if decision.desired > decision.current:
                self.scale_ups += 1
            else:
                self.scale_downs += 1
            await self._ctx.events.emit("scaled", decision.reason, deployment=self.name)
        return self._scale.count

    async def _observe(self, active: _Active | None) -> list[ContainerInfo]:
        labels = {LABEL_INSTANCE: self._ctx.instance, LABEL_DEPLOYMENT: self.name}
        try:
            containers = await self._ctx.runtime.list(labels)
        except RuntimeFailure as exc:
            log.warning("cannot list containers: %s", exc, extra={"deployment": self.name})
            containers = []
        containers = [c for c in containers if c.labels.get(LABEL_REPLICA)]
        now = trio.current_time()
        seen = set()
        for c in containers:
            rid = c.labels[LABEL_REPLICA]
            seen.add(rid)
            memory = self._memory.get(rid)
            if memory is None:
                memory = self._memory[rid] = self._remember(rid, now)
            if c.host_port is not None:
                self._ctx.ports.reserve(c.host_port)
            devices = parse_gpus_label(c.labels.get(LABEL_GPUS, ""))
            shared = active.spec.resources.gpu_memory if active else None
            self._ctx.gpus.note(replica_key(self.name, rid), devices, shared)
            await self._track_run(memory, c, active, now)
        for rid in list(self._memory):
            if rid not in seen:
                del self._memory[rid]
        return containers

    def _remember(self, rid: str, now: float) -> ReplicaMemory:
        memory = ReplicaMemory(rid, first_seen=now)
        record = (self._records or {}).get(rid)
        if record is not None:
            memory.restarts = record.restarts
            memory.last_exit_reason = record.last_exit_reason
        return memory

    async def _track_run(
        self, memory: ReplicaMemory, c: ContainerInfo, active: _Active | None, now: float
    ) -> None:
        """Keep the replica's memory in step with its container: runs begin and end here."""
        memory.ports = parse_extra_ports(c.labels.get(LABEL_EXTRA_PORTS, ""))
        if active is not None and c.host_port is not None:
            memory.ports[active.spec.port] = c.host_port
        if c.running:
            if memory.health is None and active is not None:
                memory.health = ReplicaHealth.begin(
                    active.spec.health, active.spec.port, now, adopted=not memory.started_here
                )
                memory.started_here = False
            memory.backoff.ran_healthy(memory.healthy_since, now)
            return
        memory.health = None
        memory.healthy_since = None
        if not memory.down_recorded:
            await self._record_down(memory, c.container_id, exit_reason(c), now)

    async def _record_down(
        self, memory: ReplicaMemory, container_id: str, reason: str, now: float
    ) -> None:
        memory.down_recorded = True
        memory.last_exit_reason = reason
        delay = memory.backoff.failed(now)
        await self._save(memory, container_id, "crashloop")
        await self._ctx.events.emit(
            "died",
            f"replica {memory.replica_id} {reason}; restarting in {delay:.1f}s",
            deployment=self.name,
            replica=memory.replica_id,
            level=logging.WARNING,
        )

    def _observed(self, c: ContainerInfo, now: float) -> ObservedReplica:
        memory = self._memory[c.labels[LABEL_REPLICA]]
        health = memory.health
        return ObservedReplica(
            replica_id=memory.replica_id,
            container_id=c.container_id,
            template_id=c.labels.get(LABEL_TEMPLATE, ""),
            running=c.running,
            ready=c.running and health is not None and health.ready,
            created_at=memory.first_seen,
            restart_due=memory.backoff.may_retry(now),
            must_restart=health.restart_reason if c.running and health else None,
        )

    async def _publish(
        self, active: _Active | None, containers: list[ContainerInfo], leaving: set[str]
    ) -> None:
        """Point the endpoint at the ready replicas that are staying."""
        if active is None or not active.spec.enabled:
            await self._ctx.endpoints.close(self.name)
            return
        try:
            endpoint = await self._ctx.endpoints.ensure(
                self.name, active.spec.endpoint, on_suspect=self.suspect
            )
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
        endpoint.set_upstreams(self._ready_upstreams(containers, leaving))

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

    # -- probes ----------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        """Run every replica's due probes, each in its own task, bounded by its timeout."""
        async with trio.open_nursery() as probes:
            while True:
                for memory, health, kind in self._due_probes(trio.current_time()):
                    probes.start_soon(self._probe_one, memory, health, kind)
                self._probe_wake = trio.Event()
                with trio.move_on_at(self._next_probe_at()):
                    await self._probe_wake.wait()

    async def probe_once(self) -> None:
        """Run the probes that are due now and wait for their results (for tests)."""
        async with trio.open_nursery() as probes:
            for memory, health, kind in self._due_probes(trio.current_time()):
                probes.start_soon(self._probe_one, memory, health, kind)

    def _due_probes(self, now: float) -> list[tuple[ReplicaMemory, ReplicaHealth, ProbeKind]]:
        due: list[tuple[ReplicaMemory, ReplicaHealth, ProbeKind]] = []
        for memory in list(self._memory.values()):
            health = memory.health
            if health is not None and not memory.draining:
                due.extend((memory, health, track.kind) for track in health.due(now))
        return due

    def _next_probe_at(self) -> float:
        times = [trio.current_time() + PROBE_IDLE]
        for memory in self._memory.values():
            next_due = memory.health.next_due() if memory.health else None
            if next_due is not None and not memory.draining:
                times.append(next_due)
        return min(times)

    async def _probe_one(
        self, memory: ReplicaMemory, health: ReplicaHealth, kind: ProbeKind
    ) -> None:
        probe = health.tracks[kind].probe
        port = memory.ports.get(probe.port)
        if port is None:
            result = ProbeResult(False, f"port {probe.port} is not published")
        else:
            result = await self._ctx.probe(probe, REPLICA_HOST, port)
        if memory.health is not health:
            return  # the container was restarted meanwhile: this result is stale
        now = trio.current_time()
        transitions = health.record(kind, result, now)
        self._probe_wake.set()
        for transition in transitions:
            await self._on_transition(memory, health, transition, result, now)
        if transitions:
            self.nudge()

    async def _on_transition(
        self,
        memory: ReplicaMemory,
        health: ReplicaHealth,
        transition: Transition,
        result: ProbeResult,
        now: float,
    ) -> None:
        rid = memory.replica_id
        if transition is Transition.READY:
            memory.healthy_since = now
            message = f"replica {rid} is ready ({result.detail})"
        elif transition is Transition.UNREADY:
            memory.healthy_since = None
            message = f"replica {rid} is not ready: {result.detail}; out of rotation"
        elif transition is Transition.STARTED:
            message = f"replica {rid} passed its startup probe"
        else:
            message = f"replica {rid}: {health.restart_reason}; restarting it"
        level = (
            logging.INFO
            if transition in (Transition.READY, Transition.STARTED)
            else logging.WARNING
        )
        await self._ctx.events.emit(
            str(transition), message, deployment=self.name, replica=rid, level=level
        )

    # -- actions ---------------------------------------------------------------------------

    async def _execute(self, active: _Active | None, actions: list[Action]) -> None:
        async with trio.open_nursery() as nursery:
            for action in actions:
                if isinstance(action, RemoveReplica):
                    nursery.start_soon(self._remove, action, active)
                elif isinstance(action, StopReplica):
                    nursery.start_soon(self._stop_for_restart, action, active)
                elif isinstance(action, StartReplica):
                    await self._start_again(action)
                elif isinstance(action, CreateReplica) and active is not None:
                    if self._create_backoff.may_retry(trio.current_time()):
                        await self._create(active)

    async def _save(self, memory: ReplicaMemory, container_id: str, state: str) -> None:
        active = self._active
        if active is None:
            return
        port = memory.ports.get(active.spec.port)
        record = ReplicaRecord(
            replica_id=memory.replica_id,
            deployment_id=active.deployment_id,
            container_id=container_id,
            spec_id=active.spec_id,
            host_port=port,
            state=state,
            restarts=memory.restarts,
            last_exit_reason=memory.last_exit_reason,
        )
        saved = await self._ctx.store.call(Store.save_replica, record)
        if self._records is not None:
            self._records[memory.replica_id] = saved

    def _probe_ports(self, spec: DeploymentSpec) -> set[int]:
        probes = (spec.health.startup, spec.health.readiness, spec.health.liveness)
        return {p.port for p in probes if p is not None and p.port != spec.port}

    async def _create(self, active: _Active) -> None:
        ctx = self._ctx
        spec = active.spec
        rid = secrets.token_hex(4)
        key = replica_key(self.name, rid)
        placed = ctx.gpus.place(key, GpuRequest.of(spec.resources))
        if isinstance(placed, Unplaceable):
            await self._create_failed(f"a new replica is pending: {placed.reason}", rid, "pending")
            return
        try:
            mounts = await self._prepare(active)
        except CreateRefused as exc:
            ctx.gpus.forget(key)
            await self._create_failed(str(exc), rid, "create-failed", quiet=exc.repeated)
            return
        host_port = ctx.ports.allocate()
        extra = {port: ctx.ports.allocate() for port in sorted(self._probe_ports(spec))}
        who = ReplicaIdentity(ctx.instance, self.name, rid, active.spec_id, active.template_id)
        where = ReplicaPlacement(host_port, extra, placed.devices)
        container = replica_container(spec, who, where, mounts)
        memory = self._memory[rid] = ReplicaMemory(rid, first_seen=trio.current_time())
        memory.started_here = True
        try:
            container_id = await ctx.runtime.create(container)
            memory.ports = {spec.port: host_port, **extra}
            await self._save(memory, container_id, "starting")
            await ctx.runtime.start(container_id)
        except RuntimeFailure as exc:
            for port in (host_port, *extra.values()):
                ctx.ports.release(port)
            ctx.gpus.forget(key)
            message = f"replica {rid} of revision {active.revision} failed to start: {exc}"
            await self._create_failed(message, rid, "create-failed")
            return
        self._create_error = None
        self._create_backoff = RestartBackoff()
        gpus = f", GPUs {', '.join(placed.devices)}" if placed.devices else ""
        await ctx.events.emit(
            "created",
            f"replica {rid} created (revision {active.revision}, spec {active.spec_id}, "
            f"port {host_port}{gpus})",
            deployment=self.name,
            replica=rid,
        )

    async def _prepare(self, active: _Active) -> tuple[MountSpec, ...]:
        """Pull the image (with the spec's credentials) and prepare its mounts."""
        ctx, spec = self._ctx, active.spec
        try:
            auth = await trio.to_thread.run_sync(registry_auth, spec.registry)
            if not await ctx.runtime.image_exists(spec.image):
                await ctx.events.emit("pull", f"pulling {spec.image}", deployment=self.name)
                await ctx.runtime.pull(spec.image, auth=auth)
            return await ctx.mounts.prepare(spec, active.spec_id)
        except RegistryCredentialsError as exc:
            raise CreateRefused(f"registry credentials: {exc}") from exc
        except RuntimeFailure as exc:
            raise CreateRefused(f"cannot pull {spec.image}: {exc}") from exc
        except MountError as exc:
            raise CreateRefused(str(exc), repeated=exc.repeated) from exc

    async def _create_failed(
        self, message: str, rid: str, kind: str, *, quiet: bool = False
    ) -> None:
        """No replica could be made: say so once per distinct reason, retry with back-off."""
        delay = self._create_backoff.failed(trio.current_time())
        if message != self._create_error and not quiet:
            await self._ctx.events.emit(
                kind,
                f"{message} (retrying in {delay:.1f}s)",
                deployment=self.name,
                level=logging.ERROR if kind != "pending" else logging.WARNING,
            )
        self._create_error = message

    async def _start_again(self, action: StartReplica) -> None:
        memory = self._memory.get(action.replica_id)
        if memory is None:
            return
        reason = memory.last_exit_reason or action.reason
        try:
            await self._ctx.runtime.start(action.container_id)
        except ContainerNotFound:
            return  # removed behind our back: the next round sees it gone
        except RuntimeFailure as exc:
            memory.down_recorded = False
            await self._record_down(
                memory, action.container_id, f"failed to start: {exc}", trio.current_time()
            )
            return
        memory.restarts += 1
        memory.down_recorded = False
        memory.started_here = True
        memory.health = None
        await self._save(memory, action.container_id, "starting")
        await self._ctx.events.emit(
            "restarted",
            f"replica {action.replica_id} restarted (restart {memory.restarts}; it {reason})",
            deployment=self.name,
            replica=action.replica_id,
        )

    async def _drain(self, replica_id: str) -> None:
        endpoint = self._ctx.endpoints.get(self.name)
        if endpoint is not None:
            with trio.move_on_after(DRAIN_TIMEOUT):
                # The proxy counts in-flight requests on its hot path and signals nothing;
                # polling here keeps the hot path free of wake-ups.
                while endpoint.in_flight(replica_id) > 0:  # noqa: ASYNC110
                    await trio.sleep(0.05)

    async def _stop_for_restart(self, action: StopReplica, active: _Active | None) -> None:
        memory = self._memory.get(action.replica_id)
        if memory is None:
            return
        memory.draining = True
        try:
            await self._drain(action.replica_id)
            timeout = active.spec.stop_timeout if active else 10.0
            await self._ctx.runtime.stop(action.container_id, timeout=timeout)
        except RuntimeFailure as exc:
            log.warning("stop for restart failed: %s", exc, extra={"deployment": self.name})
            return
        finally:
            memory.draining = False
        memory.health = None
        memory.healthy_since = None
        await self._record_down(memory, action.container_id, action.reason, trio.current_time())

    async def _remove(self, action: RemoveReplica, active: _Active | None) -> None:
        ctx = self._ctx
        memory = self._memory.get(action.replica_id)
        if memory is not None:
            memory.draining = True
        await self._drain(action.replica_id)
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
        for port in {info.host_port, *(memory.ports.values() if memory else ())}:
            if port is not None:
                ctx.ports.release(port)
        ctx.gpus.forget(replica_key(self.name, action.replica_id))
        await ctx.store.call(Store.delete_replica, action.replica_id)
        await ctx.events.emit(
            "removed",
            f"replica {action.replica_id} stopped and removed ({action.reason})",
            deployment=self.name,
            replica=action.replica_id,
        )

    # -- what the API shows ----------------------------------------------------------------

    def _make_snapshot(
        self, active: _Active | None, containers: list[ContainerInfo], leaving: set[str]
    ) -> WorkerSnapshot:
        now = trio.current_time()
        views = []
        for c in containers:
            memory = self._memory[c.labels[LABEL_REPLICA]]
            health = memory.health
            state = memory.state(c.running, now)
            if memory.replica_id in leaving and c.running:
                state = "draining"
            retry_at = memory.backoff.retry_at
            views.append(
                ReplicaView(
                    id=memory.replica_id,
                    container_id=c.container_id,
                    state=state,
                    ready=state == "ready",
                    restarts=memory.restarts,
                    host_port=c.host_port,
                    spec_id=c.labels.get(LABEL_SPEC_ID, ""),
                    gpus=parse_gpus_label(c.labels.get(LABEL_GPUS, "")),
                    last_probe=health.last_result.detail if health and health.last_result else None,
                    consecutive_failures=health.consecutive_failures if health else 0,
                    last_exit_reason=memory.last_exit_reason,
                    restart_in=round(retry_at - now, 1)
                    if state == "crashloop" and retry_at is not None
                    else None,
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
        pending = max(0, desired - len(current)) if active else 0
        error = self._create_error if pending else None
        if active is not None and active.revision in self._failed_revisions:
            status = "failed"
            error = error or f"revision {active.revision} failed"
        return WorkerSnapshot(
            desired,
            ready,
            tuple(views),
            status,
            self._endpoint_error,
            error,
            pending,
            len(current),
            active.revision if active else None,
        )
