"""A worker's hands: what it does to replicas (create, start again, stop, drain, remove).

The worker decides (its plan), this executes. `execute` only dispatches: each action runs
as a task in the nursery the worker owns (`tasks`), so a round never waits for a pull, a
drain or a stop that waits out `stop_timeout`; each task nudges the worker when it ends.

Invariants:
- At most one operation at a time per replica (`busy`): an action for a replica that has
  one in flight is not dispatched again. Replicas being stopped or removed are `leaving`
  and stay out of the endpoint's rotation.
- Creates run one at a time (one pull of an image, not several), and a create counts in the
  plan from its dispatch until it ends (`creating`), so the plan never asks for it twice.
  A queued create works towards the active revision of the moment it runs, not of its
  dispatch, and gives up quietly while the create back-off runs.
- Without a worker's nursery (tests that drive single rounds) `execute` waits for what it
  dispatched, in a nursery of its own.

It also keeps what must outlive a berthd restart in the store (restart counts, last exit
reasons) and the deployment-wide create back-off: a create that fails (no GPU free, an image
that cannot be pulled, a mount that cannot be prepared) is said once per distinct reason and
retried later.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import trio

from config.canonical import probe_ports, scrape_ports
from config.spec import DeploymentSpec, PullPolicy
from daemon.gpu.ledger import replica_key
from daemon.gpu.model import free_memory
from daemon.gpu.placement import GpuRequest, Unplaceable
from daemon.health.backoff import RestartBackoff
from daemon.integrations.git import MountError
from daemon.integrations.registry import RegistryCredentialsError
from daemon.reconcile.context import ActiveRevision, WorkerContext
from daemon.reconcile.image_pull import ImagePuller
from daemon.reconcile.plan import Action, CreateReplica, RemoveReplica, StartReplica, StopReplica
from daemon.reconcile.replica_spec import ReplicaIdentity, ReplicaPlacement, replica_container
from daemon.reconcile.replicas import ReplicaMemory
from daemon.runtime.interface import (
    ContainerNotFound,
    MountSpec,
    RuntimeFailure,
    TemporaryRuntimeError,
)
from daemon.secrets.references import (
    SecretText,
    SecretUnavailable,
    env_secret_names,
    resolve_env_secrets,
    resolve_secret,
)
from daemon.store.database import ReplicaRecord, Store

log = logging.getLogger("berthd")


class CreateRefused(Exception):
    """New replicas cannot be made now; the message says why, fit for an event."""

    def __init__(self, message: str, *, repeated: bool = False, temporary: bool = False) -> None:
        super().__init__(message)
        self.repeated = repeated
        self.temporary = temporary  # e.g. a pull that stalled: retried, nothing is wrong


class ReplicaOps:
    def __init__(
        self,
        deployment: str,
        ctx: WorkerContext,
        memory: dict[str, ReplicaMemory],
        active: Callable[[], ActiveRevision | None],
        *,
        on_done: Callable[[], None] = lambda: None,
    ) -> None:
        self.deployment = deployment
        self.ctx = ctx
        self._memory = memory
        self._active = active
        self._on_done = on_done
        self.tasks: trio.Nursery | None = None  # the worker's, while it runs
        self.busy: set[str] = set()  # replica ids with an operation in flight
        self.leaving: set[str] = set()  # of those, the ones being stopped or removed
        self.creating = 0  # creates dispatched and not over
        self.creating_ids: set[str] = set()  # replica ids of creates under way
        self._create_lock = trio.Lock()
        self.records: dict[str, ReplicaRecord] | None = None
        self.create_error: str | None = None
        # The create error is the image or a mount (not a wait for a GPU): the deployment
        # reads as failed until a create succeeds.
        self.create_blocked = False
        self.create_backoff = RestartBackoff()
        # The last create found no GPU (or VRAM) free: an update cannot surge now.
        self.waiting_for_gpu = False
        self._last_stop_timeout = 10.0
        self._last_drain_timeout = 30.0
        self._pulled_for: str | None = None  # the revision (spec_id) the image was pulled for
        # Pulls run in the worker's nursery and are shared with `berth pull`.
        self.images = ImagePuller(deployment, lambda: ctx.runtime, ctx.events, lambda: self.tasks)

    def __repr__(self) -> str:
        return f"<ReplicaOps {self.deployment} create_error={self.create_error!r}>"

    async def load_records(self, deployment_id: str) -> None:
        """Restart counts and exit reasons from the store, once per worker."""
        if self.records is None:
            records = await self.ctx.store.call(Store.list_replicas, deployment_id)
            self.records = {r.replica_id: r for r in records}

    def stop_timeout(self, active: ActiveRevision | None) -> float:
        """The spec's grace period; for a removed deployment, that of its last spec."""
        if active is not None:
            self._last_stop_timeout = active.spec.stop_timeout
            self._last_drain_timeout = active.spec.update.drain_timeout
        return self._last_stop_timeout

    def drain_timeout(self) -> float:
        """`[update] drain_timeout` of the active spec; for a removed deployment, its last."""
        return self._last_drain_timeout

    def reset_create(self) -> None:
        self.create_error = None
        self.create_blocked = False
        self.create_backoff = RestartBackoff()

    def remember(self, rid: str, now: float) -> ReplicaMemory:
        memory = ReplicaMemory(rid, first_seen=now)
        record = (self.records or {}).get(rid)
        if record is not None:
            memory.restarts = record.restarts
            memory.last_exit_reason = record.last_exit_reason
        return memory

    async def record_down(
        self, memory: ReplicaMemory, container_id: str, reason: str, now: float
    ) -> None:
        memory.down_recorded = True
        memory.last_exit_reason = reason
        delay = memory.backoff.failed(now)
        await self._save(memory, container_id, "crashloop")
        await self.ctx.events.emit(
            "died",
            f"replica {memory.replica_id} {reason}; restarting in {delay:.1f}s",
            deployment=self.deployment,
            replica=memory.replica_id,
            level=logging.WARNING,
        )

    @property
    def idle(self) -> bool:
        return not self.busy and not self.creating

    def acting_on(self, replica_id: str) -> bool:
        """An operation of ours is under way on this replica (its create included)."""
        return replica_id in self.busy or replica_id in self.creating_ids

    async def execute(self, active: ActiveRevision | None, actions: list[Action]) -> None:
        """Dispatch `actions` as tasks; returns at once while the worker's nursery runs."""
        if self.tasks is not None:
            self._dispatch(self.tasks, active, actions)
            return
        async with trio.open_nursery() as nursery:
            self._dispatch(nursery, active, actions)

    def _dispatch(
        self, nursery: trio.Nursery, active: ActiveRevision | None, actions: list[Action]
    ) -> None:
        for action in actions:
            if isinstance(action, CreateReplica):
                if active is not None and self.create_backoff.may_retry(trio.current_time()):
                    self.creating += 1
                    nursery.start_soon(self._create_in_turn)
                continue
            rid = action.replica_id
            if self.acting_on(rid):
                continue
            self.busy.add(rid)
            if isinstance(action, RemoveReplica | StopReplica):
                self.leaving.add(rid)
                memory = self._memory.get(rid)
                if memory is not None:
                    memory.draining = True  # out of rotation from this round's publish on
            nursery.start_soon(self._run_op, action, active)

    async def _run_op(
        self, action: StartReplica | StopReplica | RemoveReplica, active: ActiveRevision | None
    ) -> None:
        try:
            if isinstance(action, RemoveReplica):
                await self._remove(action, active)
            elif isinstance(action, StopReplica):
                await self._stop_for_restart(action, active)
            else:
                await self._start_again(action)
        finally:
            self.busy.discard(action.replica_id)
            self.leaving.discard(action.replica_id)
            self._on_done()

    async def _create_in_turn(self) -> None:
        try:
            async with self._create_lock:
                active = self._active()
                if active is not None and self.create_backoff.may_retry(trio.current_time()):
                    await self._create(active)
        finally:
            self.creating -= 1
            self._on_done()

    async def _save(self, memory: ReplicaMemory, container_id: str, state: str) -> None:
        active = self._active()
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
        saved = await self.ctx.store.call(Store.save_replica, record)
        if self.records is not None:
            self.records[memory.replica_id] = saved

    def _extra_ports(self, spec: DeploymentSpec) -> set[int]:
        """Container ports published besides the app port: the probes' and the scrapes'."""
        return set(probe_ports(spec)) | set(scrape_ports(spec))

    async def _create(self, active: ActiveRevision) -> None:
        rid = secrets.token_hex(4)
        self.creating_ids.add(rid)
        try:
            await self._create_replica(active, rid)
        finally:
            self.creating_ids.discard(rid)

    async def _create_replica(self, active: ActiveRevision, rid: str) -> None:
        ctx = self.ctx
        spec = active.spec
        key = replica_key(self.deployment, rid)
        request = GpuRequest.of(spec.resources)
        free = None
        if request.gpu_memory is not None:
            # With NVML, a shared GPU must also have the VRAM free right now.
            free = free_memory(await ctx.gpus.reader.sample())
        placed = ctx.gpus.place(key, request, free_memory=free)
        if isinstance(placed, Unplaceable):
            self.waiting_for_gpu = True
            await self._create_failed(f"a new replica is pending: {placed.reason}", rid, "pending")
            return
        self.waiting_for_gpu = False
        try:
            mounts = await self._prepare(active)
        except CreateRefused as exc:
            ctx.gpus.release(key)
            await self._create_failed(str(exc), rid, "create-failed", quiet=exc.repeated)
            # A pull or a mount: `apply --wait` must not wait it out; a stalled or broken
            # download is retried (its stored layers kept) and blocks nothing.
            self.create_blocked = not exc.temporary
            return
        try:
            secret_values = await self._secret_values(spec)
        except SecretUnavailable as exc:  # names the field and the secret, never a value
            ctx.gpus.release(key)
            await self._create_failed(str(exc), rid, "create-failed")
            self.create_blocked = True
            return
        host_port = ctx.ports.allocate(key)
        extra = {port: ctx.ports.allocate(key) for port in sorted(self._extra_ports(spec))}
        who = ReplicaIdentity(
            ctx.instance, self.deployment, rid, active.spec_id, active.template_id
        )
        where = ReplicaPlacement(host_port, extra, placed.devices)
        container = replica_container(spec, who, where, mounts, secret_values)
        memory = self._memory[rid] = ReplicaMemory(rid, first_seen=trio.current_time())
        memory.started_here = True
        try:
            container_id = await ctx.runtime.create(container)
        except RuntimeFailure as exc:
            ctx.ports.release(key)
            ctx.gpus.release(key)
            message = f"replica {rid} of revision {active.revision} failed to start: {exc}"
            await self._create_failed(message, rid, "create-failed")
            return
        # The container exists and carries its labels: from here on, observation says
        # what it holds (a start that fails leaves a container that holds its ports only).
        ctx.ports.settle(key)
        ctx.gpus.settle(key)
        try:
            memory.ports = {spec.port: host_port, **extra}
            await self._save(memory, container_id, "starting")
            await ctx.runtime.start(container_id)
        except RuntimeFailure as exc:
            ctx.gpus.release(key)
            message = f"replica {rid} of revision {active.revision} failed to start: {exc}"
            await self._create_failed(message, rid, "create-failed")
            return
        self.reset_create()
        gpus = f", GPUs {', '.join(placed.devices)}" if placed.devices else ""
        await ctx.events.emit(
            "created",
            f"replica {rid} created (revision {active.revision}, spec {active.spec_id}, "
            f"port {host_port}{gpus})",
            deployment=self.deployment,
            replica=rid,
        )

    async def _secret_values(self, spec: DeploymentSpec) -> dict[str, SecretText]:
        """The values of the secrets the environment names, read now (for this create)."""
        if not env_secret_names(spec):
            return {}
        if self.ctx.secrets is None:
            raise SecretUnavailable("env: this berthd keeps no secrets")
        return await resolve_env_secrets(spec, self.ctx.secrets)

    async def _registry_password(self, spec: DeploymentSpec) -> SecretText | None:
        """The value of `registry.password`'s secret, read now (for this pull), if any."""
        if spec.registry is None or spec.registry.password is None:
            return None
        try:
            return await resolve_secret(
                self.ctx.secrets, spec.registry.password, "registry.password"
            )
        except SecretUnavailable as exc:  # names the field and the secret, never a value
            raise RegistryCredentialsError(str(exc)) from None

    async def _prepare(self, active: ActiveRevision) -> tuple[MountSpec, ...]:
        """Pull the image (with the spec's credentials) and prepare its mounts."""
        ctx, spec = self.ctx, active.spec
        try:
            password = await self._registry_password(spec)
            auth = await trio.to_thread.run_sync(ctx.mounts.registry_auth, spec.registry, password)
            present = await ctx.runtime.image_exists(spec.image)
            if spec.pull is PullPolicy.NEVER and not present:
                raise CreateRefused(
                    f'image {spec.image} is not on this host and pull = "never" '
                    "(load it with podman load or podman pull first)"
                )
            again = spec.pull is PullPolicy.ALWAYS and self._pulled_for != active.spec_id
            if not present or again:
                await self.images.pull(spec.image, auth)
                self._pulled_for = active.spec_id
            return await ctx.mounts.prepare(spec, active.spec_id)
        except RegistryCredentialsError as exc:
            raise CreateRefused(f"registry credentials: {exc}") from exc
        except TemporaryRuntimeError as exc:
            raise CreateRefused(f"cannot pull {spec.image}: {exc}", temporary=True) from exc
        except RuntimeFailure as exc:
            raise CreateRefused(f"cannot pull {spec.image}: {exc}") from exc
        except MountError as exc:
            raise CreateRefused(str(exc), repeated=exc.repeated) from exc

    async def _create_failed(
        self, message: str, rid: str, kind: str, *, quiet: bool = False
    ) -> None:
        """No replica could be made: say so once per distinct reason, retry with back-off."""
        self.create_blocked = False
        delay = self.create_backoff.failed(trio.current_time())
        if message != self.create_error and not quiet:
            await self.ctx.events.emit(
                kind,
                f"{message} (retrying in {delay:.1f}s)",
                deployment=self.deployment,
                level=logging.ERROR if kind != "pending" else logging.WARNING,
            )
        self.create_error = message

    async def _start_again(self, action: StartReplica) -> None:
        memory = self._memory.get(action.replica_id)
        if memory is None:
            return
        reason = memory.last_exit_reason or action.reason
        key = replica_key(self.deployment, action.replica_id)
        active = self._active()
        shared = active.spec.resources.gpu_memory if active else None
        taken = self.ctx.gpus.claim(key, memory.gpus, shared)
        if taken is not None:
            await self._replace_for_gpu(action, taken)
            return
        try:
            await self.ctx.runtime.start(action.container_id)
        except ContainerNotFound:
            self.ctx.gpus.release(key)
            return  # removed behind our back: the next round sees it gone
        except RuntimeFailure as exc:
            self.ctx.gpus.release(key)
            memory.down_recorded = False
            await self.record_down(
                memory, action.container_id, f"failed to start: {exc}", trio.current_time()
            )
            return
        memory.restarts += 1
        memory.down_recorded = False
        memory.started_here = True
        memory.health = None
        await self._save(memory, action.container_id, "starting")
        await self.ctx.events.emit(
            "restarted",
            f"replica {action.replica_id} restarted (restart {memory.restarts}; it {reason})",
            deployment=self.deployment,
            replica=action.replica_id,
        )

    async def _replace_for_gpu(self, action: StartReplica, taken: str) -> None:
        """A stopped replica's GPU went to another replica while it was down: it cannot
        start with it again, so it goes; the plan makes a new one, placed afresh."""
        await self.ctx.events.emit(
            "replaced",
            f"replica {action.replica_id} cannot start again: its GPU {taken}; replacing it",
            deployment=self.deployment,
            replica=action.replica_id,
            level=logging.WARNING,
        )
        await self._remove(RemoveReplica(action.replica_id, action.container_id, "GPU taken"), None)

    async def _drain(self, replica_id: str) -> None:
        endpoint = self.ctx.endpoints.get(self.deployment)
        if endpoint is not None:
            with trio.move_on_after(self.drain_timeout()):
                # The proxy counts in-flight requests on its hot path and signals nothing;
                # polling here keeps the hot path free of wake-ups.
                while endpoint.in_flight(replica_id) > 0:  # noqa: ASYNC110
                    await trio.sleep(0.05)

    async def _stop_for_restart(self, action: StopReplica, active: ActiveRevision | None) -> None:
        memory = self._memory.get(action.replica_id)
        if memory is None:
            return
        memory.draining = True
        try:
            await self._drain(action.replica_id)
            timeout = self.stop_timeout(active)
            await self.ctx.runtime.stop(action.container_id, timeout=timeout)
        except RuntimeFailure as exc:
            log.warning("stop for restart failed: %s", exc, extra={"deployment": self.deployment})
            return
        finally:
            memory.draining = False
        memory.health = None
        memory.healthy_since = None
        await self.record_down(memory, action.container_id, action.reason, trio.current_time())

    async def _remove(self, action: RemoveReplica, active: ActiveRevision | None) -> None:
        ctx = self.ctx
        memory = self._memory.get(action.replica_id)
        if memory is not None:
            memory.draining = True
        await self._drain(action.replica_id)
        stop_timeout = self.stop_timeout(active)
        try:
            info = await ctx.runtime.inspect(action.container_id)
            await ctx.runtime.stop(action.container_id, timeout=stop_timeout)
            await ctx.runtime.remove(action.container_id)
        except RuntimeFailure as exc:
            await ctx.events.emit(
                "remove-failed",
                f"replica {action.replica_id}: {exc}",
                deployment=self.deployment,
                replica=action.replica_id,
                level=logging.ERROR,
            )
            return
        key = replica_key(self.deployment, action.replica_id)
        ports = {info.host_port, *(memory.ports.values() if memory else ())}
        ctx.ports.release(key, {p for p in ports if p is not None})
        ctx.gpus.release(key)
        await ctx.store.call(Store.delete_replica, action.replica_id)
        await ctx.events.emit(
            "removed",
            f"replica {action.replica_id} stopped and removed ({action.reason})",
            deployment=self.deployment,
            replica=action.replica_id,
        )
