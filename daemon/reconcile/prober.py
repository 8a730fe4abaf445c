"""A deployment's prober: every replica's probes, each on its own period, on berthd's loop.

It runs beside the worker's rounds and shares the worker's replica memory: it probes the
replicas whose container runs (each probe in its own task, bounded by its timeout, against
the replica's port on 127.0.0.1), records the results in their `ReplicaHealth`, says each
verdict (ready, not ready, restart) as an event, hands each readiness verdict to
`on_readiness` (the worker keeps it in the store: only changes reach it, never every probe)
and calls `on_verdict` so that the worker acts at once. A result for a container that was
restarted meanwhile is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from daemon.health.probes import ProbeFn, ProbeResult
from daemon.health.verdicts import ProbeKind, ReplicaHealth, Transition
from daemon.reconcile.replica_spec import REPLICA_HOST
from daemon.reconcile.replicas import ReplicaMemory
from daemon.store.events import EventLog

IDLE = 60.0  # a backstop: the worker wakes the prober after every round (new runs begin there)

Due = tuple[ReplicaMemory, ReplicaHealth, ProbeKind]


class Prober:
    def __init__(
        self,
        deployment: str,
        memory: dict[str, ReplicaMemory],
        probe: ProbeFn,
        events: EventLog,
        *,
        on_verdict: Callable[[], None],
        on_unready: Callable[[str], None] = lambda replica_id: None,
        on_ready_probe: Callable[[str], None] = lambda replica_id: None,
        on_readiness: Callable[[ReplicaMemory, bool], Awaitable[None]] | None = None,
    ) -> None:
        self._deployment = deployment
        self._memory = memory
        self._probe = probe
        self._events = events
        self._on_verdict = on_verdict
        self._on_unready = on_unready
        self._on_ready_probe = on_ready_probe  # each readiness probe that passes
        self._on_readiness = on_readiness  # each readiness verdict (kept in the store)
        self._wake = trio.Event()

    def __repr__(self) -> str:
        return f"<Prober {self._deployment}: {len(self._memory)} replicas>"

    def wake(self) -> None:
        self._wake.set()

    def suspect(self, replica_id: str) -> None:
        """Probe this replica's readiness now, not next period. Never blocks."""
        memory = self._memory.get(replica_id)
        if memory is not None and memory.health is not None:
            memory.health.probe_soon(ProbeKind.READINESS, trio.current_time())
            self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as probes:
            while True:
                for memory, health, kind in self._due(trio.current_time()):
                    probes.start_soon(self._probe_one, memory, health, kind)
                self._wake = trio.Event()
                with trio.move_on_at(self._next_at()):
                    await self._wake.wait()

    async def probe_once(self) -> None:
        """Run the probes due now and wait for their results (tests drive it this way)."""
        async with trio.open_nursery() as probes:
            for memory, health, kind in self._due(trio.current_time()):
                probes.start_soon(self._probe_one, memory, health, kind)

    def _due(self, now: float) -> list[Due]:
        due: list[Due] = []
        for memory in list(self._memory.values()):
            health = memory.health
            if health is not None and not memory.draining:
                due.extend((memory, health, track.kind) for track in health.due(now))
        return due

    def _next_at(self) -> float:
        times = [trio.current_time() + IDLE]
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
            try:
                result = await self._probe(probe, REPLICA_HOST, port)
            except BaseException:
                # Cancelled (the worker stops or crashed) or a fault of the probe itself: no
                # result, and the next probe of this track may run (a restarted worker keeps
                # its replicas' health).
                health.abandon(kind)
                raise
        if memory.health is not health:
            return  # the container was restarted meanwhile: this result is stale
        now = trio.current_time()
        transitions = health.record(kind, result, now)
        if not health.ready:
            self._on_unready(memory.replica_id)  # out of rotation before any await
        elif kind is ProbeKind.READINESS and result.ok:
            self._on_ready_probe(memory.replica_id)  # an ejected replica may return
        # The loop sleeps until the next due time it knew, and a track in flight has none
        # there (it would come due again and again while it runs): now that this one is
        # back, its next time counts, so the loop must look again. Without this a lone
        # track waited for the backstop or the worker's next round (up to 30 s), not its
        # period.
        self._wake.set()
        for transition in transitions:
            await self._tell(memory, health, transition, result, now)
        if transitions:
            self._on_verdict()

    async def _tell(
        self,
        memory: ReplicaMemory,
        health: ReplicaHealth,
        transition: Transition,
        result: ProbeResult,
        now: float,
    ) -> None:
        rid = memory.replica_id
        level = logging.WARNING
        if transition is Transition.READY:
            memory.healthy_since = now
            message, level = f"replica {rid} is ready ({result.detail})", logging.INFO
        elif transition is Transition.UNREADY:
            memory.healthy_since = None
            message = f"replica {rid} is not ready: {result.detail}; out of rotation"
        elif transition is Transition.STARTED:
            message, level = f"replica {rid} passed its startup probe", logging.INFO
        else:
            message = f"replica {rid}: {health.restart_reason}; restarting it"
        await self._events.emit(
            str(transition), message, deployment=self._deployment, replica=rid, level=level
        )
        if self._on_readiness is not None and transition in (Transition.READY, Transition.UNREADY):
            await self._on_readiness(memory, transition is Transition.READY)
