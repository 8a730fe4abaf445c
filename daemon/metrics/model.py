"""What the metrics sampler measures and what the autoscaler reads back: plain frozen values.

Everything a sample could not measure is None, never zero: a failed `stats` call or a replica
without a memory limit must not look like an idle replica. Zero means "measured: nothing"
(no requests since the last sample is 0.0 requests/s, which the autoscaler reads as no load).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from daemon.gpu.model import GpuSample

# The GPUs' figures now (`daemon.gpu.reader.GpuReader.sample`: NVML in a thread of its own,
# bounded). It must not raise for "no GPU", a lost or a stuck driver: it returns [] (or the
# GPUs it could read) and reports failures its own way.
GpuSource = Callable[[], Awaitable[Sequence[GpuSample]]]


@dataclass(frozen=True)
class ReplicaTarget:
    """One replica to sample, as the daemon registers it.

    `gpus` are the GPUs the replica holds, as CDI names ("nvidia.com/gpu=0"), bare indices
    ("0") or ints; `cpus` its CPU limit, so that CPU use can be read as a percent of it;
    `fast_stats` whether its CPU and memory are wanted every round (an autoscaler reads
    them), not only every `stats_interval`."""

    deployment: str
    replica_id: str
    container_id: str
    gpus: tuple[str | int, ...] = ()
    cpus: float | None = None
    fast_stats: bool = False


def held_gpus(names: Sequence[str | int], gpus: Mapping[int, GpuSample]) -> list[GpuSample]:
    """The GPUs a replica holds, from the names it was given: by CDI name first (names such
    as "nvidia.com/gpu=GPU-<uuid>" carry no index), else by index; each GPU once."""
    by_cdi = {g.cdi_name: g for g in gpus.values() if g.cdi_name}
    held: dict[int, GpuSample] = {}
    for name in names:
        gpu = by_cdi.get(name) if isinstance(name, str) else None
        if gpu is None:
            index = gpu_index(name)
            gpu = None if index is None else gpus.get(index)
        if gpu is not None:
            held[gpu.index] = gpu
    return list(held.values())


def gpu_index(name: str | int) -> int | None:
    """The GPU index in a CDI device name: "nvidia.com/gpu=1" -> 1, "1" -> 1, "all" -> None."""
    if isinstance(name, int):
        return name
    tail = name.rsplit("=", 1)[-1]
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class ReplicaSample:
    replica_id: str
    container_id: str
    cpu_percent: float | None  # of one CPU: 150.0 is one and a half CPUs busy
    cpu_limit: float | None  # CPUs
    memory_bytes: int | None
    memory_limit_bytes: int | None
    gpu_utilization: float | None  # mean over the replica's GPUs, percent
    gpu_memory_bytes: int | None  # used on the replica's GPUs (whole cards: NVML's view)
    gpu_memory_total_bytes: int | None
    requests_total: int | None
    requests_per_s: float | None  # None on the first sample or after a counter reset
    in_flight: int | None
    latency_p50: float | None  # seconds, the proxy's window
    latency_p95: float | None

    @property
    def cpu_of_limit(self) -> float | None:
        """CPU use as a percent of the replica's CPU limit (of one CPU when it has none)."""
        if self.cpu_percent is None:
            return None
        if self.cpu_limit:
            return self.cpu_percent / self.cpu_limit
        return self.cpu_percent

    @property
    def memory_of_limit(self) -> float | None:
        if self.memory_bytes is None or not self.memory_limit_bytes:
            return None
        return 100.0 * self.memory_bytes / self.memory_limit_bytes

    @property
    def gpu_memory_percent(self) -> float | None:
        if self.gpu_memory_bytes is None or not self.gpu_memory_total_bytes:
            return None
        return 100.0 * self.gpu_memory_bytes / self.gpu_memory_total_bytes


@dataclass(frozen=True)
class DeploymentSample:
    """One sampling round of one deployment: its replicas and its endpoint's figures."""

    time: float  # trio clock
    wall: float  # seconds since the epoch, UTC: the minute it rolls up into
    replicas: tuple[ReplicaSample, ...]
    requests_total: int | None  # None: no endpoint serving
    requests_per_s: float | None
    in_flight: int | None
    latency_count: int | None  # requests in the proxy's latency window
    latency_p50: float | None
    latency_p95: float | None
    latency_mean: float | None = None
    queued: int | None = None  # requests waiting in the endpoint's queue (`proxy.queue`)
    desired: int | None = None  # the replicas its worker wanted this round


@dataclass(frozen=True)
class HostSample:
    time: float
    wall: float
    cpu_percent: float | None  # of the whole host: 100.0 is every CPU busy
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    gpus: tuple[GpuSample, ...]


@dataclass(frozen=True)
class DeploymentLoad:
    """A deployment's load over a window, for the autoscaler. None: not measured.

    Percentages are averages over every replica sample in the window: `cpu_percent` of each
    replica's CPU limit (of one CPU without a limit), `memory_percent` of its memory limit,
    `gpu_*` of its GPUs. `request_duration_*` are in seconds: the mean over the window's
    samples of the endpoint's mean and 95th percentile, each over the proxy's own window
    (`summary = "average"` reads the mean, `"p95"` the percentile). `concurrency`
    is in-flight requests per replica; `requests_per_s` the endpoint's rate; `replicas` the
    replica count of the newest sample, `samples` how many rounds the window holds.
    `scraped` is, for each prometheus metric's query (`str(SeriesSelector)`), the gauge's
    total over the ready replicas now (`daemon.metrics.scrape.Scraper.total`): a query
    no ready replica answered is absent."""

    window_s: float
    samples: int
    replicas: int
    cpu_percent: float | None = None
    memory_percent: float | None = None
    gpu_utilization: float | None = None
    gpu_memory_percent: float | None = None
    request_duration_mean: float | None = None
    request_duration_p95: float | None = None
    concurrency: float | None = None
    requests_per_s: float | None = None
    scraped: Mapping[str, float] = field(default_factory=dict)
