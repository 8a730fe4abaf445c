"""The reconcile worker's executor, round by round, against FakeRuntime and a real SQLite store.

Probes are faked (a set of replica ports that answer), the endpoint is a real proxy listener
on 127.0.0.1; each test drives `reconcile_once` and `probe_once` directly, on trio's
MockClock (time moves only when a test jumps it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from config.canonical import spec_id, template_id
from config.parse import parse_spec
from config.settings import load_settings
from config.spec import Probe
from daemon.gpu.fake import FakeGpuInventory, fake_gpus
from daemon.gpu.ledger import GpuLedger
from daemon.gpu.placement import GpuRequest, Placed
from daemon.health.probes import ProbeResult
from daemon.integrations.mounts import MountPreparer
from daemon.metrics.model import DeploymentLoad
from daemon.reconcile.context import WorkerContext
from daemon.reconcile.endpoints import EndpointManager
from daemon.reconcile.ports import HostPortAllocator
from daemon.reconcile.replicas import ReplicaView
from daemon.reconcile.worker import DeploymentWorker
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.faulty import FaultyRuntime
from daemon.runtime.interface import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_REPLICA,
    LABEL_SPEC_ID,
    LABEL_TEMPLATE,
    ContainerInfo,
    PullProgressFn,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)
from daemon.secrets.store import SecretStore
from daemon.store.access import StoreAccess
from daemon.store.database import Store
from daemon.store.events import EventLog
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

    async def settle(self) -> None:
        """A round (create/observe), the probes due, and a round to act on their verdicts."""
        await self.worker.reconcile_once()
        await self.worker.probe_once()
        await self.worker.reconcile_once()


@dataclass
class FakeParts:
    """What a worker runs on in these tests: FakeRuntime, a real store, real endpoints, a
    prober that passes for the host ports in `answering`."""

    runtime: FakeRuntime
    store: Store
    access: StoreAccess
    endpoints: EndpointManager
    answering: set[int]
    ctx: WorkerContext


def fake_parts(tmp_path: Path, *, gpus: int, **context: Any) -> FakeParts:
    """`context`: more WorkerContext fields (secrets, load, ...)."""
    runtime = FakeRuntime(images={IMAGE})
    store = Store(tmp_path / "berth.db")
    access = StoreAccess(store)
    endpoints = EndpointManager(drain_timeout=1.0)
    answering: set[int] = set()

    async def probe(p: Probe, host: str, port: int) -> ProbeResult:
        return ProbeResult(port in answering, "fake")

    ctx = WorkerContext(
        instance="inst",
        runtime=runtime,
        store=access,
        events=EventLog(access),
        endpoints=endpoints,
        ports=HostPortAllocator(),
        probe=probe,
        mounts=MountPreparer(runtime, load_settings(None, {}, {"state_dir": tmp_path})),
        gpus=GpuLedger(FakeGpuInventory(fake_gpus(gpus))),
        **context,
    )
    return FakeParts(runtime, store, access, endpoints, answering, ctx)


@asynccontextmanager
async def worker_rig(
    tmp_path: Path, *, gpus: int = 2, secrets: SecretStore | None = None
) -> AsyncIterator[Rig]:
    """A worker for deployment "web" on FakeRuntime, a real store, a real endpoint."""
    p = fake_parts(tmp_path, gpus=gpus, secrets=secrets)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.endpoints.run)
        worker = DeploymentWorker("web", p.ctx)
        yield Rig(p.runtime, p.store, p.access, p.endpoints, worker, p.answering, free_port())
        nursery.cancel_scope.cancel()
    p.store.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with worker_rig(tmp_path) as r:
        yield r


async def test_creates_the_replicas_with_labels_and_publishes_only_ready_ones(
    rig: Rig, mock_clock: MockClock
) -> None:
    template = rig.apply(spec_text(rig.port))
    await rig.settle()
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
    await rig.settle()
    assert rig.worker.snapshot().status == "running"
    assert {u.replica_id for u in endpoint.upstreams()} == set(rig.replicas())
    # up to date: another round changes nothing
    calls = len(rig.runtime.calls)
    await rig.worker.reconcile_once()
    assert [c for c in rig.runtime.calls[calls:] if c[0] in ("create", "start", "stop")] == []


def view(rig: Rig, rid: str) -> ReplicaView:
    return next(v for v in rig.worker.snapshot().replicas if v.id == rid)


def published(rig: Rig) -> set[str]:
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None
    return {u.replica_id for u in endpoint.upstreams()}


async def running_and_ready(rig: Rig, text: str) -> None:
    rig.apply(text)
    await rig.settle()
    rig.all_answer()
    await rig.settle()
    assert rig.worker.snapshot().status == "running"


async def test_a_dead_container_waits_its_back_off_then_restarts_in_place(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    victim = next(iter(rig.runtime.containers.values()))
    rid = victim.spec.labels[LABEL_REPLICA]
    rig.runtime.die(victim.container_id, exit_code=3)
    await rig.worker.reconcile_once()
    assert view(rig, rid).state == "crashloop"
    assert view(rig, rid).last_exit_reason == "exited with code 3"
    assert rid not in published(rig)
    mock_clock.jump(2.0)  # the first retry comes within 1-2 s
    await rig.settle()
    assert rig.replicas()[rid] == "running" and len(rig.replicas()) == 2
    await rig.settle()
    assert view(rig, rid).restarts == 1 and view(rig, rid).container_id == victim.container_id
    assert rid in published(rig)  # ready again after a fresh probe
    assert {"died", "restarted"} <= set(rig.events())


async def test_a_crash_loop_waits_longer_each_time(rig: Rig, mock_clock: MockClock) -> None:
    await running_and_ready(rig, spec_text(rig.port, count=1))
    (victim,) = rig.runtime.containers.values()
    rid = victim.spec.labels[LABEL_REPLICA]
    waits = []
    for _ in range(5):
        rig.runtime.die(victim.container_id, exit_code=1)
        await rig.worker.reconcile_once()
        restart_in = view(rig, rid).restart_in
        assert restart_in is not None
        waits.append(restart_in)
        mock_clock.jump(restart_in - 0.05)
        await rig.worker.reconcile_once()
        assert rig.replicas()[rid] == "exited"  # not yet
        mock_clock.jump(0.1)
        await rig.worker.reconcile_once()
        assert rig.replicas()[rid] == "running"
    for expected, got in zip([1.5, 3, 6, 12, 24], waits, strict=True):
        assert abs(got - expected) <= expected * 0.1 + 0.1
    assert view(rig, rid).restarts == 5


async def test_failing_readiness_takes_a_replica_out_and_passing_brings_it_back(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    sick = next(iter(rig.runtime.containers.values()))
    rid = sick.spec.labels[LABEL_REPLICA]
    rig.answering.discard(sick.spec.host_port)
    mock_clock.jump(1.0)  # the default readiness check (TCP) runs every second
    await rig.settle()
    assert rid not in published(rig) and view(rig, rid).state == "unhealthy"
    assert rig.replicas()[rid] == "running"  # readiness alone never restarts
    rig.answering.add(sick.spec.host_port)
    mock_clock.jump(1.0)
    await rig.settle()
    assert rid in published(rig) and view(rig, rid).state == "ready"
    assert {"unready", "ready"} <= set(rig.events())


async def test_failing_liveness_drains_stops_and_restarts_the_replica(
    rig: Rig, mock_clock: MockClock
) -> None:
    text = spec_text(rig.port, count=1) + (
        '[health.liveness]\npath = "/alive"\nperiod = "1s"\nfailure_threshold = 2\n'
    )
    await running_and_ready(rig, text)
    (sick,) = rig.runtime.containers.values()
    rid = sick.spec.labels[LABEL_REPLICA]
    rig.answering.discard(sick.spec.host_port)
    for _ in range(2):
        mock_clock.jump(1.0)
        await rig.worker.probe_once()
    await rig.worker.reconcile_once()  # stop (drained first: it left the rotation)
    assert rid not in published(rig)
    assert rig.replicas()[rid] == "exited"
    assert "liveness probe failed 2 times" in (view(rig, rid).last_exit_reason or "")
    rig.answering.add(sick.spec.host_port)
    mock_clock.jump(2.0)
    await rig.settle()
    await rig.settle()
    assert rig.replicas()[rid] == "running" and view(rig, rid).restarts == 1
    assert rid in published(rig)


async def test_restart_counts_survive_a_new_worker(rig: Rig, mock_clock: MockClock) -> None:
    await running_and_ready(rig, spec_text(rig.port, count=1))
    (victim,) = rig.runtime.containers.values()
    rid = victim.spec.labels[LABEL_REPLICA]
    rig.runtime.die(victim.container_id, exit_code=2)
    await rig.worker.reconcile_once()
    mock_clock.jump(2.0)
    await rig.settle()
    fresh = DeploymentWorker("web", rig.worker._ctx)  # a restarted berthd
    await fresh.reconcile_once()
    (seen,) = fresh.snapshot().replicas
    assert (seen.id, seen.restarts, seen.last_exit_reason) == (rid, 1, "exited with code 2")


async def test_an_update_rolls_one_by_one_never_below_the_desired_ready_count(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    old = set(rig.replicas())
    new_template = rig.apply(spec_text(rig.port, message="v2"))

    await rig.settle()  # one new replica (max_surge 1), not ready: the old ones stay
    assert len(rig.replicas()) == 3 and old <= set(rig.replicas())
    assert published(rig) == old
    for _ in range(8):
        rig.all_answer()
        mock_clock.jump(1.0)
        await rig.settle()
        assert len(published(rig)) >= 2 and len(rig.replicas()) <= 3
    assert len(rig.replicas()) == 2 and not old & set(rig.replicas())
    assert {c.spec.labels[LABEL_TEMPLATE] for c in rig.runtime.containers.values()} == {
        new_template
    }
    assert {c.spec.env["MESSAGE"] for c in rig.runtime.containers.values()} == {"v2"}
    assert rig.worker.snapshot().status == "running"
    assert "rollout-complete" in rig.events()


async def test_a_stalled_rollout_is_rolled_back_after_its_progress_deadline(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    old = set(rig.replicas())
    rig.apply(spec_text(rig.port, message="v2") + '[update]\nprogress_deadline = "30s"\n')
    for _ in range(5):  # the new replica never answers its probe
        mock_clock.jump(7.0)
        await rig.settle()
        assert old <= set(rig.replicas()) and published(rig) == old
    mock_clock.jump(7.0)
    await rig.settle()  # 35 s without progress: revision 2 failed, revision 1 active again
    history = {r.revision: (r.active, r.status) for r in rig.store.history("web")}
    assert history == {1: (True, "active"), 2: (False, "failed")}
    (failed,) = [r for r in rig.store.history("web") if r.revision == 2]
    assert "no progress for 30s: 0/2 new replicas ready" in (failed.reason or "")
    await rig.settle()
    assert set(rig.replicas()) == old  # the new one is gone; the old ones served throughout
    assert published(rig) == old
    assert "rolled-back" in rig.events()


async def test_a_replica_count_change_does_not_replace_containers(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port, count=2))
    before = set(rig.replicas())
    rig.apply(spec_text(rig.port, count=3))
    await rig.worker.reconcile_once()
    assert before < set(rig.replicas()) and len(rig.replicas()) == 3


async def test_a_failed_create_is_an_event_and_is_retried(rig: Rig, mock_clock: MockClock) -> None:
    rig.apply(spec_text(rig.port, count=1))
    rig.runtime.fail("create", RuntimeFailure("no space left on device"))
    await rig.worker.reconcile_once()
    assert rig.replicas() == {}
    assert "create-failed" in rig.events()
    await rig.worker.reconcile_once()
    assert rig.replicas() == {}  # not before its back-off
    mock_clock.jump(2.0)
    await rig.worker.reconcile_once()
    assert len(rig.replicas()) == 1


async def test_removed_deployment_loses_its_replicas_and_endpoint(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text(rig.port))
    await rig.worker.reconcile_once()
    rig.store.mark_removed("web")
    assert await rig.worker.reconcile_once() is False  # containers were still there
    assert rig.replicas() == {}
    assert await rig.worker.reconcile_once() is True
    assert rig.endpoints.get("web") is None
    assert rig.store.history("web")  # history kept


async def test_adopts_existing_containers_without_duplicates_or_restarts(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    before = {c.container_id for c in rig.runtime.containers.values()}
    calls = len(rig.runtime.calls)
    fresh = DeploymentWorker("web", rig.worker._ctx)  # a restarted berthd
    await fresh.reconcile_once()
    # Ready when the old worker went (its verdicts are in the store): in rotation at once
    # (tests/unit/test_adoption.py has the rest).
    assert fresh.snapshot().ready == 2
    await fresh.probe_once()
    await fresh.reconcile_once()
    assert {c.container_id for c in rig.runtime.containers.values()} == before
    assert fresh.snapshot().ready == 2
    assert not [c for c in rig.runtime.calls[calls:] if c[0] in ("stop", "start", "create")]


async def test_a_replica_the_proxy_suspects_is_probed_at_once(
    rig: Rig, mock_clock: MockClock
) -> None:
    text = spec_text(rig.port, count=2) + (
        '[health.readiness]\npath = "/health"\nperiod = "30s"\nfailure_threshold = 1\n'
    )
    await running_and_ready(rig, text)
    sick = next(iter(rig.runtime.containers.values()))
    rid = sick.spec.labels[LABEL_REPLICA]
    rig.answering.discard(sick.spec.host_port)
    await rig.worker.probe_once()
    assert rid in published(rig)  # its next probe is 30 s away
    rig.worker.suspect(rid)  # what the endpoint calls when a connect to it fails
    await rig.settle()
    assert rid not in published(rig)


async def test_gpu_replicas_get_distinct_devices_and_the_rest_wait_pending(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text(rig.port, count=3) + "[resources]\ngpus = 1\n")
    await rig.worker.reconcile_once()
    devices = [c.spec.devices for c in rig.runtime.containers.values()]
    assert sorted(devices) == [("nvidia.com/gpu=0",), ("nvidia.com/gpu=1",)]
    await rig.worker.reconcile_once()
    snapshot = rig.worker.snapshot()
    assert snapshot.pending == 1 and "needs 1 GPU" in (snapshot.error or "")
    assert "pending" in rig.events()
    assert {v.gpus for v in snapshot.replicas} == {("nvidia.com/gpu=0",), ("nvidia.com/gpu=1",)}
    # a restarted berthd knows who holds which GPU from the labels: still no third placement
    fresh = DeploymentWorker("web", rig.worker._ctx)
    mock_clock.jump(10)
    await fresh.reconcile_once()
    assert len(rig.runtime.containers) == 2


async def test_the_autoscaler_moves_the_count_and_says_why(rig: Rig, mock_clock: MockClock) -> None:
    load = {"duration": 0.05}

    def source(name: str, window: float) -> DeploymentLoad:
        return DeploymentLoad(
            window,
            samples=3,
            replicas=1,
            request_duration_mean=load["duration"],
            requests_per_s=20.0,
        )

    rig.worker._ctx.load = source
    text = spec_text(rig.port).replace("count = 2", "min = 1\nmax = 3") + (
        '[[autoscale.metrics]]\nmetric = "request_duration"\ntarget = "100ms"\n'
        '[autoscale]\nscale_down_delay = "60s"\n'
    )
    rig.apply(text)
    await rig.settle()
    assert len(rig.replicas()) == 1
    load["duration"] = 0.3  # 3x the target: 1 -> 3
    await rig.worker.reconcile_once()
    assert len(rig.replicas()) == 3
    (event,) = [e for e in rig.store.events() if e.kind == "scaled"]
    assert event.message == "request_duration avg 300ms > target 100ms: 1 -> 3"
    load["duration"] = 0.01  # idle-ish: down only after scale_down_delay
    mock_clock.jump(30)
    await rig.worker.reconcile_once()
    assert len(rig.replicas()) == 3
    mock_clock.jump(31)
    await rig.settle()
    assert len(rig.replicas()) == 1
    assert rig.worker.scale_ups == 1 and rig.worker.scale_downs == 1


async def test_a_scale_up_that_cannot_be_placed_is_no_failed_rollout(
    rig: Rig, mock_clock: MockClock
) -> None:
    base = spec_text(rig.port, count=2) + '[update]\nprogress_deadline = "30s"\n'
    await running_and_ready(rig, base + "[resources]\ngpus = 1\n")
    rig.apply(base.replace("count = 2", "count = 3") + "[resources]\ngpus = 1\n")
    for _ in range(8):  # the third replica never gets a GPU (two on this host)
        mock_clock.jump(10.0)
        await rig.settle()
    assert rig.worker.snapshot().pending == 1
    assert [r.status for r in rig.store.history("web")] == ["superseded", "active"]
    assert "rolled-back" not in rig.events()


async def test_an_image_that_cannot_be_pulled_fails_the_deployment_with_the_reason(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text(rig.port).replace(IMAGE, "localhost/missing:1"))
    await rig.worker.reconcile_once()
    await rig.worker.reconcile_once()
    snapshot = rig.worker.snapshot()
    assert snapshot.status == "failed"
    assert "cannot pull localhost/missing:1" in (snapshot.error or "")
    assert "create-failed" in rig.events()
    rig.runtime.pullable.add("localhost/missing:1")  # the registry has it now
    mock_clock.jump(5.0)
    await rig.settle()
    assert rig.worker.snapshot().status != "failed" and len(rig.replicas()) >= 1


async def test_a_stalled_pull_is_retried_and_fails_nothing(rig: Rig, mock_clock: MockClock) -> None:
    """A pull that stalled (the runtime's idle timeout) is temporary: the deployment goes on
    progressing with the reason shown, and the next try (its stored layers kept) runs."""
    image = "127.0.0.1:5000/team/big:1"
    rig.runtime.pullable.add(image)
    stalled = TemporaryRuntimeError(f"pull {image}: no progress for 300s")
    rig.runtime.fail("pull", stalled)
    rig.apply(spec_text(rig.port).replace(IMAGE, image))
    await rig.worker.reconcile_once()
    await rig.worker.reconcile_once()
    snapshot = rig.worker.snapshot()
    assert snapshot.status == "progressing" and "no progress for 300s" in (snapshot.error or "")
    mock_clock.jump(5.0)
    await rig.settle()
    assert len(rig.replicas()) == 2
    assert [c[0] for c in rig.runtime.calls].count("pull") == 2
    assert rig.events().count("pulled") == 1


# -- faults: an observation that fails is unknown, holdings are derived from containers ------


async def test_a_failed_list_changes_nothing_and_is_said_once(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    before = dict(rig.replicas())
    serving = published(rig)
    assert len(serving) == 2
    rig.runtime.fail("list", RuntimeFailure("Podman at unix:///x: connection refused"), times=5)
    for _ in range(5):
        mock_clock.jump(2.0)
        await rig.worker.reconcile_once()
    assert rig.replicas() == before  # no duplicate, nothing removed
    assert published(rig) == serving  # the endpoint keeps its ready set
    assert rig.events().count("observe-failed") == 1
    assert "cannot list containers" in (rig.worker.snapshot().error or "")
    await rig.settle()
    assert "observed" in rig.events()
    assert rig.replicas() == before and published(rig) == serving
    assert rig.worker.snapshot().error is None


async def test_a_removed_deployment_ends_only_once_a_list_shows_no_container(
    rig: Rig, mock_clock: MockClock
) -> None:
    await running_and_ready(rig, spec_text(rig.port))
    rig.store.mark_removed("web")
    rig.runtime.fail("list", RuntimeFailure("timed out"), times=3)
    for _ in range(3):
        assert await rig.worker.reconcile_once() is False
    assert len(rig.replicas()) == 2  # not orphaned: the worker is still on it
    for _ in range(5):
        if await rig.worker.reconcile_once():
            break
        mock_clock.jump(1.0)
    assert rig.replicas() == {}


async def test_a_gpu_replica_removed_behind_berths_back_frees_its_gpu(
    rig: Rig, mock_clock: MockClock
) -> None:
    """One GPU in use of two, the other held by another deployment: `podman rm -f` of the
    replica must not leave its replacement pending for a GPU nobody holds."""
    ctx = rig.worker._ctx
    other = ctx.gpus.place("other/r1", GpuRequest(gpus=1))
    assert isinstance(other, Placed) and other.devices == ("nvidia.com/gpu=0",)
    await running_and_ready(rig, spec_text(rig.port, count=1) + "[resources]\ngpus = 1\n")
    (victim,) = rig.runtime.containers.values()
    assert victim.spec.devices == ("nvidia.com/gpu=1",)
    del rig.runtime.containers[victim.container_id]  # podman rm -f
    await rig.worker.reconcile_once()
    (replacement,) = rig.runtime.containers.values()
    assert replacement.spec.devices == ("nvidia.com/gpu=1",)
    await rig.worker.reconcile_once()
    assert rig.worker.snapshot().pending == 0 and "pending" not in rig.events()
    assert victim.spec.host_port not in ctx.ports.held()


async def test_a_dead_replica_frees_its_gpu_and_is_replaced_if_it_was_taken(
    rig: Rig, mock_clock: MockClock
) -> None:
    ctx = rig.worker._ctx
    await running_and_ready(rig, spec_text(rig.port, count=2) + "[resources]\ngpus = 1\n")
    victim = next(iter(rig.runtime.containers.values()))
    (device,) = victim.spec.devices
    rig.runtime.die(victim.container_id, exit_code=1)
    await rig.worker.reconcile_once()  # observed dead: it holds no GPU now
    taken = ctx.gpus.place("other/r1", GpuRequest(gpus=1))
    assert isinstance(taken, Placed) and taken.devices == (device,)
    mock_clock.jump(2.0)  # its back-off is over: it would start again with a taken GPU
    await rig.worker.reconcile_once()
    assert victim.container_id not in rig.runtime.containers
    assert "replaced" in rig.events()
    await rig.worker.reconcile_once()  # the plan makes a new replica, placed afresh
    held = [d for a in ctx.gpus.holdings().values() for d in a.devices]
    assert len(held) == len(set(held)) == 2  # never a GPU twice; the new one is pending
    assert rig.worker.snapshot().pending == 1


async def test_an_apply_during_the_round_that_ends_a_removed_deployment_is_not_lost(
    rig: Rig, mock_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`berth rm` then, at once, `berth apply`: the worker's round that finds the deployment
    gone and no container left must not end the worker when the apply nudged it meanwhile."""
    # The clock jumps only once every task has waited 50 ms of real time, so that the store's
    # thread calls are not overtaken by the rounds' timers.
    mock_clock.autojump_threshold = 0.05
    rig.apply(spec_text(rig.port, count=1))
    await rig.settle()
    rig.store.mark_removed("web")
    for _ in range(10):
        if await rig.worker.reconcile_once():
            break
        await trio.sleep(1.0)
    assert rig.replicas() == {}
    listing, release = trio.Event(), trio.Event()
    real_list = rig.runtime.list

    async def slow_list(labels: dict[str, str]) -> list[ContainerInfo]:
        if not release.is_set():
            listing.set()
            await release.wait()
        return await real_list(labels)

    monkeypatch.setattr(rig.runtime, "list", slow_list)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.worker.run)
        await listing.wait()  # the round read "removed" and is listing
        rig.apply(spec_text(rig.port, count=1, message="again"))
        rig.worker.nudge()  # what berthd's ensure_worker does after an apply
        release.set()
        with trio.fail_after(60):
            for _ in range(20):
                if rig.replicas():
                    break
                await rig.worker.wait_round()
        assert not rig.worker.finished.is_set()
        nursery.cancel_scope.cancel()


async def test_a_roll_back_that_meets_a_newer_apply_changes_nothing(
    rig: Rig, mock_clock: MockClock
) -> None:
    base = spec_text(rig.port, count=1) + '[update]\nprogress_deadline = "30s"\n'
    await running_and_ready(rig, base)
    rig.apply(base.replace('MESSAGE = "v1"', 'MESSAGE = "v2"'))  # revision 2 never gets ready
    for _ in range(3):
        mock_clock.jump(10.0)
        await rig.worker.reconcile_once()
    rig.apply(base.replace('MESSAGE = "v1"', 'MESSAGE = "v3"'))  # the user, meanwhile
    mock_clock.jump(30.0)
    await rig.worker._roll_back(rig.worker._active, "stalled")  # type: ignore[arg-type]
    statuses = [(r.revision, r.active, r.status) for r in rig.store.history("web")]
    assert statuses[-1] == (3, True, "active") and "rolled-back" not in rig.events()


async def test_a_long_pull_holds_no_round_and_an_unready_replica_leaves_at_once(
    rig: Rig, mock_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Short rounds: a 10 s pull of the new image runs beside the rounds; meanwhile a ready
    replica that fails its readiness probe is out of rotation within one probe period."""
    mock_clock.autojump_threshold = 0.05  # store calls run in a thread: let them finish
    probes = '[health.readiness]\npath = "/"\nperiod = "1s"\nfailure_threshold = 1\n'
    text = spec_text(rig.port) + probes
    await running_and_ready(rig, text)
    new_image = "localhost/berth-echo:2"
    rig.runtime.pullable.add(new_image)
    real_pull = rig.runtime.pull
    pulling, pulled = trio.Event(), trio.Event()

    async def slow_pull(
        image: str, *, auth: RegistryAuth | None = None, progress: PullProgressFn | None = None
    ) -> None:
        pulling.set()
        await trio.sleep(10.0)
        await real_pull(image, auth=auth, progress=progress)
        pulled.set()

    monkeypatch.setattr(rig.runtime, "pull", slow_pull)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.worker.run)
        rig.apply(text.replace(IMAGE, new_image))
        rig.worker.nudge()
        await pulling.wait()
        victim = sorted(published(rig))[0]
        port = next(
            c.spec.host_port
            for c in rig.runtime.containers.values()
            if c.spec.labels[LABEL_REPLICA] == victim
        )
        rig.answering.discard(port)
        turned = trio.current_time()
        with trio.fail_after(5.0):
            for _ in range(100):
                if victim not in published(rig):
                    break
                await trio.sleep(0.1)
        assert trio.current_time() - turned <= 1.0 + 0.2  # one probe period
        assert not pulled.is_set()  # all of this while the pull runs
        rounds_during_pull = 0
        while not pulled.is_set():
            await rig.worker.wait_round()
            rounds_during_pull += 1
        assert rounds_during_pull >= 3  # the rounds went on beside it
        nursery.cancel_scope.cancel()


async def test_rounds_during_a_create_or_a_removal_count_no_death(
    rig: Rig, mock_clock: MockClock
) -> None:
    """A round that observes a container its create has not started yet, or one its removal
    has stopped, must not take it for dead (no 'never started', no restart, no back-off)."""
    mock_clock.autojump_threshold = 0.2  # real store threads: a loaded box needs the margin
    faulty = FaultyRuntime(rig.runtime)
    rig.worker._ctx.runtime = faulty
    faulty.delay("start", 5.0, times=1)  # the first create's start is slow
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.worker.run)
        rig.apply(spec_text(rig.port, count=1))
        rig.worker.nudge()
        with trio.fail_after(60):
            while not rig.runtime.running():
                await rig.worker.wait_round()
        rig.all_answer()
        faulty.delay("remove", 5.0, times=1)  # and the removal is slow, its stop is not
        rig.store.mark_removed("web")
        rig.worker.nudge()
        with trio.fail_after(60):
            while rig.runtime.containers:
                await rig.worker.wait_round()
        nursery.cancel_scope.cancel()
    kinds = rig.events()
    assert "died" not in kinds and "restarted" not in kinds, kinds
    assert [c[0] for c in rig.runtime.calls].count("start") == 1


async def test_a_scaled_to_zero_endpoint_holds_requests_for_the_cold_start_timeout(
    rig: Rig, mock_clock: MockClock
) -> None:
    text = spec_text(rig.port).replace("count = 2", "min = 0\nmax = 2") + (
        '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 1\n'
    )
    rig.apply(text.replace('bind = "127.0.0.1"', 'bind = "127.0.0.1"\ncold_start_timeout = "20m"'))
    await rig.worker.reconcile_once()
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None and endpoint._balancer.hold_max_wait == 1200.0


async def test_a_gpu_update_on_a_full_box_replaces_in_place_and_is_not_rolled_back(
    rig: Rig, mock_clock: MockClock
) -> None:
    """Both GPUs of the box in use: the surge replica of an update can never be placed, so
    the update replaces in place, one replica at a time; past the progress deadline too."""
    base = spec_text(rig.port) + '[resources]\ngpus = 1\n[update]\nprogress_deadline = "30s"\n'
    await running_and_ready(rig, base)
    new_template = rig.apply(base.replace('MESSAGE = "v1"', 'MESSAGE = "v2"'))
    for _ in range(30):
        mock_clock.jump(5.0)
        await rig.settle()
        rig.all_answer()
        templates = {c.spec.labels[LABEL_TEMPLATE] for c in rig.runtime.containers.values()}
        if templates == {new_template} and rig.worker.snapshot().status == "running":
            break
    assert templates == {new_template} and len(rig.runtime.containers) == 2
    devices = sorted(c.spec.devices for c in rig.runtime.containers.values())
    assert devices == [("nvidia.com/gpu=0",), ("nvidia.com/gpu=1",)]
    kinds = rig.events()
    assert "replacing" in kinds and "rolled-back" not in kinds
    assert [r.status for r in rig.store.history("web")] == ["superseded", "active"]


async def test_an_explicit_surge_on_a_full_box_waits_and_is_not_rolled_back(
    rig: Rig, mock_clock: MockClock
) -> None:
    base = spec_text(rig.port) + (
        '[resources]\ngpus = 1\n[update]\nprogress_deadline = "30s"\nstrategy = "surge"\n'
    )
    await running_and_ready(rig, base)
    rig.apply(base.replace('MESSAGE = "v1"', 'MESSAGE = "v2"'))
    for _ in range(12):  # 60 s: twice the deadline
        mock_clock.jump(5.0)
        await rig.settle()
    kinds = rig.events()
    assert "pending" in kinds and "rolled-back" not in kinds and "replacing" not in kinds
    assert len(rig.runtime.containers) == 2  # the old replicas serve on
    assert [r.status for r in rig.store.history("web")] == ["superseded", "active"]


async def test_held_requests_get_503_at_once_when_every_replica_crash_loops(
    rig: Rig, mock_clock: MockClock
) -> None:
    text = spec_text(rig.port).replace("count = 2", "min = 0\nmax = 1") + (
        '[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 1\n'
    )
    rig.apply(text)
    rig.store.set_pinned_replicas("web", 1)  # one replica, as a cold start would make
    await rig.settle()
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None and endpoint._balancer.hold_max_wait == 600.0
    (container,) = rig.runtime.containers.values()
    rig.runtime.die(container.container_id, exit_code=1)
    await rig.worker.reconcile_once()  # crash-looping now: nothing is on its way
    assert endpoint._balancer.hold_max_wait is None
    mock_clock.jump(2.0)
    await rig.settle()  # started again: holding is worth it again
    assert endpoint._balancer.hold_max_wait == 600.0


async def test_pull_always_pulls_once_per_revision_and_never_never_pulls(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.runtime.pullable.add(IMAGE)
    always = spec_text(rig.port).replace("port = 8080\n", 'port = 8080\npull = "always"\n', 1)
    await rig.settle()
    rig.apply(always)
    await rig.settle()
    pulls = lambda: [c for c in rig.runtime.calls if c[0] == "pull"]  # noqa: E731
    assert len(rig.replicas()) == 2 and len(pulls()) == 1  # present, pulled once anyway
    rig.apply(always.replace('MESSAGE = "v1"', 'MESSAGE = "v2"'))  # a new revision
    for _ in range(6):
        rig.all_answer()
        mock_clock.jump(5.0)
        await rig.settle()
    assert len(pulls()) == 2  # re-resolved once for it, not once per replica

    never = spec_text(rig.port).replace("port = 8080\n", 'port = 8080\npull = "never"\n', 1)
    rig.apply(never.replace(IMAGE, "localhost/berth-echo:not-here"))
    mock_clock.jump(5.0)
    await rig.settle()
    assert len(pulls()) == 2
    (refusal,) = [e for e in rig.store.events() if e.kind == "create-failed"]
    assert 'is not on this host and pull = "never"' in refusal.message


async def test_a_replica_that_begins_a_run_is_probed_at_once_by_a_sleeping_prober(
    rig: Rig, mock_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The prober sleeps until told (no look every second at idle): the round that sees a
    # replica's run begin wakes it, so the first probe is not a backstop period late.
    start = rig.runtime.start

    async def start_and_answer(container_id: str) -> None:
        await start(container_id)
        rig.all_answer()

    monkeypatch.setattr(rig.runtime, "start", start_and_answer)
    mock_clock.autojump_threshold = 0.05  # the store answers from a real thread
    rig.apply(spec_text(rig.port, count=1))
    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.worker.run)
        with trio.fail_after(120):
            while not ((e := rig.endpoints.get("web")) and e.upstreams()):  # noqa: ASYNC110
                await trio.sleep(0.05)  # MockClock time: the polls cost nothing real
        assert trio.current_time() - began < 1.0
        nursery.cancel_scope.cancel()


async def test_a_new_deployment_holds_requests_while_its_first_replicas_start(
    rig: Rig, mock_clock: MockClock
) -> None:
    # Not only scale from zero: a fixed count's first load (a model loading for minutes) is
    # a replica on its way too, so a request waits for it rather than getting 503.
    rig.apply(spec_text(rig.port))
    await rig.settle()  # created and started, not ready
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None and endpoint.upstreams() == ()
    assert endpoint._balancer.hold_max_wait == 600.0
    rig.all_answer()
    await rig.settle()
    assert len(endpoint.upstreams()) == 2


async def test_no_hold_when_no_replica_can_be_made(rig: Rig, mock_clock: MockClock) -> None:
    rig.apply(spec_text(rig.port).replace(IMAGE, "localhost/missing:1"))
    await rig.worker.reconcile_once()  # the pull is refused: nothing is on its way
    await rig.worker.reconcile_once()
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None and endpoint._balancer.hold_max_wait is None


async def test_a_pinned_zero_holds_nothing(rig: Rig, mock_clock: MockClock) -> None:
    rig.apply(spec_text(rig.port))
    rig.store.set_pinned_replicas("web", 0)
    await rig.settle()
    endpoint = rig.endpoints.get("web")
    assert endpoint is not None and endpoint._balancer.hold_max_wait is None
