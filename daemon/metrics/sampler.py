"""The metrics sampler: every few seconds, what each replica and the host use and serve.

Each round (every `interval`, default 5 s) samples, all at once and each bounded by
`sample_timeout`: the replicas' CPU and memory (one `ContainerRuntime.stats_many` call for
every replica due: each round for those with `fast_stats`, which an autoscaler reads, the
others every `stats_interval`), the host's CPU and memory (psutil) and every GPU (the GPU
source), the blocking ones in threads. The proxy's statistics are read directly (they are in
memory): in flight, latency p50/p95, and requests/s from the change of `requests_total`
since the previous round.

Invariants:
- A sample that failed or timed out is missing (None), never zero; a counter that went
  backwards (the endpoint was replaced) gives no rate for that round, never a negative one.
- A replica's CPU and memory are its latest measurement of that container, at most
  `stats_interval` old: a failed or timed-out call leaves every replica it asked about
  unmeasured until its next one, and a container that is not running is not measured.
- The sampler holds no lock and no connection between rounds: it asks its callables for the
  current replicas each round, so a replica that came or went is picked up by the next one.
- Rollups: when a round falls in a new wall-clock minute, the previous minute is rolled up
  and queued for the store (a bounded queue: metrics are dropped, never allowed to stall the
  sampler). Rollups older than `retention_s` (7 days) are pruned at start and hourly.

The daemon's side: `MetricsSampler(runtime, targets, statistics, gpus=..., rollups=
StoreRollups(store_access))` (`daemon.metrics.rollups`), started with `nursery.start(sampler.run)`;
the autoscaler calls `deployment_load`, the admin API `deployment_metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import trio

from daemon.gpu.model import GpuSample
from daemon.metrics.host import HostReading, PsutilHost
from daemon.metrics.model import (
    DeploymentLoad,
    DeploymentSample,
    GpuSource,
    HostSample,
    ReplicaSample,
    ReplicaTarget,
    held_gpus,
)
from daemon.metrics.rollups import RollupStore
from daemon.metrics.windows import HOST, MetricsWindows, mean
from daemon.runtime.interface import ContainerRuntime, ContainerStats, RuntimeFailure
from daemon.store.database import MetricRollup, rfc3339, utc_now
from proxy.stats import EndpointStatistics, ReplicaStatistics

log = logging.getLogger("berthd.metrics")

T = TypeVar("T")

DEFAULT_INTERVAL = 5.0
DEFAULT_KEEP = 600.0  # seconds of samples kept in memory: the autoscaler's longest window
RETENTION = 7 * 24 * 3600.0
PRUNE_EVERY = 3600.0
ROLLUP_BACKLOG = 16  # minutes of rollups waiting for the store before they are dropped

Targets = Callable[[], Iterable[ReplicaTarget]]
Statistics = Callable[[str], EndpointStatistics | None]
HostSource = Callable[[], HostReading]


class BlockingRunner(Protocol):
    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


async def in_thread(fn: Callable[[], T]) -> T:
    # Abandoned on cancel: these are reads, and a hung driver must not hold up shutdown.
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


class MetricsSampler:
    def __init__(
        self,
        runtime: ContainerRuntime,
        targets: Targets,
        statistics: Statistics,
        *,
        gpus: GpuSource | None = None,
        host: HostSource | None = None,
        rollups: RollupStore | None = None,
        deployments: Callable[[], Iterable[str]] | None = None,
        interval: float = DEFAULT_INTERVAL,
        idle_interval: float | None = None,
        fast: Callable[[], bool] | None = None,
        stats_interval: float | None = None,
        sample_timeout: float | None = None,
        keep_s: float = DEFAULT_KEEP,
        retention_s: float = RETENTION,
        prune_every_s: float = PRUNE_EVERY,
        now: Callable[[], datetime] = utc_now,
        run_blocking: BlockingRunner = in_thread,
        scraped: Callable[[str], dict[str, Any]] | None = None,
        desired: Callable[[str], int | None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, not {interval}")
        self._runtime = runtime
        self._targets = targets
        self._statistics = statistics
        self._gpus = gpus
        self._host = host if host is not None else PsutilHost()
        self._rollups = rollups
        self._deployments = deployments
        self.interval = interval
        # While `fast()` says no autoscaler reads the samples, rounds come every
        # `idle_interval` instead: figures for `berth metrics` and the rollups only.
        self.idle_interval = max(interval, idle_interval or interval)
        self._fast = fast
        # Container stats cost Podman ~0.7 ms of CPU per container: not every round for all.
        self.stats_interval = max(interval, stats_interval or interval)
        self.sample_timeout = sample_timeout if sample_timeout is not None else interval * 0.8
        # A minute must stay in memory until it is rolled up.
        self.windows = MetricsWindows(keep_s=max(keep_s, 120.0))
        self.retention_s = retention_s
        self.prune_every_s = prune_every_s
        self._now = now
        self._run_blocking = run_blocking
        self._scraped = scraped  # the replicas' own gauges for the API (`daemon.metrics.scrape`)
        self._desired = desired  # a deployment's wanted replica count (its worker's)
        self._counters: dict[tuple[str, str], tuple[float, int]] = {}
        # (deployment, replica) -> the container last asked about and what was measured
        # (None: not measured), carried into the rounds until it is due again.
        self._measured: dict[tuple[str, str], tuple[str, ContainerStats | None]] = {}
        # When the replicas without fast_stats are measured again, all in the same call (a
        # new one is measured at once, then with them).
        self._slow_due = -math.inf
        self._minute: int | None = None
        # Reads begun and over, by source (each counter written by one side): a difference
        # is a read still outstanding in its thread.
        self._begun: Counter[str] = Counter()
        self._over: Counter[str] = Counter()
        self._send: trio.MemorySendChannel[list[MetricRollup]] | None = None
        self.rounds = 0
        self.dropped_rollups = 0

    def __repr__(self) -> str:
        return (
            f"<MetricsSampler interval={self.interval:g}s rounds={self.rounds}"
            f" deployments={self.windows.deployments()}>"
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[list[MetricRollup]](ROLLUP_BACKLOG)
        async with trio.open_nursery() as nursery:
            if self._rollups is not None:
                self._send = send
                nursery.start_soon(self._write_rollups, self._rollups, receive)
                nursery.start_soon(self._prune_rollups, self._rollups)
            task_status.started()
            deadline = trio.current_time()
            while True:
                await self.sample_once()
                deadline = max(deadline + self.current_interval(), trio.current_time())
                await trio.sleep_until(deadline)

    def current_interval(self) -> float:
        """`interval` while an autoscaler reads the samples (`fast()`), else `idle_interval`."""
        if self._fast is None or self._fast():
            return self.interval
        return self.idle_interval

    # -- queries ------------------------------------------------------------------------

    def deployment_load(self, name: str, window_s: float) -> DeploymentLoad:
        """`name`'s load over the last `window_s` seconds (at most `keep_s`); for the
        autoscaler. Call from the trio thread."""
        return self.windows.deployment_load(name, window_s, trio.current_time())

    async def deployment_metrics(self, name: str, since_s: float) -> dict[str, Any]:
        """JSON for `GET /v1/deployments/NAME/metrics?since=...`: the endpoint's request
        statistics (the proxy's, as before), each replica now, per-minute rollups of the
        last `since_s` seconds (capped at the retention), the host and, when berthd scrapes
        the replicas, `scraped` (`Scraper.deployment_json`)."""
        stats = self._statistics(name)
        answer: dict[str, Any] = {"name": name, "window": None, "in_flight": None}
        if stats is not None:
            answer.update(dataclasses.asdict(stats))
        latest = self.windows.latest(name)
        answer["sampled_at"] = None if latest is None else _wall(latest.wall)
        answer["interval"] = self.current_interval()
        answer["requests_per_s"] = None if latest is None else latest.requests_per_s
        answer["replicas"] = _replicas_json(latest, stats)
        since_s = min(max(since_s, 0.0), self.retention_s)
        since = self._now() - timedelta(seconds=since_s)
        answer["since"] = rfc3339(since)
        series: list[MetricRollup] = []
        host_series: list[MetricRollup] = []
        if self._rollups is not None:
            series = await self._rollups.read(name, since)
            host_series = await self._rollups.read(HOST, since)
        answer["series"] = [dataclasses.asdict(r) for r in series]
        answer["host"] = self.host_json()
        answer["host"]["series"] = [dataclasses.asdict(r) for r in host_series]
        if self._scraped is not None:
            answer["scraped"] = self._scraped(name)
        return answer

    def host_json(self) -> dict[str, Any]:
        h = self.windows.latest_host()
        if h is None:
            return {"sampled_at": None, "cpu_percent": None, "memory_used_bytes": None,
                    "memory_total_bytes": None, "gpus": []}  # fmt: skip
        return {
            "sampled_at": _wall(h.wall),
            "cpu_percent": h.cpu_percent,
            "memory_used_bytes": h.memory_used_bytes,
            "memory_total_bytes": h.memory_total_bytes,
            "gpus": [dataclasses.asdict(g) for g in h.gpus],
        }

    # -- one round ----------------------------------------------------------------------

    async def sample_once(self) -> None:
        """Sample every replica, the host and the GPUs once; roll up a finished minute."""
        targets = list(self._targets())
        host: list[HostReading] = []
        gpus: list[Sequence[GpuSample]] = []
        async with trio.open_nursery() as nursery:
            if due := self._stats_due(targets):
                nursery.start_soon(self._container_stats, due)
            nursery.start_soon(self._blocking, self._host, host, "host")
            if self._gpus is not None:
                nursery.start_soon(self._read_gpus, self._gpus, gpus)
        now = trio.current_time()
        wall = self._now().timestamp()
        gpu_stats = {g.index: g for g in (gpus[0] if gpus else ())}

        stats: dict[tuple[str, str], ContainerStats] = {}
        for t in targets:
            key = (t.deployment, t.replica_id)
            container_id, measured = self._measured.get(key, ("", None))
            if measured is not None and container_id == t.container_id:
                stats[key] = measured
        for key in self._measured.keys() - {(t.deployment, t.replica_id) for t in targets}:
            del self._measured[key]

        names = list(dict.fromkeys(t.deployment for t in targets))
        if self._deployments is not None:
            names.extend(n for n in self._deployments() if n not in names)
        seen: set[tuple[str, str]] = set()
        for name in names:
            mine = [t for t in targets if t.deployment == name]
            sample = self._deployment_sample(name, mine, stats, gpu_stats, now, wall, seen)
            self.windows.add(name, sample)
        for key in set(self._counters) - seen:
            del self._counters[key]

        reading = host[0] if host else None
        self.windows.add_host(
            HostSample(
                time=now,
                wall=wall,
                cpu_percent=None if reading is None else reading.cpu_percent,
                memory_used_bytes=None if reading is None else reading.memory_used_bytes,
                memory_total_bytes=None if reading is None else reading.memory_total_bytes,
                gpus=tuple(gpu_stats[i] for i in sorted(gpu_stats)),
            )
        )
        self.windows.trim(now)
        self.rounds += 1
        self._roll_up(wall)

    def _stats_due(self, targets: list[ReplicaTarget]) -> list[ReplicaTarget]:
        """The replicas to measure this round: those with fast_stats, and every other one
        when their turn has come (a replica not measured yet, or with a new container, at
        once): one call, however their replicas came and went."""
        now = trio.current_time()
        slow_turn = now >= self._slow_due
        if slow_turn:
            # Half a round early rather than a round late: rounds do not start on the dot.
            self._slow_due = now + self.stats_interval - self.interval / 2
        due = []
        for t in targets:
            measured = self._measured.get((t.deployment, t.replica_id))
            if t.fast_stats or slow_turn or measured is None or measured[0] != t.container_id:
                due.append(t)
        return due

    async def _container_stats(self, due: list[ReplicaTarget]) -> None:
        """One call for every replica due; each is measured now, or not at all."""
        found: dict[str, ContainerStats] = {}
        with trio.move_on_after(self.sample_timeout) as scope:
            try:
                found = await self._runtime.stats_many([t.container_id for t in due])
            except RuntimeFailure as exc:
                log.debug("metrics: no stats for %d replicas: %s", len(due), exc)
        if scope.cancelled_caught:
            log.debug("metrics: stats for %d replicas timed out", len(due))
        for t in due:
            self._measured[(t.deployment, t.replica_id)] = (
                t.container_id,
                found.get(t.container_id),
            )

    async def _blocking(self, fn: Callable[[], T], into: list[T], what: str) -> None:
        """`fn` in a thread, bounded by the sample timeout; skipped (nothing measured) while
        an earlier read of the same source has not returned, so a hung read holds one
        thread, not one a round."""
        if self._begun[what] != self._over[what]:
            return

        def read() -> T:
            try:
                return fn()
            finally:
                self._over[what] += 1

        self._begun[what] += 1
        with trio.move_on_after(self.sample_timeout) as scope:
            into.append(await self._run_blocking(read))
        if scope.cancelled_caught:
            log.warning("metrics: reading %s took over %gs; skipped", what, self.sample_timeout)

    async def _read_gpus(self, source: GpuSource, into: list[Sequence[GpuSample]]) -> None:
        with trio.move_on_after(self.sample_timeout):
            into.append(await source())

    def _rate(self, key: tuple[str, str], total: int | None, now: float) -> float | None:
        """Requests/s since the previous round, from a counter; None without two readings."""
        if total is None:
            self._counters.pop(key, None)
            return None
        previous = self._counters.get(key)
        self._counters[key] = (now, total)
        if previous is None:
            return None
        then, before = previous
        if total < before or now <= then:
            return None
        return (total - before) / (now - then)

    def _deployment_sample(
        self,
        name: str,
        targets: list[ReplicaTarget],
        stats: dict[tuple[str, str], ContainerStats],
        gpus: dict[int, GpuSample],
        now: float,
        wall: float,
        seen: set[tuple[str, str]],
    ) -> DeploymentSample:
        endpoint = self._statistics(name)
        proxy = {r.replica_id: r for r in endpoint.replicas} if endpoint is not None else {}
        replicas = []
        for t in targets:
            key = (name, t.replica_id)
            seen.add(key)
            c = stats.get(key)
            p = proxy.get(t.replica_id)
            held = held_gpus(t.gpus, gpus)
            replicas.append(
                ReplicaSample(
                    replica_id=t.replica_id,
                    container_id=t.container_id,
                    cpu_percent=None if c is None else c.cpu_percent,
                    cpu_limit=t.cpus,
                    memory_bytes=None if c is None else c.memory_bytes,
                    memory_limit_bytes=None if c is None else c.memory_limit_bytes,
                    gpu_utilization=mean(g.utilization_percent for g in held),
                    gpu_memory_bytes=_total(g.memory_used_bytes for g in held),
                    gpu_memory_total_bytes=_total(g.memory_total_bytes for g in held),
                    requests_total=None if p is None else p.requests_total,
                    requests_per_s=self._rate(key, None if p is None else p.requests_total, now),
                    in_flight=None if p is None else p.in_flight,
                    latency_p50=None if p is None else p.latency.p50,
                    latency_p95=None if p is None else p.latency.p95,
                )
            )
        key = (name, "")
        seen.add(key)
        total = None if endpoint is None else endpoint.requests_total
        return DeploymentSample(
            time=now,
            wall=wall,
            replicas=tuple(replicas),
            requests_total=total,
            requests_per_s=self._rate(key, total, now),
            in_flight=None if endpoint is None else endpoint.in_flight,
            latency_count=None if endpoint is None else endpoint.latency.count,
            latency_p50=None if endpoint is None else endpoint.latency.p50,
            latency_p95=None if endpoint is None else endpoint.latency.p95,
            latency_mean=None if endpoint is None else endpoint.latency.mean,
            queued=None if endpoint is None else endpoint.queued,
            desired=None if self._desired is None else self._desired(name),
        )

    # -- rollups ------------------------------------------------------------------------

    def _roll_up(self, wall: float) -> None:
        minute = math.floor(wall / 60.0)
        previous, self._minute = self._minute, minute
        if previous is None or minute <= previous or self._send is None:
            return
        rows = self.windows.rollups(previous * 60.0)
        if not rows:
            return
        try:
            self._send.send_nowait(rows)
        except trio.WouldBlock:
            self.dropped_rollups += 1
            log.warning("metrics: the store is behind; dropped the rollups of one minute")

    async def _write_rollups(
        self, rollups: RollupStore, receive: trio.MemoryReceiveChannel[list[MetricRollup]]
    ) -> None:
        async with receive:
            async for rows in receive:
                await rollups.write(rows)

    async def _prune_rollups(self, rollups: RollupStore) -> None:
        while True:
            await rollups.prune(self._now() - timedelta(seconds=self.retention_s))
            await trio.sleep(self.prune_every_s)


def _total(values: Iterable[int | None]) -> int | None:
    measured = [v for v in values if v is not None]
    return sum(measured) if measured else None


def _wall(epoch: float) -> str:
    return rfc3339(datetime.fromtimestamp(epoch, UTC))


def _replicas_json(
    latest: DeploymentSample | None, stats: EndpointStatistics | None
) -> list[dict[str, Any]]:
    """Each replica now: the newest sample's resource figures, the proxy's fresh request
    figures (in the proxy's own shape, which `berth metrics` reads) and flat p50/p95."""
    proxy: dict[str, ReplicaStatistics] = (
        {} if stats is None else {r.replica_id: r for r in stats.replicas}
    )
    sampled = {} if latest is None else {r.replica_id: r for r in latest.replicas}
    out = []
    for replica_id in sorted(sampled.keys() | proxy.keys()):
        s = sampled.get(replica_id)
        p = proxy.get(replica_id)
        row: dict[str, Any] = {
            "replica_id": replica_id,
            "container_id": None if s is None else s.container_id,
            "cpu_percent": None if s is None else s.cpu_percent,
            "cpu_limit": None if s is None else s.cpu_limit,
            "memory_bytes": None if s is None else s.memory_bytes,
            "memory_limit_bytes": None if s is None else s.memory_limit_bytes,
            "gpu_utilization": None if s is None else s.gpu_utilization,
            "gpu_memory_bytes": None if s is None else s.gpu_memory_bytes,
            "gpu_memory_total_bytes": None if s is None else s.gpu_memory_total_bytes,
            "requests_per_s": None if s is None else s.requests_per_s,
            "in_flight": None if s is None else s.in_flight,
            "latency_p50": None if s is None else s.latency_p50,
            "latency_p95": None if s is None else s.latency_p95,
        }
        if p is not None:
            row.update(dataclasses.asdict(p))
            row["latency_p50"] = p.latency.p50
            row["latency_p95"] = p.latency.p95
        out.append(row)
    return out
