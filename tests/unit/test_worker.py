"""The reconcile worker's executor, round by round, against FakeRuntime and a real SQLite store.

Probes are faked (a set of replica ports that answer), the endpoint is a real proxy listener
on 127.0.0.1; each test drives `reconcile_once` directly, so no clock is involved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from config.canonical import spec_id, template_id
from config.parse import parse_spec
from config.spec import Probe
from daemon.endpoints import EndpointManager
from daemon.events import EventLog
from daemon.fake_runtime import FakeRuntime
from daemon.health import ProbeResult
from daemon.ports import HostPortAllocator
from daemon.runtime import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_REPLICA,
    LABEL_SPEC_ID,
    LABEL_TEMPLATE,
    RuntimeFailure,
)
from daemon.store import Store
from daemon.store_access import StoreAccess
from daemon.worker import DeploymentWorker, WorkerContext
from tests.conftest import free_port

IMAGE = "localhost/berth-echo:1"


def spec_text(port: int, *, message: str = "v1", count: int = 2) -> str:
    return (
        f'name = "web"\nimage = "{IMAGE}"\nport = 8080\n[env]\nMESSAGE = "{message}"\n'
        f'[replicas]\ncount = {count}\n[endpoint]\nport = {port}\nbind = "127.0.0.1"\n'
    )


@dataclass
class Rig:
    runtime: FakeRuntime
    store: Store
    access: StoreAccess
    endpoints: EndpointManager
    worker: DeploymentWorker
    answering: set[int]  # host ports whose probe passes
    port: int

    def apply(self, text: str) -> str:
        spec = parse_spec(text)
        self.store.apply(spec.name, spec_id(spec), text, "{}")
        return template_id(spec)

    def replicas(self) -> dict[str, str]:
        """replica id -> container status"""
        return {c.spec.labels[LABEL_REPLICA]: c.status for c in self.runtime.containers.values()}

    def all_answer(self) -> None:
        self.answering.update(c.spec.host_port for c in self.runtime.containers.values())

    def events(self) -> list[str]:
        return [e.kind for e in self.store.events()]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    runtime = FakeRuntime(images={IMAGE})
    store = Store(tmp_path / "berth.db")
    access = StoreAccess(store)
    endpoints = EndpointManager(drain_timeout=1.0)
    answering: set[int] = set()

    async def probe(p: Probe | None, host: str, port: int) -> ProbeResult:
        return ProbeResult(port in answering, "fake")

    ctx = WorkerContext(
        instance="inst",
        runtime=runtime,
        store=access,
        events=EventLog(access),
        endpoints=endpoints,
        ports=HostPortAllocator(),
        probe=probe,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoints.run)
        yield Rig(
            runtime, store, access, endpoints, DeploymentWorker("web", ctx), answering, free_port()
        )
        nursery.cancel_scope.cancel()
    store.close()


async def test_creates_the_replicas_with_labels_and_publishes_only_ready_ones(rig: Rig) -> None:
    template = rig.apply(spec_text(rig.port))
    await rig.worker.reconcile_once()
    assert len(rig.replicas()) == 2 and set(rig.replicas().values()) == {"running"}
    for c in rig.runtime.containers.values():
        labels = c.spec.labels
        assert labels[LABEL_INSTANCE] == "inst" and labels[LABEL_DEPLOYMENT] == "web"
        assert labels[LABEL_TEMPLATE] == template and labels[LABEL_SPEC_ID]
        assert c.spec.host_ip == "127.0.0.1" and c.spec.env["MESSAGE"] == "v1"
    snapshot = rig.worker.snapshot()
    assert (snapshot.desired, snapshot.ready, snapshot.status) == (2, 0, "progressing")
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None and endpoint.upstreams() == ()

    rig.all_answer()
    await rig.worker.reconcile_once()
    assert rig.worker.snapshot().status == "running"
    assert {u.replica_id for u in endpoint.upstreams()} == set(rig.replicas())
    # up to date: another round changes nothing
    calls = len(rig.runtime.calls)
    await rig.worker.reconcile_once()
    assert [c for c in rig.runtime.calls[calls:] if c[0] in ("create", "start", "stop")] == []


async def test_a_dead_container_is_started_again_under_the_same_replica_id(rig: Rig) -> None:
    rig.apply(spec_text(rig.port))
    await rig.worker.reconcile_once()
    rig.all_answer()
    await rig.worker.reconcile_once()
    victim = next(iter(rig.runtime.containers.values()))
    rid = victim.spec.labels[LABEL_REPLICA]
    rig.runtime.die(victim.container_id, exit_code=3)
    await rig.worker.reconcile_once()
    assert rig.replicas()[rid] == "running" and len(rig.replicas()) == 2
    view = next(v for v in rig.worker.snapshot().replicas if v.id == rid)
    assert view.restarts == 1 and view.container_id == victim.container_id
    assert "restarted" in rig.events()


async def test_an_update_keeps_old_replicas_until_new_ones_are_ready(rig: Rig) -> None:
    rig.apply(spec_text(rig.port))
    await rig.worker.reconcile_once()
    rig.all_answer()
    await rig.worker.reconcile_once()
    old = set(rig.replicas())
    new_template = rig.apply(spec_text(rig.port, message="v2"))

    await rig.worker.reconcile_once()  # new ones created, not ready: old ones stay
    assert len(rig.replicas()) == 4 and old <= set(rig.replicas())
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None
    assert {u.replica_id for u in endpoint.upstreams()} == old

    rig.all_answer()
    await rig.worker.reconcile_once()  # new ones ready: old ones drained and removed
    assert len(rig.replicas()) == 2 and not old & set(rig.replicas())
    assert {c.spec.labels[LABEL_TEMPLATE] for c in rig.runtime.containers.values()} == {
        new_template
    }
    assert {c.spec.env["MESSAGE"] for c in rig.runtime.containers.values()} == {"v2"}


async def test_a_replica_count_change_does_not_replace_containers(rig: Rig) -> None:
    rig.apply(spec_text(rig.port, count=2))
    await rig.worker.reconcile_once()
    rig.all_answer()
    await rig.worker.reconcile_once()
    before = set(rig.replicas())
    rig.apply(spec_text(rig.port, count=3))
    await rig.worker.reconcile_once()
    assert before < set(rig.replicas()) and len(rig.replicas()) == 3


async def test_a_failed_create_is_an_event_and_is_retried(rig: Rig) -> None:
    rig.apply(spec_text(rig.port, count=1))
    rig.runtime.fail("create", RuntimeFailure("no space left on device"))
    await rig.worker.reconcile_once()
    assert rig.replicas() == {}
    assert "create-failed" in rig.events()
    await rig.worker.reconcile_once()
    assert len(rig.replicas()) == 1


async def test_removed_deployment_loses_its_replicas_and_endpoint(rig: Rig) -> None:
    rig.apply(spec_text(rig.port))
    await rig.worker.reconcile_once()
    rig.store.mark_removed("web")
    assert await rig.worker.reconcile_once() is False  # containers were still there
    assert rig.replicas() == {}
    assert await rig.worker.reconcile_once() is True
    assert rig.endpoints.get("web") is None
    assert rig.store.history("web")  # history kept


async def test_adopts_existing_containers_without_duplicates(rig: Rig, tmp_path: Path) -> None:
    rig.apply(spec_text(rig.port))
    await rig.worker.reconcile_once()
    before = {c.container_id for c in rig.runtime.containers.values()}
    # a second worker (a restarted berthd) sees the same containers and creates nothing
    fresh = DeploymentWorker("web", rig.worker._ctx)
    rig.all_answer()
    await fresh.reconcile_once()
    assert {c.container_id for c in rig.runtime.containers.values()} == before
    assert fresh.snapshot().ready == 2
