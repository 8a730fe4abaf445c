"""The metrics sampler and its windows, on FakeRuntime, a fake proxy and MockClock (STYLE.md #7).

Time starts at 0 on the mock clock and the wall clock is START + that, so rounds land at
0, 5, 10, ... seconds and a minute holds twelve of them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from trio.testing import MockClock

from daemon.gpu.fake import FakeGpuInventory, fake_gpus
from daemon.gpu.model import GpuSample
from daemon.gpu.reader import GpuReader
from daemon.metrics.host import HostReading, PsutilHost
from daemon.metrics.model import ReplicaTarget, gpu_index, held_gpus
from daemon.metrics.rollups import StoreRollups
from daemon.metrics.sampler import MetricsSampler
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import ContainerSpec, ContainerStats, TemporaryRuntimeError
from daemon.store.access import StoreAccess
from daemon.store.database import MetricRollup, Store, rfc3339
from proxy.stats import (
    EndpointStatistics,
    LatencySummary,
    ReplicaStatistics,
    StatusCounts,
)

T = TypeVar("T")
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
GiB = 1024**3


async def gpu_samples(gpus: list[GpuSample]) -> list[GpuSample]:
    return list(gpus)


async def inline(fn: Callable[[], T]) -> T:
    """Run "blocking" sources on the trio thread: no thread for the mock clock to jump over."""
    return fn()


def wall() -> datetime:
    return START + timedelta(seconds=trio.current_time())


@dataclass
class FakeReplica:
    in_flight: int = 0
    total: int = 0
    p50: float | None = None
    p95: float | None = None
    mean: float | None = None


@dataclass
class FakeProxy:
    """What `Endpoint.statistics()` answers, per deployment, steered by the test."""

    endpoints: dict[str, dict[str, FakeReplica]] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)  # requests in each endpoint's queue

    def __call__(self, name: str) -> EndpointStatistics | None:
        replicas = self.endpoints.get(name)
        if replicas is None:
            return None
        rs = tuple(
            ReplicaStatistics(
                replica_id=rid,
                in_flight=r.in_flight,
                requests_total=r.total,
                status=StatusCounts(s2xx=r.total),
                latency=LatencySummary(r.total, r.p50, r.p95, r.p95, r.mean),
            )
            for rid, r in sorted(replicas.items())
        )
        p50s = [r.p50 for r in replicas.values() if r.p50 is not None]
        p95s = [r.p95 for r in replicas.values() if r.p95 is not None]
        total = sum(r.total for r in replicas.values())
        timed = [(r.mean, r.total) for r in replicas.values() if r.mean is not None and r.total]
        mean = sum(m * n for m, n in timed) / sum(n for _, n in timed) if timed else None
        return EndpointStatistics(
            name=name,
            in_flight=sum(r.in_flight for r in replicas.values()),
            requests_total=total,
            status=StatusCounts(s2xx=total),
            latency=LatencySummary(
                total, max(p50s) if p50s else None, max(p95s) if p95s else None, None, mean
            ),
            window=60.0,
            replicas=rs,
            queued=self.queued.get(name, 0),
        )


@dataclass
class FakeRollups:
    written: list[list[MetricRollup]] = field(default_factory=list)
    pruned: list[datetime] = field(default_factory=list)
    stuck: bool = False

    async def write(self, rows: list[MetricRollup]) -> None:
        if self.stuck:
            await trio.sleep_forever()
        self.written.append(rows)

    async def read(
        self, deployment: str, since: datetime, until: datetime | None = None
    ) -> list[MetricRollup]:
        return [
            r
            for rows in self.written
            for r in rows
            if r.deployment == deployment and r.minute >= rfc3339(since)
        ]

    async def prune(self, before: datetime) -> None:
        self.pruned.append(before)


class SlowRuntime(FakeRuntime):
    """stats_many() never answers when asked about a container in `slow`."""

    def __init__(self) -> None:
        super().__init__(images={"img"})
        self.slow: set[str] = set()

    async def stats_many(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        if self.slow & set(container_ids):
            await trio.sleep_forever()
        return await super().stats_many(container_ids)


@dataclass
class Rig:
    runtime: SlowRuntime
    proxy: FakeProxy
    targets: list[ReplicaTarget]
    gpus: list[GpuSample]
    host: list[HostReading]
    rollups: FakeRollups
    sampler: MetricsSampler

    async def replica(
        self,
        deployment: str,
        replica_id: str,
        *,
        cpu: float = 0.0,
        memory: int = 0,
        limit: int | None = None,
        cpus: float | None = None,
        gpus: tuple[str | int, ...] = (),
        fast: bool = False,
    ) -> str:
        cid = await self.runtime.create(
            ContainerSpec(
                name=f"{deployment}-{replica_id}",
                image="img",
                labels={},
                app_port=8080,
                host_port=10000 + len(self.targets),
            )
        )
        await self.runtime.start(cid)
        self.runtime.stats_by_id[cid] = ContainerStats(cpu, memory, limit)
        self.targets.append(ReplicaTarget(deployment, replica_id, cid, gpus, cpus, fast))
        return cid

    def stats_calls(self) -> list[tuple[object, ...]]:
        return [c for c in self.runtime.calls if c[0] in ("stats", "stats_many")]


def make_rig(**options: Any) -> Rig:
    runtime = SlowRuntime()
    proxy = FakeProxy()
    targets: list[ReplicaTarget] = []
    gpus: list[GpuSample] = []
    host = [HostReading(cpu_percent=25.0, memory_used_bytes=6 * GiB, memory_total_bytes=24 * GiB)]
    rollups = FakeRollups()
    sampler = MetricsSampler(
        runtime,
        lambda: list(targets),
        proxy,
        gpus=partial(gpu_samples, gpus),
        host=lambda: host[-1],
        rollups=rollups,
        now=wall,
        run_blocking=inline,
        **options,
    )
    return Rig(runtime, proxy, targets, gpus, host, rollups, sampler)


@pytest.fixture
async def rig(autojump_clock: MockClock) -> AsyncIterator[Rig]:
    r = make_rig()
    async with trio.open_nursery() as nursery:
        r.nursery = nursery  # type: ignore[attr-defined]
        yield r
        nursery.cancel_scope.cancel()


async def start(rig: Rig) -> None:
    """Start the sampler (its first round runs at 0 s) and step off the beat: the test then
    acts at 1, 6, 11, ... seconds, between rounds, never at the same moment as one."""
    await rig.nursery.start(rig.sampler.run)  # type: ignore[attr-defined]
    await trio.sleep(1)


# -- sampling and the autoscaler's view ----------------------------------------------------


async def test_cpu_is_a_percent_of_the_limit_and_memory_of_its_limit(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.replica("echo", "a", cpu=50.0, memory=256 * 2**20, limit=512 * 2**20, cpus=0.5)
    await rig.replica("echo", "b", cpu=30.0, memory=128 * 2**20, limit=512 * 2**20)
    await start(rig)
    await trio.sleep(12)
    load = rig.sampler.deployment_load("echo", 60)
    assert load.samples == 3
    assert load.replicas == 2
    assert load.cpu_percent == pytest.approx((100.0 + 30.0) / 2)  # b has no limit: of one CPU
    assert load.memory_percent == pytest.approx((50.0 + 25.0) / 2)


async def test_requests_per_second_from_the_change_of_the_counter(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.replica("echo", "a")
    rig.proxy.endpoints["echo"] = {"a": FakeReplica(total=100)}
    await start(rig)
    assert rig.sampler.deployment_load("echo", 60).requests_per_s is None  # one reading
    for _ in range(3):
        rig.proxy.endpoints["echo"]["a"].total += 50
        await trio.sleep(5)
    load = rig.sampler.deployment_load("echo", 60)
    assert load.requests_per_s == pytest.approx(10.0)
    latest = rig.sampler.windows.latest("echo")
    assert latest is not None and latest.replicas[0].requests_per_s == pytest.approx(10.0)


async def test_no_traffic_is_zero_requests_and_no_latency(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.replica("echo", "a")
    rig.proxy.endpoints["echo"] = {"a": FakeReplica(total=7)}
    await start(rig)
    await trio.sleep(21)
    load = rig.sampler.deployment_load("echo", 60)
    assert load.requests_per_s == 0.0
    assert load.concurrency == 0.0
    assert load.request_duration_mean is None and load.request_duration_p95 is None


async def test_a_counter_that_goes_back_gives_no_rate_not_a_negative_one(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.replica("echo", "a")
    rig.proxy.endpoints["echo"] = {"a": FakeReplica(total=1000)}
    await start(rig)
    await trio.sleep(1)
    rig.proxy.endpoints["echo"]["a"].total = 10  # the endpoint was replaced
    await trio.sleep(5)
    latest = rig.sampler.windows.latest("echo")
    assert latest is not None and latest.requests_per_s is None
    rig.proxy.endpoints["echo"]["a"].total = 60
    await trio.sleep(5)
    assert rig.sampler.deployment_load("echo", 4).requests_per_s == pytest.approx(10.0)


async def test_latency_and_concurrency_from_the_proxy(rig: Rig, autojump_clock: MockClock) -> None:
    for rid in "abc":
        await rig.replica("echo", rid)
    rig.proxy.endpoints["echo"] = {
        "a": FakeReplica(in_flight=4, total=10, p50=0.1, p95=0.3, mean=0.15),
        "b": FakeReplica(in_flight=2, total=10, p50=0.2, p95=0.5, mean=0.25),
        "c": FakeReplica(),
    }
    await start(rig)
    await trio.sleep(6)
    load = rig.sampler.deployment_load("echo", 60)
    assert load.concurrency == pytest.approx(2.0)  # 6 in flight over 3 replicas
    assert load.request_duration_mean == pytest.approx(0.2)  # (0.15 * 10 + 0.25 * 10) / 20
    assert load.request_duration_p95 == pytest.approx(0.5)
    latest = rig.sampler.windows.latest("echo")
    assert latest is not None
    assert [(r.in_flight, r.latency_p95) for r in latest.replicas] == [
        (4, 0.3),
        (2, 0.5),
        (0, None),
    ]


async def test_one_stats_call_a_round_for_every_replica(
    rig: Rig, autojump_clock: MockClock
) -> None:
    a = await rig.replica("echo", "a", cpu=10.0)
    b = await rig.replica("echo", "b", cpu=20.0)
    c = await rig.replica("other", "c", cpu=30.0)
    await start(rig)
    await trio.sleep(10)
    assert rig.stats_calls() == [("stats_many", (a, b, c))] * 3


async def test_stats_of_replicas_no_autoscaler_reads_are_taken_less_often(
    autojump_clock: MockClock,
) -> None:
    rig = make_rig(interval=2.0, stats_interval=10.0)
    fast = await rig.replica("scaled", "a", cpu=10.0, fast=True)
    slow = await rig.replica("fixed", "b", cpu=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.sampler.run)
        await trio.sleep(19)  # rounds at 0, 2, ..., 18
        nursery.cancel_scope.cancel()
    asked = [call[1] for call in rig.stats_calls()]
    assert asked == [(fast, slow), *[(fast,)] * 4, (fast, slow), *[(fast,)] * 4]
    # Between its measurements the slow one shows its latest: measured, never None.
    samples = rig.sampler.windows.samples("fixed", since=0.0)
    assert [s.replicas[0].cpu_percent for s in samples] == [20.0] * 10


async def test_rounds_slow_down_while_no_autoscaler_reads_them(
    autojump_clock: MockClock,
) -> None:
    scaled = [False]
    rig = make_rig(interval=2.0, idle_interval=10.0, fast=lambda: scaled[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.sampler.run)
        await trio.sleep(31)  # rounds at 0, 10, 20, 30
        assert rig.sampler.rounds == 4
        assert rig.sampler.current_interval() == 10.0
        scaled[0] = True  # an autoscaled deployment: the round after the next comes 2 s later
        await trio.sleep(12)  # rounds at 40, 42
        assert rig.sampler.rounds == 6
        assert rig.sampler.current_interval() == 2.0
        nursery.cancel_scope.cancel()


async def test_replicas_that_came_at_different_times_share_one_call(
    autojump_clock: MockClock,
) -> None:
    rig = make_rig(interval=2.0, stats_interval=10.0)
    first = await rig.replica("fixed", "a", cpu=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.sampler.run)
        await trio.sleep(5)
        later = await rig.replica("fixed", "b", cpu=30.0)
        await trio.sleep(16)  # rounds at 6 (b is new: at once), then 10 and 20 (both)
        nursery.cancel_scope.cancel()
    asked = [call[1] for call in rig.stats_calls()]
    assert asked == [(first,), (later,), (first, later), (first, later)]


async def test_a_replaced_container_is_measured_at_once(autojump_clock: MockClock) -> None:
    rig = make_rig(interval=2.0, stats_interval=10.0)
    first = await rig.replica("fixed", "a", cpu=20.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.sampler.run)
        await trio.sleep(1)
        await rig.runtime.remove(first)
        second = await rig.replica("fixed", "a", cpu=70.0)  # the same replica, a new container
        rig.targets.pop(0)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert [call[1] for call in rig.stats_calls()] == [(first,), (second,)]
    latest = rig.sampler.windows.latest("fixed")
    assert latest is not None and latest.replicas[0].cpu_percent == 70.0


async def test_a_failed_sample_is_missing_not_zero(rig: Rig, autojump_clock: MockClock) -> None:
    a = await rig.replica("echo", "a", cpu=80.0, memory=100)
    await rig.replica("echo", "b", cpu=40.0, memory=100)
    rig.runtime.fail("stats_many", TemporaryRuntimeError("podman is busy"), times=1)
    await start(rig)
    latest = rig.sampler.windows.latest("echo")
    assert latest is not None
    # One call asks about both: both are unmeasured, neither is zero.
    assert [(r.cpu_percent, r.memory_bytes) for r in latest.replicas] == [(None, None)] * 2
    await rig.runtime.stop(a, timeout=0)  # not running: not measured, also skipped
    await trio.sleep(5)
    load = rig.sampler.deployment_load("echo", 1)
    assert load.cpu_percent == pytest.approx(40.0)
    assert load.replicas == 2


async def test_a_hung_stats_call_is_cut_off_and_the_round_goes_on(
    rig: Rig, autojump_clock: MockClock
) -> None:
    slow = await rig.replica("echo", "a", cpu=80.0)
    await rig.replica("echo", "b", cpu=40.0)
    rig.runtime.slow.add(slow)
    await start(rig)
    assert rig.sampler.rounds == 0  # the first round waits out the timeout (4 s)...
    await trio.sleep(20)
    assert rig.sampler.rounds == 4  # ...and so does every one, still starting every 5 s
    load = rig.sampler.deployment_load("echo", 60)
    assert load.samples == 4 and load.cpu_percent is None  # the one call asked about both
    rig.runtime.slow.clear()
    await trio.sleep(5)
    assert rig.sampler.deployment_load("echo", 4).cpu_percent == pytest.approx(60.0)


async def test_missing_data_is_none(rig: Rig, autojump_clock: MockClock) -> None:
    await rig.replica("echo", "a", cpu=10.0, memory=100)  # no memory limit, no endpoint
    await start(rig)
    load = rig.sampler.deployment_load("echo", 60)
    assert load.samples == 1
    assert load.memory_percent is None
    assert load.gpu_utilization is None and load.gpu_memory_percent is None
    assert load.requests_per_s is None and load.concurrency is None
    nobody = rig.sampler.deployment_load("nobody", 60)
    assert (nobody.samples, nobody.replicas, nobody.cpu_percent) == (0, 0, None)


async def test_the_window_holds_only_recent_samples(rig: Rig, autojump_clock: MockClock) -> None:
    cid = await rig.replica("echo", "a", cpu=10.0)
    await start(rig)
    await trio.sleep(31)
    rig.runtime.stats_by_id[cid] = ContainerStats(90.0, 0)
    await trio.sleep(10)  # two rounds at 90 %
    assert rig.sampler.deployment_load("echo", 10).cpu_percent == pytest.approx(90.0)
    assert rig.sampler.deployment_load("echo", 10).samples == 2
    everything = rig.sampler.deployment_load("echo", 600)
    assert everything.samples == 9
    assert everything.cpu_percent == pytest.approx((7 * 10.0 + 2 * 90.0) / 9)


async def test_gpus_of_a_replica_and_of_the_host(rig: Rig, autojump_clock: MockClock) -> None:
    rig.gpus[:] = [
        GpuSample(0, "", 10.0, 1 * GiB, 80 * GiB, 40.0, 70.0),
        GpuSample(1, "", 90.0, 60 * GiB, 80 * GiB, 70.0, 350.0),
    ]
    await rig.replica("llm", "a", gpus=("nvidia.com/gpu=1",))
    await rig.replica("llm", "b", gpus=(0,))
    await rig.replica("llm", "c")  # no GPU: not measured, not 0 %
    await start(rig)
    latest = rig.sampler.windows.latest("llm")
    assert latest is not None
    assert [(r.gpu_utilization, r.gpu_memory_bytes) for r in latest.replicas] == [
        (90.0, 60 * GiB),
        (10.0, 1 * GiB),
        (None, None),
    ]
    load = rig.sampler.deployment_load("llm", 60)
    assert load.gpu_utilization == pytest.approx(50.0)
    assert load.gpu_memory_percent == pytest.approx((75.0 + 1.25) / 2)
    host = rig.sampler.host_json()
    assert host["cpu_percent"] == 25.0
    assert [g["temperature_c"] for g in host["gpus"]] == [40.0, 70.0]


def test_held_gpus_by_cdi_name_or_index() -> None:
    gpus = {
        0: GpuSample(0, "nvidia.com/gpu=GPU-aaaa"),
        1: GpuSample(1, "nvidia.com/gpu=1"),
        2: GpuSample(2),
    }
    held = held_gpus(["nvidia.com/gpu=GPU-aaaa", "nvidia.com/gpu=1", 2, "1", 7, "all"], gpus)
    assert [g.index for g in held] == [0, 1, 2]


async def test_the_gpu_reader_is_a_gpu_source(rig: Rig, autojump_clock: MockClock) -> None:
    autojump_clock.autojump_threshold = 0.05  # the reader reads in a thread: let it
    inventory = FakeGpuInventory(
        fake_gpus(2),
        samples=[GpuSample(1, "nvidia.com/gpu=1", 70.0, 3 * GiB, 24 * GiB, 55.0, 150.0)],
    )
    sampler = MetricsSampler(
        rig.runtime,
        lambda: list(rig.targets),
        rig.proxy,
        gpus=GpuReader(inventory).sample,
        host=lambda: HostReading(None, None, None),
        run_blocking=inline,
    )
    await rig.replica("llm", "a", gpus=("nvidia.com/gpu=1",))
    await rig.nursery.start(sampler.run)  # type: ignore[attr-defined]
    await trio.sleep(1)
    latest = sampler.windows.latest("llm")
    assert latest is not None and latest.replicas[0].gpu_utilization == 70.0
    assert [g["cdi_name"] for g in sampler.host_json()["gpus"]] == ["nvidia.com/gpu=1"]


def test_gpu_index_from_cdi_names() -> None:
    assert gpu_index("nvidia.com/gpu=3") == 3
    assert gpu_index("2") == 2
    assert gpu_index(1) == 1
    assert gpu_index("nvidia.com/gpu=all") is None
    assert gpu_index("GPU-5b2c") is None


async def test_a_deployment_with_no_replicas_is_still_sampled_when_named(
    autojump_clock: MockClock,
) -> None:
    proxy = FakeProxy({"idle": {}})
    sampler = MetricsSampler(
        FakeRuntime(),
        list,
        proxy,
        deployments=lambda: ["idle"],
        host=lambda: HostReading(None, None, None),
        run_blocking=inline,
        now=wall,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        await trio.sleep(6)
        load = sampler.deployment_load("idle", 60)
        assert (load.samples, load.replicas, load.requests_per_s) == (2, 0, 0.0)
        nursery.cancel_scope.cancel()


async def test_gone_deployments_are_forgotten_after_the_window(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.replica("echo", "a")
    await start(rig)
    rig.targets.clear()
    await trio.sleep(598)
    assert rig.sampler.windows.deployments() == ["echo"]
    await trio.sleep(10)
    assert rig.sampler.windows.deployments() == []


# -- per-minute rollups --------------------------------------------------------------------


async def test_each_minute_is_rolled_up_once_it_is_over(
    rig: Rig, autojump_clock: MockClock
) -> None:
    rig.gpus[:] = [GpuSample(0, "", 50.0, 2 * GiB, 80 * GiB, 60.0, 200.0)]
    cid = await rig.replica("echo", "a", cpu=20.0, memory=100, limit=1000, gpus=("0",))
    await rig.replica("echo", "b", cpu=40.0, memory=300, limit=1000)
    rig.proxy.endpoints["echo"] = {"a": FakeReplica(total=0, p50=0.1, p95=0.2), "b": FakeReplica()}
    await start(rig)
    for _ in range(11):
        rig.proxy.endpoints["echo"]["a"].total += 25
        await trio.sleep(5)
    await trio.sleep(3)
    assert rig.rollups.written == []  # minute 0 is not over yet
    rig.runtime.stats_by_id[cid] = ContainerStats(100.0, 100, 1000)
    await trio.sleep(2)  # the round at 60 s closes minute 0
    assert len(rig.rollups.written) == 1
    rows = {(r.deployment, r.replica): r for r in rig.rollups.written[0]}
    assert set(rows) == {("echo", ""), ("echo", "a"), ("echo", "b"), ("", ""), ("", "gpu:0")}
    assert {r.minute for r in rows.values()} == {rfc3339(START)}
    a, whole = rows[("echo", "a")], rows[("echo", "")]
    assert a.samples == whole.samples == 12
    assert a.cpu_percent == pytest.approx(20.0)  # the 100 % sample is in minute 1
    assert a.requests_per_s == pytest.approx(5.0)  # 11 rates of 5/s; the first has none
    assert whole.requests_per_s == pytest.approx(5.0)
    assert a.gpu_utilization == 50.0 and a.gpu_memory_bytes == 2 * GiB
    assert rows[("echo", "b")].gpu_utilization is None
    assert whole.cpu_percent == pytest.approx(60.0)  # the deployment's replicas together
    assert whole.memory_bytes == 400 and whole.memory_limit_bytes == 2000
    assert whole.latency_p50 == pytest.approx(0.1)
    host, gpu = rows[("", "")], rows[("", "gpu:0")]
    assert (host.cpu_percent, host.memory_bytes) == (25.0, 6 * GiB)
    assert (gpu.gpu_temperature_c, gpu.gpu_power_w) == (60.0, 200.0)

    await trio.sleep(120)
    assert [batch[0].minute for batch in rig.rollups.written] == [
        rfc3339(START + timedelta(minutes=n)) for n in range(3)
    ]
    minute1 = {(r.deployment, r.replica): r for r in rig.rollups.written[1]}
    assert minute1[("echo", "a")].cpu_percent == pytest.approx(100.0)


async def test_a_deployment_minute_has_its_queue_and_desired_replicas(
    autojump_clock: MockClock,
) -> None:
    desired = {"echo": 1}
    rig = make_rig(desired=desired.get)
    async with trio.open_nursery() as nursery:
        rig.nursery = nursery  # type: ignore[attr-defined]
        await rig.replica("echo", "a")
        rig.proxy.endpoints["echo"] = {"a": FakeReplica()}
        await start(rig)
        # Minute 0's 12 rounds: at 0 s (nothing queued, 1 desired), 5..25 s (4 queued, 1
        # desired), 30..55 s (none queued, 3 desired).
        for n in range(12):
            rig.proxy.queued["echo"] = 4 if n < 5 else 0
            desired["echo"] = 1 if n < 5 else 3
            await trio.sleep(5)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    rows = {(r.deployment, r.replica): r for r in rig.rollups.written[0]}
    whole, replica = rows[("echo", "")], rows[("echo", "a")]
    assert whole.queued == pytest.approx(5 * 4 / 12)
    assert whole.desired_replicas == pytest.approx((6 * 1 + 6 * 3) / 12)
    assert replica.queued is None and replica.desired_replicas is None  # the deployment's own


async def test_old_rollups_are_pruned_at_start_and_hourly(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await start(rig)
    assert rig.rollups.pruned == [START - timedelta(days=7)]
    await trio.sleep(3600 * 2 + 1)
    assert rig.rollups.pruned == [START + timedelta(hours=h) - timedelta(days=7) for h in range(3)]


async def test_a_stuck_store_drops_rollups_and_sampling_goes_on(
    rig: Rig, autojump_clock: MockClock
) -> None:
    rig.rollups.stuck = True
    await rig.replica("echo", "a")
    await start(rig)
    await trio.sleep(60 * 20 + 1)
    assert rig.sampler.rounds == 20 * 12 + 1
    # one minute taken by the stuck writer, 16 queued, the rest dropped
    assert rig.sampler.dropped_rollups == 20 - 1 - 16


# -- the admin API's answer ------------------------------------------------------------------


async def test_deployment_metrics_has_what_berth_metrics_reads(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.replica("echo", "a", cpu=12.5, memory=2**20, limit=2**29, cpus=1.0, gpus=(0,))
    rig.gpus[:] = [GpuSample(0, "", 33.0, GiB, 80 * GiB)]
    rig.proxy.endpoints["echo"] = {"a": FakeReplica(in_flight=1, total=5, p50=0.01, p95=0.02)}
    await start(rig)
    await trio.sleep(60)
    m = await rig.sampler.deployment_metrics("echo", 3600)
    json.dumps(m)  # JSON-able as it is
    assert m["name"] == "echo" and m["window"] == 60.0
    assert m["latency"]["count"] == 5 and m["in_flight"] == 1
    [a] = m["replicas"]
    assert a["replica_id"] == "a"
    assert (a["cpu_percent"], a["memory_bytes"], a["gpu_utilization"], a["gpu_memory_bytes"]) == (
        12.5,
        2**20,
        33.0,
        GiB,
    )
    assert a["latency"]["p50"] == a["latency_p50"] == 0.01
    assert a["latency_p95"] == 0.02 and a["in_flight"] == 1 and a["requests_per_s"] == 0.0
    assert {(r["replica"], r["minute"]) for r in m["series"]} == {
        ("", rfc3339(START)),
        ("a", rfc3339(START)),
    }
    assert m["host"]["memory_total_bytes"] == 24 * GiB
    assert [r["replica"] for r in m["host"]["series"]] == ["", "gpu:0"]
    assert m["since"] == rfc3339(START + timedelta(seconds=61) - timedelta(hours=1))


async def test_deployment_metrics_without_an_endpoint_or_samples(
    rig: Rig, autojump_clock: MockClock
) -> None:
    m = await rig.sampler.deployment_metrics("nobody", 60)
    json.dumps(m)
    assert m["replicas"] == [] and m["series"] == [] and m["sampled_at"] is None
    assert m["window"] is None and m["host"]["cpu_percent"] is None


# -- the real parts: psutil and the store, through the daemon's door --------------------------


def test_psutil_host_reading() -> None:
    host = PsutilHost()
    first = host()
    assert first.cpu_percent is None  # psutil measures between two readings
    assert first.memory_total_bytes is not None and first.memory_total_bytes > 0
    assert first.memory_used_bytes is not None
    assert 0 < first.memory_used_bytes <= first.memory_total_bytes
    second = host()
    assert second.cpu_percent is not None and 0.0 <= second.cpu_percent <= 100.0


async def test_store_rollups_through_store_access(tmp_path: Path) -> None:
    with Store(tmp_path / "state.db") as store:
        rollups = StoreRollups(StoreAccess(store))
        minute = rfc3339(START)
        await rollups.write([MetricRollup("echo", "a", minute, 12, cpu_percent=5.0)])
        got = await rollups.read("echo", START - timedelta(minutes=1))
        assert [(r.replica, r.cpu_percent) for r in got] == [("a", 5.0)]
        await rollups.prune(START + timedelta(minutes=1))
        assert await rollups.read("echo", START - timedelta(minutes=1)) == []


async def test_the_sampler_writes_to_a_real_store(tmp_path: Path) -> None:
    """Real time, real threads: a short interval and a wall clock moved by hand."""
    clock = [START]
    with Store(tmp_path / "state.db") as store:
        runtime = FakeRuntime(images={"img"})
        cid = await runtime.create(ContainerSpec("echo-a", "img", {}, 8080, 10000))
        await runtime.start(cid)
        runtime.stats_by_id[cid] = ContainerStats(10.0, 100)
        targets: Iterable[ReplicaTarget] = [ReplicaTarget("echo", "a", cid)]
        sampler = MetricsSampler(
            runtime,
            lambda: targets,
            FakeProxy(),
            rollups=StoreRollups(StoreAccess(store)),
            interval=0.01,
            now=lambda: clock[0],
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(sampler.run)
            await trio.sleep(0.05)
            clock[0] = START + timedelta(minutes=1)
            for _ in range(500):  # up to 5 s for the writer's thread
                if store.metric_rollups("echo", START):
                    break
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        rows = store.metric_rollups("echo", START)
        assert {r.replica for r in rows} == {"", "a"}
        assert all(r.minute == rfc3339(START) for r in rows)
        assert store.metric_rollups("", START)[0].memory_limit_bytes is not None


async def test_a_host_read_that_hangs_holds_one_thread_and_is_skipped(
    autojump_clock: MockClock,
) -> None:
    """psutil reading /proc on a wedged box: the read is abandoned after the sample timeout,
    and not started again while it is outstanding (one thread, not one a round)."""
    autojump_clock.autojump_threshold = 0.05  # host reads run in real threads here
    release = threading.Event()
    reads = []

    def hung_host() -> HostReading:
        reads.append(1)
        release.wait(30)
        return HostReading(None, None, None)

    sampler = MetricsSampler(FakeRuntime(), list, FakeProxy(), host=hung_host, interval=1.0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sampler.run)
            await trio.sleep(10)
            assert sampler.rounds >= 5 and len(reads) == 1
            nursery.cancel_scope.cancel()
    finally:
        release.set()
