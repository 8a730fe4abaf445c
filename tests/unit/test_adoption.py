"""A restarted berthd's adoption: replicas that were ready serve at once, the rest wait.

The worker rig of test_worker.py (FakeRuntime, a real SQLite store, a real endpoint,
MockClock); "a restarted berthd" is a fresh `DeploymentWorker` on the same store and
runtime, as after a `kill -9`: the old worker's memory is gone, the store's verdicts stay.
"""

from __future__ import annotations

import dataclasses

import pytest
from trio.testing import MockClock

from config.spec import Health, Probe
from daemon.health.probes import ProbeResult
from daemon.health.verdicts import ProbeKind, ReplicaHealth, Transition
from daemon.reconcile import adoption as adoption_module
from daemon.reconcile.adoption import adopted_message
from daemon.reconcile.worker import DeploymentWorker
from daemon.runtime.interface import LABEL_REPLICA, ContainerInfo
from daemon.store.readiness import Verdict, list_verdicts, save_verdict
from tests.unit.test_worker import Rig, published, rig, running_and_ready, spec_text, view

__all__ = ["rig"]  # the fixture, imported for pytest

SLOW_READINESS = '[health.readiness]\npath = "/health"\nperiod = "30s"\nfailure_threshold = 2\n'


def restarted(rig: Rig) -> DeploymentWorker:
    return DeploymentWorker("web", rig.worker._ctx)


def verdicts(rig: Rig) -> dict[str, Verdict]:
    deployment = rig.store.get_deployment("web")
    assert deployment is not None
    return list_verdicts(rig.store, deployment.deployment_id)


def ids(rig: Rig) -> list[str]:
    return sorted(rig.replicas())


def endpoint_of(rig: Rig, worker: DeploymentWorker) -> set[str]:
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None
    return {u.replica_id for u in endpoint.upstreams()}


async def test_ready_replicas_serve_at_once_and_are_confirmed_by_a_probe_now(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port) + SLOW_READINESS)
    assert {v.ready for v in verdicts(rig).values()} == {True}
    fresh = restarted(rig)
    await fresh.reconcile_once()  # no probe yet: the store's verdicts put them in rotation
    assert endpoint_of(rig, fresh) == set(ids(rig))
    assert fresh.snapshot().status == "running"
    adopted = [e for e in rig.store.events() if e.kind == "adopted"]
    assert len(adopted) == 1
    assert "adopted 2 running replicas" in adopted[0].message
    assert "2 back in rotation at once" in adopted[0].message
    assert "no container started" in adopted[0].message
    # The confirming probe runs now, not a period (30 s) later: no clock jump here.
    sick, well = ids(rig)
    rig.answering.discard(
        next(
            c.spec.host_port
            for c in rig.runtime.containers.values()
            if c.spec.labels[LABEL_REPLICA] == sick
        )
    )
    await fresh.probe_once()
    await fresh.reconcile_once()
    assert next(v for v in fresh.snapshot().replicas if v.id == sick).consecutive_failures == 1
    assert sick in endpoint_of(rig, fresh)  # one failure of two (failure_threshold)
    mock_clock.jump(30.0)
    await fresh.probe_once()
    assert endpoint_of(rig, fresh) == {well}  # out at the second, as any ready replica
    assert verdicts(rig)[sick].ready is False


async def test_a_replica_not_ready_at_the_stop_waits_for_its_probe(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    sick = next(iter(rig.runtime.containers.values()))
    rid = sick.spec.labels[LABEL_REPLICA]
    rig.answering.discard(sick.spec.host_port)
    mock_clock.jump(1.0)
    await rig.settle()
    assert rid not in published(rig) and verdicts(rig)[rid].ready is False
    fresh = restarted(rig)
    await fresh.reconcile_once()
    assert endpoint_of(rig, fresh) == set(ids(rig)) - {rid}
    message = next(e.message for e in rig.store.events() if e.kind == "adopted")
    assert (
        "1 back in rotation at once" in message and "1 in rotation once a probe passes" in message
    )
    rig.answering.add(sick.spec.host_port)
    await fresh.probe_once()  # adopted: one pass is enough, at once
    await fresh.reconcile_once()
    assert endpoint_of(rig, fresh) == set(ids(rig))
    assert verdicts(rig)[rid].ready is True


@pytest.mark.parametrize("field", ["container_id", "template_id"])
async def test_a_verdict_about_another_container_or_template_is_not_trusted(
    rig: Rig, mock_clock: MockClock, field: str
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    rid = ids(rig)[0]
    old = verdicts(rig)[rid]
    other = dataclasses.replace(old, **{field: "something-else"})
    save_verdict(
        rig.store,
        other.deployment_id,
        rid,
        other.container_id,
        other.template_id,
        ready=True,
    )
    fresh = restarted(rig)
    await fresh.reconcile_once()
    assert endpoint_of(rig, fresh) == set(ids(rig)) - {rid}
    await fresh.probe_once()
    await fresh.reconcile_once()
    assert endpoint_of(rig, fresh) == set(ids(rig))
    assert verdicts(rig)[rid].holds_for(old.container_id, old.template_id)  # written afresh


async def test_a_ready_replica_whose_container_stopped_is_not_served_after_a_restart(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    victim = next(iter(rig.runtime.containers.values()))
    rid = victim.spec.labels[LABEL_REPLICA]
    rig.runtime.die(victim.container_id, exit_code=3)
    await rig.worker.reconcile_once()
    assert verdicts(rig)[rid].ready is False
    mock_clock.jump(2.0)
    await rig.worker.reconcile_once()  # started again (same container id), not yet probed
    assert rig.replicas()[rid] == "running"
    fresh = restarted(rig)
    await fresh.reconcile_once()
    assert rid not in endpoint_of(rig, fresh)


async def test_verdicts_are_written_when_they_change_never_per_probe(
    rig: Rig, mock_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[str, bool]] = []

    def counting(store, deployment_id, replica_id, container_id, template_id, *, ready):  # type: ignore[no-untyped-def]
        writes.append((replica_id, ready))
        return save_verdict(
            store, deployment_id, replica_id, container_id, template_id, ready=ready
        )

    monkeypatch.setattr(adoption_module, "save_verdict", counting)
    await running_and_ready(rig, spec_text(rig.port, count=1))
    (rid,) = ids(rig)
    assert writes == [(rid, True)]
    for _ in range(20):  # 20 passing probes, a second apart
        mock_clock.jump(1.0)
        await rig.settle()
    assert writes == [(rid, True)]
    rig.answering.clear()
    for _ in range(3):
        mock_clock.jump(1.0)
        await rig.settle()
    assert writes == [(rid, True), (rid, False)]
    # A restarted worker that finds the verdict as it is writes nothing either.
    fresh = restarted(rig)
    await fresh.reconcile_once()
    assert view(rig, rid).state == "unhealthy"
    assert writes == [(rid, True), (rid, False)]


def test_a_replica_that_was_ready_begins_ready_with_every_probe_due_now() -> None:
    probe = Probe(port=8080, path="/ready", period=30.0, failure_threshold=3, initial_delay=20.0)
    startup = Probe(port=8080, path="/started", period=10.0, failure_threshold=30)
    health = Health(startup=startup, readiness=probe, liveness=probe)
    restored = ReplicaHealth.begin(health, 8080, 100.0, adopted=True, was_ready=True)
    assert restored.ready and restored.started and restored.ever_ready
    assert {t.kind for t in restored.due(100.0)} == {ProbeKind.READINESS, ProbeKind.LIVENESS}
    for _ in range(2):
        assert restored.record(ProbeKind.READINESS, ProbeResult(False, "503"), 100.0) == []
    assert restored.record(ProbeKind.READINESS, ProbeResult(False, "503"), 100.0) == [
        Transition.UNREADY
    ]
    fresh = ReplicaHealth.begin(health, 8080, 100.0, adopted=True)
    assert not fresh.ready and {t.kind for t in fresh.due(100.0)} == {ProbeKind.STARTUP}


def test_the_adopted_message_of_a_removed_deployment_and_of_none() -> None:
    c = ContainerInfo("c1", "n", "img", {LABEL_REPLICA: "r1"}, "running")
    assert adopted_message(None, [], {}) is None
    assert adopted_message(None, [c], {}) == (
        "adopted 1 replica of a removed deployment; removing them"
    )
