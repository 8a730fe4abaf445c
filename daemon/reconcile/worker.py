"""One reconcile worker per deployment: observe, plan, act, publish the ready set. Repeat.

Theory of operation. Each round reads the desired state from the store (the active revision,
or nothing once the deployment is removed), observes the deployment's containers in Podman
(by label: the source of truth, so adoption after a berthd restart is observation, plus
the readiness verdicts kept in the store: `daemon.reconcile.adoption`),
asks the pure `plan` for actions and executes them. Rounds run on a timer and at once when
nudged (an apply, an rm, a Podman event, a readiness change, a back-off running out).
Beside the rounds, the worker's prober task runs each replica's probes on their own periods
(`daemon.health.verdicts` judges the results) and nudges a round when a verdict changes.

Invariants:
- A round whose observation failed is unknown: it plans, executes, publishes and forgets
  nothing (said once as an event until lists work again). A removed deployment's worker
  ends only after a successful list shows no container and no operation is in flight.
- What replicas hold (GPUs, host ports) is derived from each successful observation
  (`daemon.gpu.ledger`, `daemon.reconcile.ports`), never remembered past it.
- Rounds are short: a round observes, plans and dispatches; pulls, creates, drains, stops
  and removals run as tasks in the worker's nursery (`ReplicaOps`), one at a time per
  replica, and nudge a round when they end. A replica whose readiness fails leaves the
  endpoint's rotation from the prober at once, without waiting for a round.
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

import dataclasses
import logging
from dataclasses import dataclass

import trio

from config.canonical import spec_id, template_id
from config.parse import parse_spec
from config.spec import DeploymentSpec, UpdateStrategy
from daemon.gpu.ledger import LABEL_GPUS, parse_gpus_label, replica_key
from daemon.gpu.placement import Assignment
from daemon.health.verdicts import ReplicaHealth
from daemon.reconcile.adoption import Adoption
from daemon.reconcile.context import ActiveRevision, WorkerContext
from daemon.reconcile.image_pull import ImagePuller
from daemon.reconcile.plan import (
    CreateReplica,
    Desired,
    ObservedReplica,
    RemoveReplica,
    StopReplica,
    plan,
)
from daemon.reconcile.prober import Prober
from daemon.reconcile.publish import EndpointPublisher
from daemon.reconcile.replica_ops import ReplicaOps
from daemon.reconcile.replica_spec import (
    LABEL_EXTRA_PORTS,
    parse_extra_ports,
)
from daemon.reconcile.replicas import ReplicaMemory, ReplicaView, exit_reason
from daemon.reconcile.rollout import Rollout
from daemon.reconcile.zero import ZeroScaling
from daemon.runtime.interface import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_REPLICA,
    LABEL_SPEC_ID,
    LABEL_TEMPLATE,
    ContainerInfo,
    RuntimeFailure,
)
from daemon.scaling.driver import (
    LIVE_LATENCY_WINDOW,
    LOAD_WINDOW,
    ScaleState,
    autoscaled,
    bounds,
    decide,
    initial_count,
    scales_to_zero,
    with_live_requests,
)
from daemon.scaling.driver import ROUND as SCALING_ROUND
from daemon.scaling.policy import Autoscaler
from daemon.secrets.references import secret_template_id
from daemon.store.database import RevisionChanged, Store

log = logging.getLogger("berthd")

FAST_ROUND = 0.5  # while converging
# When up to date (autoscaled deployments: daemon.scaling.driver.ROUND). Every change that
# matters nudges a round at once (a container's event through the runtime's watched view, a
# probe verdict, an apply, an operation's end, a lost endpoint); this round is the backstop.
SLOW_ROUND = 30.0


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
    unloaded_at: str | None = None  # when an idle deployment last went to zero (RFC 3339)


def desired_count(spec: DeploymentSpec, pinned: int | None, scaled: int | None = None) -> int:
    if not spec.enabled:
        return 0
    if pinned is not None:
        return pinned
    if scaled is not None:
        return scaled
    return spec.replicas.min


class DeploymentWorker:
    def __init__(self, name: str, ctx: WorkerContext) -> None:
        self.name = name
        self._ctx = ctx
        self._wake = trio.Event()
        self._active: ActiveRevision | None = None
        self._memory: dict[str, ReplicaMemory] = {}
        self._adoption = Adoption(name, ctx)  # verdicts kept across restarts, `adopted`
        self._ops = ReplicaOps(name, ctx, self._memory, lambda: self._active, on_done=self.nudge)
        self._publisher = EndpointPublisher(
            name, ctx, self._memory, self._ops, on_suspect=self.suspect, on_nudge=self.nudge
        )
        self._prober = Prober(
            name,
            self._memory,
            ctx.probe,
            ctx.events,
            on_verdict=self.nudge,
            on_unready=self._publisher.withdraw,
            on_ready_probe=self._publisher.probe_passed,
            on_readiness=lambda memory, ready: self._adoption.keep(self._active, memory, ready),
        )
        # Scale to zero and back: idle unload, cold starts and their cancel, the swap.
        self._zero = ZeroScaling(name, ctx, self._memory, self._ops, nudge=self.nudge)
        self._snapshot = WorkerSnapshot(0, 0, (), "progressing")
        self.scale_ups = 0  # autoscaler decisions since this worker started (Prometheus)
        self.scale_downs = 0
        self._parsed: dict[str, DeploymentSpec] = {}
        self._round_done = trio.Event()
        self._rollout: Rollout | None = None
        self._scale: ScaleState | None = None
        self._failed_revisions: set[int] = set()
        self._failures: dict[int, str] = {}  # revision -> why it failed
        self._rolled_out: str | None = None  # the last template seen fully rolled out
        self.finished = trio.Event()  # the deployment is gone and so are its containers
        self._unobserved: str | None = None  # why the last list failed, until one works
        self._round_since: float | None = None  # when the round under way began
        self._replace_revision: int | None = None  # its rollout replaces in place

    def __repr__(self) -> str:
        s = self._snapshot
        return f"<DeploymentWorker {self.name} {s.status} {s.ready}/{s.desired} ready>"

    def nudge(self) -> None:
        self._wake.set()

    def suspect(self, replica_id: str) -> None:
        """The proxy failed to reach this replica (called on its hot path: never blocks)."""
        self._prober.suspect(replica_id)

    def restart_replica(self, replica_id: str, reason: str) -> bool:
        """Restart this running replica (drained, stopped, started again: what a failed
        liveness probe does) from the next round, which this nudges; False when there is
        no such replica running (or not yet observed)."""
        memory = self._memory.get(replica_id)
        if memory is None or memory.health is None or memory.draining:
            return False
        memory.health.restart_reason = reason
        self.nudge()
        return True

    async def probe_once(self) -> None:
        """Run the probes that are due now and wait for their results (for tests)."""
        await self._prober.probe_once()

    def snapshot(self) -> WorkerSnapshot:
        return self._snapshot

    def active_spec(self) -> DeploymentSpec | None:
        return self._active.spec if self._active else None

    @property
    def images(self) -> ImagePuller:
        """The deployment's image pulls: the one under way (`berth get`), `berth pull`."""
        return self._ops.images

    def replica_ports(self) -> dict[str, dict[int, int]]:
        """Each replica's published ports, container port -> 127.0.0.1 port (the scraper's)."""
        return {rid: dict(m.ports) for rid, m in self._memory.items()}

    def round_stalled_for(self) -> float:
        """Seconds the round under way has been running; 0.0 between rounds."""
        return 0.0 if self._round_since is None else trio.current_time() - self._round_since

    async def wait_round(self) -> None:
        """Wait until the next round has finished (the API uses this after a change)."""
        await self._round_done.wait()

    async def run(self) -> None:
        """Reconcile until the deployment is gone and cleaned up; then `finished` is set."""
        try:
            await self._run_rounds()
        finally:
            self._ops.tasks = None  # a crashed worker's nursery is closed: nothing starts there
            self._zero.close()

    async def _run_rounds(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._prober.run)
            self._ops.tasks = nursery  # long operations run here, beside the rounds
            while True:
                self._wake = trio.Event()
                self._round_since = trio.current_time()
                try:
                    finished = await self.reconcile_once()
                finally:
                    self._round_since = None
                done, self._round_done = self._round_done, trio.Event()
                done.set()
                # Nudged during a round that found nothing left to do (an apply right after
                # an rm): the apply is this worker's to carry out, so it goes on.
                if finished and not self._wake.is_set():
                    self._ops.tasks = None
                    self.finished.set()
                    nursery.cancel_scope.cancel()
                    return
                with trio.move_on_at(self._next_round_at()):
                    await self._wake.wait()

    def _next_round_at(self) -> float:
        now = trio.current_time()
        s = self._snapshot
        converged = (
            s.status == "running"
            and s.ready == s.desired
            and s.endpoint_error is None
            and self._unobserved is None
        )
        steady = SLOW_ROUND if self._scale is None else SCALING_ROUND
        at = now + (steady if converged else FAST_ROUND)
        retries = [m.backoff.retry_at for m in self._memory.values() if m.backoff.retry_at]
        future = [r for r in retries if r > now]
        return min([at, *future])

    # -- one round -------------------------------------------------------------------------

    async def reconcile_once(self) -> bool:
        """One observe-plan-act round; True when the deployment is gone and cleaned up."""
        active = await self._load_desired()
        if active is not None:
            self._ops.stop_timeout(active)  # remembered for after an rm
        containers = await self._observe(active)
        if containers is None:
            return False  # unknown: nothing planned, done, published or forgotten
        now = trio.current_time()
        observed = [self._observed(c, now) for c in containers]
        if active is not None:
            await self._watch_rollout(active, containers, now)
        replacing = active is not None and await self._replacing(active, containers)
        desired = None
        if active is not None:
            surge, unavailable = active.spec.update.max_surge, active.spec.update.max_unavailable
            if replacing:
                surge, unavailable = 0, max(unavailable, 1)
            desired = Desired(
                active.spec_id, active.template_id, active.desired_replicas, surge, unavailable
            )
        await self._zero.swap_round(active, now)  # a woken deployment with no GPU free
        actions = plan(desired, observed, creating=self._ops.creating)
        if replacing and self._ops.leaving:
            # In place: the replacement is made once the replica it replaces is gone (its
            # GPU is free then); the removal's end nudges the next round.
            actions = [a for a in actions if not isinstance(a, CreateReplica)]
        leaving = {a.replica_id for a in actions if isinstance(a, RemoveReplica | StopReplica)}
        leaving |= self._ops.leaving
        await self._publisher.publish(active, containers, leaving)
        await self._ops.execute(active, actions)
        self._snapshot = self._make_snapshot(active, containers, leaving)
        await self._zero.recall(self._snapshot.status == "idle")
        self._prober.wake()
        if active is None and not containers and self._ops.idle:
            await self._ctx.endpoints.close(self.name)
            return True
        return False

    async def _replacing(self, active: ActiveRevision, containers: list[ContainerInfo]) -> bool:
        """Whether this round's update replaces in place rather than surging: `[update]
        strategy = "replace"`, or no strategy set and a surge replica found no GPU free
        during this revision's rollout (then for the rest of it, said once)."""
        strategy = active.spec.update.strategy
        if strategy is not None:
            return strategy is UpdateStrategy.REPLACE
        if self._replace_revision == active.revision:
            return True
        rolling = any(c.labels.get(LABEL_TEMPLATE) != active.template_id for c in containers)
        if not (rolling and self._ops.waiting_for_gpu):
            return False
        self._replace_revision = active.revision
        self._ops.reset_create()  # the wait was the surge's; the replacement starts afresh
        await self._ctx.events.emit(
            "replacing",
            f"revision {active.revision}: no GPU free for a surge replica; replacing replicas "
            "in place, one at a time",
            deployment=self.name,
        )
        return True

    async def _watch_rollout(
        self, active: ActiveRevision, containers: list[ContainerInfo], now: float
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
            self._rolled_out = active.template_id
            return
        # A rollout is a change of container template. Once one has rolled out, later
        # shortfalls (a scale-up waiting for a GPU, a crashing replica) are the health checks'
        # business, not a reason to roll back: as Kubernetes, where scaling is no rollout.
        if active.revision in self._failed_revisions or active.template_id == self._rolled_out:
            return
        if self._rollout is None or self._rollout.revision != active.revision:
            deadline = active.spec.update.progress_deadline
            self._rollout = Rollout(active.revision, deadline, now)
        self._rollout.observe(now, ready, stale)
        if self._rollout.stalled(now) and not self._ops.waiting_for_gpu:
            # Waiting for a GPU is no failed revision (an explicit surge on a full box
            # waits, said as pending); anything else stalled past the deadline is.
            await self._roll_back(
                active, self._rollout.reason(active.desired_replicas, self._why())
            )

    def _why(self) -> str | None:
        """The most telling reason new replicas are not ready, for the failed revision."""
        if self._ops.create_error:
            return self._ops.create_error
        for memory in self._memory.values():
            health = memory.health
            if memory.backoff.failures and memory.last_exit_reason:
                return f"replica {memory.replica_id} crash-looping: {memory.last_exit_reason}"
            if health and not health.ready and health.last_result:
                return f"replica {memory.replica_id} not ready: {health.last_result.detail}"
        return None

    async def _roll_back(self, active: ActiveRevision, reason: str) -> None:
        self._failed_revisions.add(active.revision)
        self._failures[active.revision] = f"revision {active.revision} failed: {reason}"
        self._rollout = None
        try:
            back = await self._ctx.store.call(Store.roll_back, self.name, active.revision, reason)
        except RevisionChanged:
            # A user applied meanwhile: the new revision is what to work towards, not back.
            self._failed_revisions.discard(active.revision)
            self._failures.pop(active.revision, None)
            self.nudge()
            return
        if back is None:
            await self._ctx.events.emit(
                "rollout-failed",
                f"revision {active.revision} failed: {reason}; no earlier revision to roll back to",
                deployment=self.name,
                level=logging.ERROR,
            )
            return
        self._ops.reset_create()
        await self._ctx.events.emit(
            "rolled-back",
            f"revision {active.revision} failed: {reason}; rolled back to revision {back.revision}",
            deployment=self.name,
            level=logging.ERROR,
        )
        self.nudge()

    async def _load_desired(self) -> ActiveRevision | None:
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
        await self._ops.load_records(deployment.deployment_id)
        await self._adoption.load(deployment.deployment_id)
        scaled = await self._autoscale(spec, deployment.pinned_replicas)
        self._active = ActiveRevision(
            deployment_id=deployment.deployment_id,
            revision=revision.revision,
            spec=spec,
            spec_id=spec_id(spec),
            template_id=self._template_id(spec),
            desired_replicas=desired_count(spec, deployment.pinned_replicas, scaled),
        )
        return self._active

    def _template_id(self, spec: DeploymentSpec) -> str:
        """What the replicas are made from: the spec's template and, when its environment
        names secrets, their fingerprints (a new value replaces the replicas)."""
        base = template_id(spec)
        secrets = self._ctx.secrets
        return base if secrets is None else secret_template_id(base, spec, secrets)

    async def _autoscale(self, spec: DeploymentSpec, pinned: int | None) -> int | None:
        """The autoscaler's count for this round, or None when the count is not its to set."""
        now = trio.current_time()
        if pinned is not None or not autoscaled(spec) or self._ctx.load is None:
            self._scale = None  # a pin or a fixed count: a later hand-back starts afresh
            self._zero.track(spec, None, now)
            return None
        if self._scale is None:
            running = len(self._memory) or await self._listed_replicas() or spec.replicas.min
            count = initial_count(spec, running)
            self._scale = ScaleState(Autoscaler(bounds(spec, count), spec.autoscale), count)
        else:
            self._scale.autoscaler.reconfigure(bounds(spec, self._scale.count), spec.autoscale)
        self._zero.track(spec, self._scale, now)
        current = self._scale.count
        endpoint = self._ctx.endpoints.get(self.name)
        live = endpoint.statistics(window=LIVE_LATENCY_WINDOW) if endpoint else None
        load = with_live_requests(
            self._ctx.load(self.name, LOAD_WINDOW), live, self._snapshot.ready
        )
        waiting = endpoint.waiting() if endpoint else 0
        decision = decide(self._scale, load, now, waiting)
        if decision.changed:
            if decision.desired > decision.current:
                self.scale_ups += 1
            else:
                self.scale_downs += 1
            await self._ctx.events.emit("scaled", decision.reason, deployment=self.name)
        await self._zero.steer(spec, self._scale, current, waiting, now)
        return self._scale.count

    async def _listed_replicas(self) -> int:
        """How many replicas the deployment has in Podman now (0 when they cannot be
        listed): where a fresh autoscaler begins before this worker's first observation (a
        berthd restart), so a `min = 0` deployment's running replicas are not removed."""
        labels = {LABEL_INSTANCE: self._ctx.instance, LABEL_DEPLOYMENT: self.name}
        try:
            listed = await self._ctx.runtime.list(labels)
        except RuntimeFailure:
            return 0
        return sum(1 for c in listed if c.labels.get(LABEL_REPLICA))

    async def _observe(self, active: ActiveRevision | None) -> list[ContainerInfo] | None:
        """The deployment's containers; None when they could not be listed (unknown).

        A successful observation is the truth for this deployment: what its containers hold
        (GPUs, host ports) is derived from it, and a replica without a container is
        forgotten. An unknown one changes nothing; it is said once, until lists work again.
        """
        labels = {LABEL_INSTANCE: self._ctx.instance, LABEL_DEPLOYMENT: self.name}
        gpu_stamp, port_stamp = self._ctx.gpus.observing(), self._ctx.ports.observing()
        try:
            listed = await self._ctx.runtime.list(labels)
        except RuntimeFailure as exc:
            await self._observation_failed(str(exc))
            return None
        if self._unobserved is not None:
            self._unobserved = None
            await self._ctx.events.emit("observed", "containers listed again", deployment=self.name)
        containers = [c for c in listed if c.labels.get(LABEL_REPLICA)]
        now = trio.current_time()
        shared = active.spec.resources.gpu_memory if active else None
        held_gpus: list[Assignment] = []
        held_ports: set[int] = set()
        for c in containers:
            rid = c.labels[LABEL_REPLICA]
            memory = self._memory.get(rid)
            if memory is None:
                memory = self._memory[rid] = self._ops.remember(rid, now)
                self._adoption.recall(memory, c)
            memory.gpus = parse_gpus_label(c.labels.get(LABEL_GPUS, ""))
            if c.running or c.status == "created":  # a dead container frees its GPUs
                held_gpus.append(Assignment(replica_key(self.name, rid), memory.gpus, shared))
            held_ports.update(parse_extra_ports(c.labels.get(LABEL_EXTRA_PORTS, "")).values())
            if c.host_port is not None:
                held_ports.add(c.host_port)
            await self._track_run(memory, c, active, now)
        self._ctx.gpus.observed(self.name, held_gpus, stamp=gpu_stamp)
        self._ctx.ports.observed(self.name, held_ports, stamp=port_stamp)
        await self._adoption.say_once(active, containers, self._memory)
        seen = {c.labels[LABEL_REPLICA] for c in containers} | self._ops.creating_ids
        for rid in list(self._memory):
            if rid not in seen:
                del self._memory[rid]
        return containers

    async def _observation_failed(self, reason: str) -> None:
        log.warning("cannot list containers: %s", reason, extra={"deployment": self.name})
        if self._unobserved is None:
            await self._ctx.events.emit(
                "observe-failed",
                f"cannot list containers ({reason}); changing nothing until they can be listed",
                deployment=self.name,
                level=logging.WARNING,
            )
        self._unobserved = reason
        self._snapshot = dataclasses.replace(
            self._snapshot, error=f"cannot list containers: {reason}"
        )

    async def _track_run(
        self, memory: ReplicaMemory, c: ContainerInfo, active: ActiveRevision | None, now: float
    ) -> None:
        """Keep the replica's memory in step with its container: runs begin and end here."""
        memory.ports = parse_extra_ports(c.labels.get(LABEL_EXTRA_PORTS, ""))
        if active is not None and c.host_port is not None:
            memory.ports[active.spec.port] = c.host_port
        if memory.container_id != c.container_id:
            memory.container_id, memory.verdict = c.container_id, None
        memory.template_id = c.labels.get(LABEL_TEMPLATE, "")
        if c.running:
            if memory.health is None and active is not None:
                memory.health = ReplicaHealth.begin(
                    active.spec.health,
                    active.spec.port,
                    now,
                    adopted=not memory.started_here,
                    was_ready=memory.restorable,
                )
                if memory.restorable:
                    memory.healthy_since = now
                memory.started_here = memory.restorable = False
            memory.backoff.ran_healthy(memory.healthy_since, now)
            return
        memory.health = None
        memory.healthy_since = None
        memory.restorable = False
        if memory.verdict:
            await self._adoption.keep(active, memory, False)  # a ready one's container stopped
        if self._ops.acting_on(memory.replica_id):
            return  # being created, stopped or removed: not running is its operation's doing
        if not memory.down_recorded:
            await self._ops.record_down(memory, c.container_id, exit_reason(c), now)

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

    # -- what the API shows ----------------------------------------------------------------

    def _make_snapshot(
        self, active: ActiveRevision | None, containers: list[ContainerInfo], leaving: set[str]
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
        if active is not None and desired == 0 and scales_to_zero(active.spec):
            status = "idle"  # scaled to zero; the next request starts a replica
        elif active is None or desired == 0:
            status = "stopped"
        elif self._publisher.endpoint_error:
            status = "failed"
        elif ready >= desired and len(views) == desired:
            status = "running"
        else:
            status = "progressing"
        pending = max(0, desired - len(current)) if active else 0
        error = self._ops.create_error if pending else None
        if error is not None and self._zero.no_swap is not None:
            error += f"; nothing to swap out: {self._zero.no_swap}"
        elif error is not None and self._zero.swapping is not None:
            error += f"; swapping out {', '.join(self._zero.swapping.victims)}"
        if error is None and ready < desired:
            crashing = [v for v in views if v.id in current and v.state == "crashloop"]
            if crashing:
                error = f"replica {crashing[0].id} crash-looping: {crashing[0].last_exit_reason}"
        if pending and self._ops.create_blocked and ready < desired:
            status = "failed"  # the image cannot be pulled, or a mount cannot be prepared
        if active is not None and active.revision in self._failed_revisions:
            status = "failed"
            error = self._failures.get(active.revision) or error
        return WorkerSnapshot(
            desired,
            ready,
            tuple(views),
            status,
            self._publisher.endpoint_error,
            error,
            pending,
            len(current),
            active.revision if active else None,
            self._zero.unloaded_at if status == "idle" else None,
        )
