"""Sliding windows of metric samples in memory, and the per-minute rollups made from them.

Invariants:
- Each deployment's samples, and the host's, are kept in time order for `keep_s` seconds
  (trio clock) and no longer; a deployment with no sample left is forgotten.
- Queries never invent data: an average is over the values that were measured, and with none
  it is None. A window with no sample at all gives `samples == 0` and every figure None.
- A rollup covers one wall-clock minute, [start, start + 60 s), of whatever samples fell in it;
  it is pure, so the sampler can write it again (the store replaces by minute) without harm.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from daemon.metrics.model import DeploymentLoad, DeploymentSample, HostSample, ReplicaSample
from daemon.store.database import MetricRollup, rfc3339

HOST = ""  # the deployment name host-wide rollups are filed under


def mean(values: Iterable[float | int | None]) -> float | None:
    """The mean of the values that were measured; None when none were."""
    total = 0.0
    count = 0
    for v in values:
        if v is not None:
            total += v
            count += 1
    return total / count if count else None


def _sum_or_none(values: Iterable[float | int | None]) -> float | None:
    """The sum of the measured values; None when none were (a total of nothing is unknown)."""
    measured = [v for v in values if v is not None]
    return float(sum(measured)) if measured else None


class MetricsWindows:
    def __init__(self, keep_s: float = 600.0) -> None:
        self.keep_s = keep_s
        self._deployments: dict[str, deque[DeploymentSample]] = {}
        self._host: deque[HostSample] = deque()

    def __repr__(self) -> str:
        counts = {name: len(q) for name, q in self._deployments.items()}
        return (
            f"<MetricsWindows keep_s={self.keep_s:g} deployments={counts} host={len(self._host)}>"
        )

    def add(self, name: str, sample: DeploymentSample) -> None:
        self._deployments.setdefault(name, deque()).append(sample)

    def add_host(self, sample: HostSample) -> None:
        self._host.append(sample)

    def trim(self, now: float) -> None:
        """Drop what is older than `keep_s`, and deployments left with nothing."""
        oldest = now - self.keep_s
        for name in list(self._deployments):
            queue = self._deployments[name]
            while queue and queue[0].time < oldest:
                queue.popleft()
            if not queue:
                del self._deployments[name]
        while self._host and self._host[0].time < oldest:
            self._host.popleft()

    def deployments(self) -> list[str]:
        return sorted(self._deployments)

    def samples(self, name: str, since: float) -> list[DeploymentSample]:
        """`name`'s samples taken at or after `since` (trio clock), oldest first."""
        return [s for s in self._deployments.get(name, ()) if s.time >= since]

    def latest(self, name: str) -> DeploymentSample | None:
        queue = self._deployments.get(name)
        return queue[-1] if queue else None

    def latest_host(self) -> HostSample | None:
        return self._host[-1] if self._host else None

    def deployment_load(self, name: str, window_s: float, now: float) -> DeploymentLoad:
        samples = self.samples(name, now - window_s)
        if not samples:
            return DeploymentLoad(window_s=window_s, samples=0, replicas=0)
        replicas = [r for s in samples for r in s.replicas]
        return DeploymentLoad(
            window_s=window_s,
            samples=len(samples),
            replicas=len(samples[-1].replicas),
            cpu_percent=mean(r.cpu_of_limit for r in replicas),
            memory_percent=mean(r.memory_of_limit for r in replicas),
            gpu_utilization=mean(r.gpu_utilization for r in replicas),
            gpu_memory_percent=mean(r.gpu_memory_percent for r in replicas),
            request_duration_mean=mean(s.latency_mean for s in samples),
            request_duration_p95=mean(s.latency_p95 for s in samples),
            concurrency=mean(
                None if s.in_flight is None else s.in_flight / max(len(s.replicas), 1)
                for s in samples
            ),
            requests_per_s=mean(s.requests_per_s for s in samples),
        )

    def rollups(self, minute_start: float) -> list[MetricRollup]:
        """Every row for the wall-clock minute starting at `minute_start` (epoch seconds):
        per replica, per deployment, the host and each host GPU."""
        end = minute_start + 60.0
        minute = rfc3339(datetime.fromtimestamp(minute_start, UTC))
        rows: list[MetricRollup] = []
        for name in self.deployments():
            in_minute = [s for s in self._deployments[name] if minute_start <= s.wall < end]
            if in_minute:
                rows.append(_deployment_rollup(name, minute, in_minute))
                rows.extend(_replica_rollups(name, minute, in_minute))
        host = [h for h in self._host if minute_start <= h.wall < end]
        if host:
            rows.extend(_host_rollups(minute, host))
        return rows


def _deployment_rollup(name: str, minute: str, samples: list[DeploymentSample]) -> MetricRollup:
    """The deployment as a whole: resource figures summed over its replicas (then averaged
    over the minute), GPU utilization averaged, request figures as the endpoint saw them."""

    def per_sample_sum(field: str) -> float | None:
        return mean(_sum_or_none(getattr(r, field) for r in s.replicas) for s in samples)

    return MetricRollup(
        deployment=name,
        replica="",
        minute=minute,
        samples=len(samples),
        cpu_percent=per_sample_sum("cpu_percent"),
        memory_bytes=per_sample_sum("memory_bytes"),
        memory_limit_bytes=per_sample_sum("memory_limit_bytes"),
        gpu_utilization=mean(r.gpu_utilization for s in samples for r in s.replicas),
        gpu_memory_bytes=per_sample_sum("gpu_memory_bytes"),
        gpu_memory_total_bytes=per_sample_sum("gpu_memory_total_bytes"),
        requests_per_s=mean(s.requests_per_s for s in samples),
        in_flight=mean(s.in_flight for s in samples),
        latency_p50=mean(s.latency_p50 for s in samples),
        latency_p95=mean(s.latency_p95 for s in samples),
        queued=mean(s.queued for s in samples),
        desired_replicas=mean(s.desired for s in samples),
    )


def _replica_rollups(
    name: str, minute: str, samples: list[DeploymentSample]
) -> Iterator[MetricRollup]:
    by_replica: dict[str, list[ReplicaSample]] = {}
    for s in samples:
        for r in s.replicas:
            by_replica.setdefault(r.replica_id, []).append(r)
    for replica_id, rs in sorted(by_replica.items()):
        yield MetricRollup(
            deployment=name,
            replica=replica_id,
            minute=minute,
            samples=len(rs),
            cpu_percent=mean(r.cpu_percent for r in rs),
            memory_bytes=mean(r.memory_bytes for r in rs),
            memory_limit_bytes=mean(r.memory_limit_bytes for r in rs),
            gpu_utilization=mean(r.gpu_utilization for r in rs),
            gpu_memory_bytes=mean(r.gpu_memory_bytes for r in rs),
            gpu_memory_total_bytes=mean(r.gpu_memory_total_bytes for r in rs),
            requests_per_s=mean(r.requests_per_s for r in rs),
            in_flight=mean(r.in_flight for r in rs),
            latency_p50=mean(r.latency_p50 for r in rs),
            latency_p95=mean(r.latency_p95 for r in rs),
        )


def _host_rollups(minute: str, samples: list[HostSample]) -> Iterator[MetricRollup]:
    yield MetricRollup(
        deployment=HOST,
        replica="",
        minute=minute,
        samples=len(samples),
        cpu_percent=mean(h.cpu_percent for h in samples),
        memory_bytes=mean(h.memory_used_bytes for h in samples),
        memory_limit_bytes=mean(h.memory_total_bytes for h in samples),
        gpu_utilization=mean(g.utilization_percent for h in samples for g in h.gpus),
        gpu_memory_bytes=mean(_sum_or_none(g.memory_used_bytes for g in h.gpus) for h in samples),
        gpu_memory_total_bytes=mean(
            _sum_or_none(g.memory_total_bytes for g in h.gpus) for h in samples
        ),
    )
    indices = sorted({g.index for h in samples for g in h.gpus})
    for index in indices:
        gs = [g for h in samples for g in h.gpus if g.index == index]
        yield MetricRollup(
            deployment=HOST,
            replica=f"gpu:{index}",
            minute=minute,
            samples=len(gs),
            gpu_utilization=mean(g.utilization_percent for g in gs),
            gpu_memory_bytes=mean(g.memory_used_bytes for g in gs),
            gpu_memory_total_bytes=mean(g.memory_total_bytes for g in gs),
            gpu_temperature_c=mean(g.temperature_c for g in gs),
            gpu_power_w=mean(g.power_w for g in gs),
        )
