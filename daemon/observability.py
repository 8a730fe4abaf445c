"""What berthd tells the outside about itself: metric samples and the Prometheus snapshot.

Glue between the daemon's parts (workers, endpoints, the GPU ledger) and the two observers
that read them on their own schedule: the `MetricsSampler` (every few seconds; `berth
metrics`, the autoscaler) and the Prometheus `/metrics` endpoint (at every scrape). Both
only read in-memory state here, so a scrape never touches Podman or SQLite.
"""

from __future__ import annotations

from functools import partial

from config.spec import MetricName
from daemon import __version__
from daemon.api.control_plane import ControlPlane
from daemon.metrics.exposition import (
    DeploymentMetrics,
    MetricsSnapshot,
    ReplicaMetrics,
)
from daemon.metrics.model import ReplicaTarget
from daemon.metrics.rollups import StoreRollups
from daemon.metrics.sampler import MetricsSampler
from daemon.scaling.driver import autoscaled
from proxy.stats import EndpointStatistics

# Seconds between samples: short, so the autoscaler sees a load step within a couple of
# seconds (its window is daemon.scaling.driver.LOAD_WINDOW).
SAMPLE_INTERVAL = 2.0
# Seconds between container stats of replicas whose CPU and memory no autoscaler reads (for
# `berth metrics` and the per-minute rollups): one stats call for 20 containers costs the
# Podman service 15-30 ms of CPU (docs/benchmarks.md), 1 % of a core every 2 s for figures
# nobody acts on; 0.15 % every 15 s, four samples a minute.
STATS_INTERVAL = 15.0
# Autoscaler metrics read from container stats: their replicas are measured every sample.
STATS_METRICS = frozenset({MetricName.CPU, MetricName.MEMORY})
# The proxy's latency percentiles over this many seconds: recent enough to show a load step.
LATENCY_WINDOW = 10.0


def replica_targets(daemon: ControlPlane) -> list[ReplicaTarget]:
    """The replicas to sample now: every one that has a container that may run."""
    out = []
    for name, worker in daemon.workers.items():
        spec = worker.active_spec()
        cpus = spec.resources.cpus if spec else None
        fast = (
            spec is not None
            and autoscaled(spec)
            and any(m.metric in STATS_METRICS for m in spec.autoscale.metrics)
        )
        for r in worker.snapshot().replicas:
            if r.state != "stopped" and r.state != "crashloop":
                out.append(ReplicaTarget(name, r.id, r.container_id, r.gpus, cpus, fast))
    return out


def metrics_sampler(daemon: ControlPlane) -> MetricsSampler:
    def statistics(name: str) -> EndpointStatistics | None:
        endpoint = daemon.endpoints.get(name)
        return endpoint.statistics(window=LATENCY_WINDOW) if endpoint else None

    return MetricsSampler(
        daemon.runtime,
        partial(replica_targets, daemon),
        statistics,
        gpus=daemon.gpus.reader.sample,
        rollups=StoreRollups(daemon.store),
        deployments=lambda: list(daemon.workers),
        interval=SAMPLE_INTERVAL,
        stats_interval=STATS_INTERVAL,
    )


async def metrics_snapshot(daemon: ControlPlane) -> MetricsSnapshot:
    deployments = []
    for name, worker in sorted(daemon.workers.items()):
        snap = worker.snapshot()
        endpoint = daemon.endpoints.get(name)
        deployments.append(
            DeploymentMetrics(
                name=name,
                desired=snap.desired,
                ready=snap.ready,
                replicas=tuple(ReplicaMetrics(r.id, r.state, r.restarts) for r in snap.replicas),
                endpoint=endpoint.statistics(histogram=True) if endpoint else None,
                scale_ups=worker.scale_ups,
                scale_downs=worker.scale_downs,
            )
        )
    samples = await daemon.gpus.reader.sample()
    return MetricsSnapshot(__version__, tuple(deployments), tuple(samples))
