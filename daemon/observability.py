"""What berthd tells the outside about itself: metric samples and the Prometheus snapshot.

Glue between the daemon's parts (workers, endpoints, the GPU ledger) and the two observers
that read them on their own schedule: the `MetricsSampler` (every few seconds; `berth
metrics`, the autoscaler) and the Prometheus `/metrics` endpoint (at every scrape). Both
only read in-memory state here, so a scrape never touches Podman or SQLite.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from config.spec import DeploymentSpec, MetricName, SeriesSelector
from daemon import __version__
from daemon.api.control_plane import ControlPlane
from daemon.metrics.exposition import (
    DeploymentMetrics,
    MetricsSnapshot,
    ReplicaMetrics,
)
from daemon.metrics.gateway_families import GatewayModelMetrics
from daemon.metrics.model import DeploymentLoad, ReplicaTarget
from daemon.metrics.rollups import StoreRollups
from daemon.metrics.sampler import MetricsSampler
from daemon.metrics.scrape import Scraper, ScrapeTarget
from daemon.scaling.driver import autoscaled
from proxy.stats import EndpointStatistics

# Seconds between samples: short, so the autoscaler sees a load step within a couple of
# seconds (its window is daemon.scaling.driver.LOAD_WINDOW).
SAMPLE_INTERVAL = 2.0
# ... and while no deployment is autoscaled, every 10 s: `berth metrics` and the per-minute
# rollups need no more, and each round wakes berthd and a thread (host, GPUs).
IDLE_SAMPLE_INTERVAL = 10.0
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


def scrape_targets(daemon: ControlPlane) -> list[ScrapeTarget]:
    """What to scrape now: each ready replica once per `[[metrics.scrape]]` entry of its
    deployment's active spec, where its container port is published."""
    out = []
    for name, worker in daemon.workers.items():
        spec = worker.active_spec()
        if spec is None or not spec.metrics.scrape:
            continue
        ports = worker.replica_ports()
        for r in worker.snapshot().replicas:
            if r.state != "ready":
                continue
            for entry, scrape in enumerate(spec.metrics.scrape):
                host_port = ports.get(r.id, {}).get(scrape.port)
                if host_port is not None:
                    out.append(ScrapeTarget(name, r.id, r.container_id, entry, scrape, host_port))
    return out


def queries(spec: DeploymentSpec | None) -> list[SeriesSelector]:
    """The scraped gauges the spec names: its prometheus metrics' queries."""
    if spec is None:
        return []
    return [
        m.query
        for m in spec.autoscale.metrics
        if m.metric is MetricName.PROMETHEUS and m.query is not None
    ]


def autoscaler_load(
    daemon: ControlPlane, scraper: Scraper, name: str, window_s: float
) -> DeploymentLoad:
    """The sampler's load of `name`, with its prometheus metrics' totals from the scraper."""
    load = daemon.metrics.deployment_load(name, window_s)
    worker = daemon.workers.get(name)
    wanted = queries(worker.active_spec() if worker else None)
    if not wanted:
        return load
    totals = {str(q): t for q in wanted if (t := scraper.total(name, q)) is not None}
    return dataclasses.replace(load, scraped=totals)


def scraped_json(daemon: ControlPlane, scraper: Scraper, name: str) -> dict[str, Any]:
    """The admin API's `scraped` object for `berth metrics NAME`."""
    worker = daemon.workers.get(name)
    return scraper.deployment_json(name, queries(worker.active_spec() if worker else None))


def any_autoscaled(daemon: ControlPlane) -> bool:
    """Whether an autoscaler reads the samples now (the sampler's fast rounds)."""
    return any(
        (spec := worker.active_spec()) is not None and autoscaled(spec)
        for worker in daemon.workers.values()
    )


def desired_replicas(daemon: ControlPlane, name: str) -> int | None:
    """The replica count `name`'s worker wants now (the console's replicas chart)."""
    worker = daemon.workers.get(name)
    return worker.snapshot().desired if worker else None


def metrics_sampler(daemon: ControlPlane, scraper: Scraper | None = None) -> MetricsSampler:
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
        idle_interval=IDLE_SAMPLE_INTERVAL,
        fast=partial(any_autoscaled, daemon),
        stats_interval=STATS_INTERVAL,
        scraped=None if scraper is None else partial(scraped_json, daemon, scraper),
        desired=partial(desired_replicas, daemon),
    )


async def metrics_snapshot(daemon: ControlPlane, scraper: Scraper | None = None) -> MetricsSnapshot:
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
    gateway = daemon.gateway.gateway
    return MetricsSnapshot(
        __version__,
        tuple(deployments),
        tuple(samples),
        scraped=tuple(scraper.exported()) if scraper else (),
        scrapes=tuple(scraper.target_states()) if scraper else (),
        gateway=gateway_metrics(daemon, {d.name: d.endpoint for d in deployments}),
        gateway_refused=tuple(gateway.refused().items()) if gateway else (),
    )


def gateway_metrics(
    daemon: ControlPlane, endpoints: dict[str, EndpointStatistics | None]
) -> tuple[GatewayModelMetrics, ...]:
    """Per model of the gateway: its statistics there, its endpoint's queue time (`endpoints`:
    the snapshot's endpoint statistics by deployment) and its swap and cold-start counts."""
    manager = daemon.gateway
    stats = manager.gateway.statistics() if manager.gateway is not None else {}
    out = []
    for deployment, section in sorted(manager.known.items()):
        model = section.models[0]
        served, endpoint = stats.get(model), endpoints.get(deployment)
        counts = manager.counts.get(deployment)
        extra: dict[str, Any] = {}
        if served is not None:
            extra.update(status=served.status, ttft=served.ttft)
        if endpoint is not None:
            extra["queue_time"] = endpoint.queue_time
        if counts is not None:
            extra.update(swaps=counts.swaps, cold_starts=counts.cold_starts)
        out.append(GatewayModelMetrics(model, deployment, manager.loaded(deployment), **extra))
    return tuple(out)
