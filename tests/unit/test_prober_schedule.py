"""The prober's own loop keeps every track on its period (MockClock, a counting fake probe).

A probe that ends before its next one is due, with no change of verdict, must still leave
the loop asleep until that next one (not until its 60 s backstop): with one replica and one
track, nothing else would wake it.
"""

from __future__ import annotations

from pathlib import Path

import trio
from trio.testing import MockClock

from config.spec import Health, Probe
from daemon.health.probes import ProbeResult
from daemon.health.verdicts import ReplicaHealth
from daemon.reconcile.prober import Prober
from daemon.reconcile.replicas import ReplicaMemory
from daemon.store.access import StoreAccess
from daemon.store.database import Store
from daemon.store.events import EventLog


async def test_one_track_is_probed_every_period_and_a_failure_is_seen_within_one(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # events are written from the store's real thread
    times: list[float] = []
    answering = True

    async def probe(p: Probe, host: str, port: int) -> ProbeResult:
        times.append(trio.current_time())
        await trio.sleep(0.01)
        return ProbeResult(answering, "fake")

    readiness = Probe(port=8080, path="/health", period=1.0, failure_threshold=1)
    memory = ReplicaMemory("r1", first_seen=0.0, ports={8080: 18080})
    memory.health = ReplicaHealth.begin(Health(readiness=readiness), 8080, trio.current_time())
    with Store(tmp_path / "berth.db") as store:
        prober = Prober(
            "web", {"r1": memory}, probe, EventLog(StoreAccess(store)), on_verdict=lambda: None
        )
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prober.run)
            await trio.sleep(10.5)
            assert memory.health.ready
            assert len(times) == 11, [round(t - began, 2) for t in times]
            answering = False
            await trio.sleep(1.1)
            assert not memory.health.ready  # the next probe, a period later, saw it
            nursery.cancel_scope.cancel()
