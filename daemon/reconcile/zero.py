"""A worker's scale to zero and back: idle unload, cold starts and their cancel, the swap.

Theory of operation. The worker's autoscaler decides its count each round
(`daemon.scaling`); `ZeroScaling.steer` then applies, in this order, what may take an
autoscaled `min = 0` deployment to zero regardless, each through the autoscaler's own
state (the count set, its window started afresh, `Autoscaler.reset`):
1. a swap asked by a woken deployment (`daemon.scaling.board`): acted on when nothing is in
   flight or queued here now, else declined;
2. a cold start whose every waiter left before a replica of it was ready: cancelled
   (`start-cancelled`; the plan then removes the starting container);
3. `scale_to_zero_after` passed since the last request: `unloaded`.
A scale from zero that waiting requests caused is a `cold-start`, remembered until a
replica is ready (or the count goes back to zero).

`swap_round` runs after each observation, before the round's actions: when requests wait
here, no replica is ready and the last create found no GPU (or VRAM) free, it asks
`daemon.scaling.swap.choose_victims` whom to scale to zero (`swap` event, the victims'
workers nudged); once their holdings are gone from the ledger (their containers removed)
and NVML, where present, shows the memory free (`swap.settled`, at most `SETTLE_TIMEOUT`),
the create back-off is cleared so this very round creates the replica. Nothing evictable:
the requests wait in the queue up to `cold_start_timeout` (then 503), and the reason is in
the deployment's error (`berth get`) and in that 503 (`Endpoint.set_hold_note`).

`unloaded_at` (an RFC 3339 time) is when the deployment last went to zero, for `berth ls`
(`idle (unloaded 4m ago)`); after a berthd restart it is read back from the events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from config.spec import DeploymentSpec
from daemon.gpu.ledger import deployment_of
from daemon.gpu.model import free_memory
from daemon.gpu.placement import GpuRequest, Placed, place
from daemon.reconcile.context import ActiveRevision, WorkerContext
from daemon.reconcile.replica_ops import ReplicaOps
from daemon.reconcile.replicas import ReplicaMemory
from daemon.scaling.board import Tenant
from daemon.scaling.driver import ScaleState
from daemon.scaling.idle import (
    Activity,
    ColdStart,
    cancel_due,
    cold_start,
    unload_due,
    unloaded_reason,
)
from daemon.scaling.swap import NoVictim, Woken, choose_victims, settled
from daemon.store.database import Store

SETTLE_TIMEOUT = 30.0  # seconds, after the holdings are gone, to wait for NVML's free memory
ZERO_KINDS = ("unloaded", "start-cancelled", "scaled")  # events that may say "-> 0"


@dataclass
class Swapping:
    """This deployment waits for its victims' GPUs."""

    victims: tuple[str, ...]
    devices: frozenset[str]
    since: float
    gone_at: float | None = None  # when the last victim's holdings left the ledger


class ZeroScaling:
    def __init__(
        self,
        name: str,
        ctx: WorkerContext,
        memory: dict[str, ReplicaMemory],
        ops: ReplicaOps,
        *,
        nudge: Callable[[], None],
    ) -> None:
        self.name = name
        self.ctx = ctx
        self.memory = memory
        self.ops = ops
        self.since = 0.0  # when the autoscaler began (the idle clock's earliest start)
        self.cold: ColdStart | None = None
        self.swapping: Swapping | None = None
        self.no_swap: str | None = None  # why nothing can be swapped out for our waiters
        self.unloaded_at: str | None = None  # when it last went to zero (RFC 3339)
        self._freeing_for: str | None = None  # swapped out for it: nudge it once our GPUs free
        self._recalled = False
        self._spec: DeploymentSpec | None = None
        self._scale: ScaleState | None = None
        self._view = self.tenant  # one bound method: the board knows it by identity
        ctx.swaps.join(name, self._view, nudge)

    def __repr__(self) -> str:
        return f"<ZeroScaling {self.name} cold={self.cold} swapping={self.swapping}>"

    def close(self) -> None:
        self.ctx.swaps.leave(self.name, self._view)

    # -- what the others see ---------------------------------------------------------------

    def activity(self) -> Activity:
        endpoint = self.ctx.endpoints.get(self.name)
        if endpoint is None:
            return Activity()
        return Activity(
            endpoint.requests_in_flight(), endpoint.waiting(), endpoint.last_request_at()
        )

    def tenant(self) -> Tenant | None:
        spec, scale = self._spec, self._scale
        if spec is None:
            return None
        gateway = spec.gateway
        now = trio.current_time()
        activity = self.activity()
        return Tenant(
            min_replicas=spec.replicas.min,
            autoscaled=scale is not None,
            target=scale.count if scale is not None else None,
            priority=gateway.priority if gateway else 0,
            group=gateway.group if gateway else None,
            min_idle=gateway.min_idle if gateway else 0.0,
            activity=activity,
            idle_for=activity.idle_for(self.since, now),
        )

    def any_ready(self) -> bool:
        return any(m.health is not None and m.health.ready for m in self.memory.values())

    # -- each round, after the autoscaler's decision ---------------------------------------

    def track(self, spec: DeploymentSpec | None, scale: ScaleState | None, now: float) -> None:
        """The spec and the autoscaler of this round (None: the count is not its own)."""
        if scale is not None and self._scale is not scale:
            self.since = now  # a fresh autoscaler: the idle clock starts now at the earliest
        if scale is None:
            self.cold = None
        self._spec, self._scale = spec, scale

    async def steer(
        self, spec: DeploymentSpec, scale: ScaleState, current: int, waiting: int, now: float
    ) -> None:
        """After the autoscaler's decision (`current` -> `scale.count`): swap-out, cancel,
        unload, cold start (see the module docstring)."""
        activity = self.activity()
        swaps = self.ctx.swaps
        ask = swaps.asked(self.name, now)
        if ask is not None:
            if activity.busy or spec.replicas.min > 0:
                swaps.answer(self.name, acted=False)
            else:
                await self._to_zero(scale, now, "scaled", f"swapped out for {ask.for_whom}")
                swaps.answer(self.name, acted=True)
                self._freeing_for = ask.for_whom
                return
        if scale.count == 0:
            self.cold = None
            if current > 0:
                await self._gone_to_zero()
            return
        if self.cold is None and (started := cold_start(current, scale.count, waiting, now)):
            self.cold = started
            await self.ctx.events.emit(
                "cold-start", started.reason(scale.count), deployment=self.name
            )
            return
        if self.cold is not None and self.any_ready():
            self.cold = None  # the cold start is over: a replica serves
        if cancel_due(self.cold, activity, self.any_ready()):
            assert self.cold is not None
            reason = self.cold.cancelled_reason(now, scale.count)
            await self._to_zero(scale, now, "start-cancelled", reason, plain=True)
            return
        ttl = spec.replicas.scale_to_zero_after
        idle = unload_due(ttl, activity, self.since, now)
        if idle is not None and ttl is not None and spec.replicas.min == 0:
            await self._to_zero(scale, now, "unloaded", unloaded_reason(idle, ttl, scale.count))

    async def _to_zero(
        self, scale: ScaleState, now: float, kind: str, why: str, *, plain: bool = False
    ) -> None:
        current = scale.count
        scale.count = 0
        scale.autoscaler.reset(now, 0)
        self.cold = None
        if self.swapping is not None:  # a cancelled cold start's swap: its asks are void
            self.ctx.swaps.finish(self.swapping.victims, self.name)
            self.swapping = None
        message = why if plain or kind == "unloaded" else f"{why}: {current} -> 0"
        event = await self.ctx.events.emit(kind, message, deployment=self.name)
        self.unloaded_at = event.time

    async def _gone_to_zero(self) -> None:
        """The autoscaler's own scale-down reached zero (its `scaled` event said why)."""
        if self.swapping is not None:
            self.ctx.swaps.finish(self.swapping.victims, self.name)
            self.swapping = None
        events = await self.ctx.store.call(Store.events, deployment=self.name, limit=1)
        if events:
            self.unloaded_at = events[-1].time

    async def recall(self, idle: bool) -> None:
        """After a berthd restart, when it went to zero (once, from the events)."""
        if not idle or self.unloaded_at is not None or self._recalled:
            return
        self._recalled = True
        for event in reversed(
            await self.ctx.store.call(Store.events, deployment=self.name, limit=50)
        ):
            if event.kind in ZERO_KINDS and (
                event.kind != "scaled" or event.message.endswith("-> 0")
            ):
                self.unloaded_at = event.time
                return

    # -- the swap, for a woken deployment --------------------------------------------------

    async def swap_round(self, active: ActiveRevision | None, now: float) -> None:
        """Ask for a swap when this deployment's waiting requests have no GPU; create at once
        once the victims' GPUs are free (see the module docstring)."""
        if self._freeing_for is not None and not self._holds_gpus():
            self.ctx.swaps.nudge(self._freeing_for)  # swapped out, GPUs free: it creates now
            self._freeing_for = None
        if active is None or not self._woken():
            self._no_swap(None)
            if self.swapping is not None:
                self.ctx.swaps.finish(self.swapping.victims, self.name)
                self.swapping = None
            return
        if self.swapping is not None:
            await self._follow_swap(active, now)
            return
        if not self.ops.waiting_for_gpu or self.ops.creating:
            return
        spec = active.spec
        gateway = spec.gateway
        woken = Woken(
            self.name,
            GpuRequest.of(spec.resources),
            gateway.priority if gateway else 0,
            gateway.group if gateway else None,
        )
        ledger = self.ctx.gpus
        holdings = ledger.holdings()
        others = {k: a for k, a in holdings.items() if deployment_of(k) != self.name}
        free = None
        if woken.request.gpu_memory is not None:  # as the create's placement asks
            free = free_memory(await ledger.reader.sample())
        held = list(others.values())
        if isinstance(place(woken.request, ledger.gpus(), held, free_memory=free), Placed):
            # Room came by other means (a scale-down, a removal): create now rather than
            # at the end of a create back-off that may have grown to minutes.
            self._no_swap(None)
            self.ops.reset_create()
            return
        candidates = self.ctx.swaps.candidates(others, now)
        choice = choose_victims(woken, candidates, ledger.gpus(), held)
        if isinstance(choice, NoVictim):
            self._no_swap(choice.reason)
            return
        self._no_swap(None)
        pending = (self.ops.create_error or "is pending").removeprefix("a new replica ")
        reason = choice.describe(woken, pending)
        names = tuple(v.deployment for v in choice.victims)
        devices = frozenset(d for v in choice.victims for a in v.holds for d in a.devices)
        self.swapping = Swapping(names, devices, now)
        self.ctx.swaps.evict(names, self.name, reason, now)
        await self.ctx.events.emit("swap", reason, deployment=self.name)

    def _holds_gpus(self) -> bool:
        return any(deployment_of(k) == self.name for k in self.ctx.gpus.holdings())

    def _no_swap(self, reason: str | None) -> None:
        """Why nothing can be swapped out for our waiters: in the deployment's error, and in
        the 503 of a held request that waits out `cold_start_timeout`."""
        if reason == self.no_swap:
            return
        self.no_swap = reason
        endpoint = self.ctx.endpoints.get(self.name)
        if endpoint is not None:
            pending = self.ops.create_error or "no GPU free"
            endpoint.set_hold_note(
                None if reason is None else f"{pending}; nothing to swap out: {reason}"
            )

    def _woken(self) -> bool:
        """Requests wait here, and no replica is ready to serve them."""
        endpoint = self.ctx.endpoints.get(self.name)
        return endpoint is not None and endpoint.waiting() > 0 and not self.any_ready()

    async def _follow_swap(self, active: ActiveRevision, now: float) -> None:
        """Wait for the victims' GPUs; once free, clear the create back-off so this round
        creates. A victim that declined (a request came there meanwhile) or never went
        ends the swap: the next round chooses again."""
        s = self.swapping
        assert s is not None
        swaps = self.ctx.swaps
        states = [swaps.state(v, self.name) for v in s.victims]
        if "declined" in states or None in states or now - s.since > _give_up(active):
            swaps.finish(s.victims, self.name)
            self.swapping = None
            return
        held = {deployment_of(k) for k in self.ctx.gpus.holdings()}
        if held & set(s.victims):
            return
        if s.gone_at is None:
            s.gone_at = now
        samples = await self.ctx.gpus.reader.sample()
        request = GpuRequest.of(active.spec.resources)
        if not settled(request, s.devices, samples) and now - s.gone_at < SETTLE_TIMEOUT:
            return
        swaps.finish(s.victims, self.name)
        self.swapping = None
        self.ops.reset_create()  # the swap freed the GPU: create now, not at the back-off's end


def _give_up(active: ActiveRevision) -> float:
    """How long to wait for the victims to go: their drain and stop, and then some."""
    spec = active.spec
    return max(120.0, 2 * (spec.update.drain_timeout + spec.stop_timeout) + 30.0)
