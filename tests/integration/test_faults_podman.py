"""Faults against real Podman: a reconcile worker with real containers, a real endpoint and
real probes, with faults injected between the worker and Podman (`FaultyRuntime`) or made
behind berthd's back (`podman rm -f`).

- The container list fails for 10 s under load: no duplicate, no container lost, the
  endpoint never empty, no failed request.
- `podman rm -f` of the only replica on a one-GPU box: the replacement gets the GPU and is
  ready within 5 s (its GPU and ports were freed by the next observation).
- NVML hangs: store and Podman calls go on; the GPU reader holds one thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from config.canonical import spec_id
from config.parse import parse_spec
from config.settings import load_settings
from daemon.gpu.cdi import CdiInventory, scan_cdi
from daemon.gpu.fake import FakeGpuInventory, fake_gpus
from daemon.gpu.inventory import NoGpu
from daemon.gpu.ledger import GpuLedger
from daemon.gpu.model import GpuInventory, GpuSample
from daemon.gpu.reader import GpuReader
from daemon.health.probes import run_probe
from daemon.integrations.mounts import MountPreparer
from daemon.reconcile.context import WorkerContext
from daemon.reconcile.endpoints import EndpointManager
from daemon.reconcile.ports import HostPortAllocator
from daemon.reconcile.worker import DeploymentWorker
from daemon.runtime.cache import CachingRuntime
from daemon.runtime.faulty import FaultyRuntime
from daemon.runtime.interface import LABEL_INSTANCE, ContainerInfo
from daemon.runtime.podman import CALLS_AT_ONCE, PodmanRuntime
from daemon.store.access import StoreAccess
from daemon.store.database import Store
from daemon.store.events import EventLog
from tests.conftest import podman_binary
from tests.e2e.load import Load
from tests.integration.conftest import CDI_DIR
from tests.specs import echo_spec

pytestmark = pytest.mark.podman


@dataclass
class Rig:
    runtime: FaultyRuntime
    podman: PodmanRuntime
    store: Store
    endpoints: EndpointManager
    worker: DeploymentWorker
    labels: dict[str, str]
    port: int

    def apply(self, text: str) -> None:
        spec = parse_spec(text)
        self.store.apply(spec.name, spec_id(spec), text, "{}")
        self.worker.nudge()

    def published(self) -> set[str]:
        endpoint = self.endpoints.get("faults")
        return {u.replica_id for u in endpoint.upstreams()} if endpoint else set()

    async def containers(self) -> list[ContainerInfo]:
        return await self.podman.list(self.labels)

    async def until(
        self, condition: Callable[[], bool], *, within: float, nudge: bool = False
    ) -> float:
        """Rounds until `condition` holds; the seconds it took. `nudge`: ask for each round,
        as a busy box's events would (a steady worker otherwise waits for a change)."""
        started = time.monotonic()
        with trio.fail_after(within):
            while not condition():
                if nudge:
                    self.worker.nudge()
                await self.worker.wait_round()
        return time.monotonic() - started


def one_gpu_box(kind: str) -> CdiInventory:
    """The test's CDI spec declares two GPUs: a box that has only the first."""
    inventory = CdiInventory(scan_cdi([str(CDI_DIR)], kind=kind))
    inventory._gpus = inventory._gpus[:1]
    return inventory


@asynccontextmanager
async def load_on(url: str, **options: Any) -> AsyncIterator[Load]:
    """`Load` (threads) against an endpoint served by this very trio loop: stopping it must
    not block the loop, or the requests in flight would wait for it."""
    load = Load(url, **options)
    load.__enter__()
    try:
        yield load
    finally:
        await trio.to_thread.run_sync(load.__exit__, None, None, None)


@asynccontextmanager
async def worker_rig(
    podman_url: str,
    labels: dict[str, str],
    tmp_path: Path,
    port: int,
    inventory: GpuInventory,
) -> AsyncIterator[Rig]:
    # As berthd has it: rounds list from the watched view, which nudges the worker at each
    # change; faults go between the worker and that view.
    podman = PodmanRuntime(podman_url)
    cache = CachingRuntime(
        podman, scope={LABEL_INSTANCE: labels[LABEL_INSTANCE]}, on_change=lambda _: worker.nudge()
    )
    runtime = FaultyRuntime(cache)
    store = Store(tmp_path / "berth.db")
    access = StoreAccess(store)
    endpoints = EndpointManager(drain_timeout=1.0)
    ctx = WorkerContext(
        instance=labels[LABEL_INSTANCE],
        runtime=runtime,
        store=access,
        events=EventLog(access),
        endpoints=endpoints,
        ports=HostPortAllocator(),
        probe=run_probe,
        mounts=MountPreparer(runtime, load_settings(None, {}, {"state_dir": tmp_path})),
        gpus=GpuLedger(inventory),
    )
    worker = DeploymentWorker("faults", ctx)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoints.run)
            await nursery.start(cache.run)
            nursery.start_soon(worker.run)
            yield Rig(runtime, podman, store, endpoints, worker, labels, port)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
        await podman.aclose()


async def test_a_list_that_fails_for_10s_changes_nothing_under_load(
    podman_url: str,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    port = free_port()
    async with worker_rig(podman_url, test_labels, tmp_path, port, NoGpu("test")) as rig:
        rig.apply(echo_spec("faults", echo_image, port))
        await rig.until(lambda: len(rig.published()) == 2, within=30)
        before = sorted(c.container_id for c in await rig.containers())
        serving = rig.published()
        async with load_on(f"http://127.0.0.1:{port}/", threads=2, max_seconds=30) as load:
            rig.runtime.fail("list", for_seconds=10.0)
            faulted = rig.runtime.calls["list"]
            smallest = len(serving)

            def recovered() -> bool:
                nonlocal smallest
                smallest = min(smallest, len(rig.published()))
                kinds = [e.kind for e in rig.store.events()]
                return (
                    "observe-failed" in kinds
                    and kinds[-1:] != ["observe-failed"]
                    and ("observed" in kinds)
                )

            await rig.until(recovered, within=20, nudge=True)
        assert rig.runtime.calls["list"] > faulted + 3  # rounds went on, and failed
        assert sorted(c.container_id for c in await rig.containers()) == before
        assert smallest == 2 and rig.published() == serving  # never an empty endpoint
        assert load.failures == [] and load.ok > 0, load.failures[:5]
        assert [e.kind for e in rig.store.events()].count("observe-failed") == 1


async def test_podman_rm_of_a_gpu_replica_is_replaced_within_5s(
    podman_url: str,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
    fake_gpu_kind: str,
    tmp_path: Path,
) -> None:
    one_gpu = one_gpu_box(fake_gpu_kind)
    port = free_port()
    async with worker_rig(podman_url, test_labels, tmp_path, port, one_gpu) as rig:
        rig.apply(echo_spec("faults", echo_image, port, count=1, extra="[resources]\ngpus = 1\n"))
        await rig.until(lambda: len(rig.published()) == 1, within=30)
        (victim,) = await rig.containers()
        (old,) = rig.published()
        await trio.run_process(
            [podman_binary(), "rm", "-f", victim.container_id], capture_stdout=True
        )
        took = await rig.until(lambda: rig.published() - {old} != set(), within=15)
        (replacement,) = await rig.containers()
        assert replacement.container_id != victim.container_id
        assert took <= 5.0, f"replacement ready after {took:.1f}s"
        assert "pending" not in [e.kind for e in rig.store.events()]


async def test_a_hanging_nvml_leaves_store_and_podman_calls_alone(
    podman_url: str, test_labels: dict[str, str], tmp_path: Path
) -> None:
    """A wedged driver: every GPU sample hangs. The reader holds one thread for it; the
    store and Podman answer as ever, while the samplers keep asking."""
    release = threading.Event()

    class Wedged(FakeGpuInventory):
        def sample(self) -> list[GpuSample]:
            release.wait(60)
            return []

    reader = GpuReader(Wedged(fake_gpus(1)), timeout=0.2)
    podman = PodmanRuntime(podman_url)
    access = StoreAccess(Store(tmp_path / "berth.db"))
    threads = threading.active_count()
    try:
        with trio.fail_after(20):
            for n in range(25):
                assert await reader.sample() == []  # unknown, never a wait past 0.2 s
                await access.call(Store.add_event, "note", f"event {n}")
                assert await podman.list(test_labels) == []
        assert reader.stuck and threading.active_count() <= threads + 1 + CALLS_AT_ONCE + 1
        assert len(await access.call(Store.events)) == 25
    finally:
        release.set()
        access.store.close()
        await podman.aclose()


async def test_a_one_gpu_box_updates_its_gpu_deployment_in_place(
    podman_url: str,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
    fake_gpu_kind: str,
    tmp_path: Path,
) -> None:
    """Issue 12's full box: `gpus = 1`, `count = 1` on one GPU; an `[env]` change rolls out
    (the surge replica finds no GPU; the update replaces in place) with no rollback."""
    one_gpu = one_gpu_box(fake_gpu_kind)
    port = free_port()
    gpu = '[resources]\ngpus = 1\n[update]\nprogress_deadline = "20s"\n'
    async with worker_rig(podman_url, test_labels, tmp_path, port, one_gpu) as rig:
        rig.apply(echo_spec("faults", echo_image, port, count=1, message="v1", extra=gpu))
        await rig.until(lambda: len(rig.published()) == 1, within=30)
        (old,) = rig.published()
        rig.apply(echo_spec("faults", echo_image, port, count=1, message="v2", extra=gpu))
        await rig.until(lambda: rig.published() - {old} != set(), within=40)
        (new,) = await rig.containers()
        assert new.labels["io.berth.replica"] != old and new.running
        kinds = [e.kind for e in rig.store.events()]
        assert "replacing" in kinds and "rolled-back" not in kinds
        assert [r.status for r in rig.store.history("faults")] == ["superseded", "active"]
