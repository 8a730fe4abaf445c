"""How many replicas a deployment wants now: pinned, fixed, or the autoscaler's choice.

The worker asks once a round. The autoscaler (`daemon.scaling.policy`, pure) reads the
deployment's load over a short window from the metrics sampler; its decisions are events
with their inputs (`request_duration avg 310ms > target 200ms: 1 -> 2`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from config.spec import DeploymentSpec, Replicas
from daemon.metrics.model import DeploymentLoad
from daemon.scaling.policy import Autoscaler, Decision, LoadSample
from proxy.stats import EndpointStatistics

# Seconds of samples the autoscaler looks at: just over one sample interval, so it acts on
# the newest load (its own stabilisation window slows the scale-downs, as HPA's does).
LOAD_WINDOW = 3.0
LIVE_LATENCY_WINDOW = 5.0  # seconds of the proxy's latency histograms read at each round
ROUND = 0.5  # an autoscaled deployment's rounds come this often, so a load step is seen soon

LoadSource = Callable[[str, float], DeploymentLoad]


@dataclass
class ScaleState:
    """One deployment's autoscaler and the count it chose last."""

    autoscaler: Autoscaler
    count: int


def autoscaled(spec: DeploymentSpec) -> bool:
    return spec.enabled and not spec.replicas.fixed


def initial_count(spec: DeploymentSpec, running: int) -> int:
    """Where a (re)started autoscaler begins: what runs now, within [min, max]."""
    return min(max(running, spec.replicas.min), spec.replicas.max)


def sample_of(load: DeploymentLoad | None, count: int, waiting: int = 0) -> LoadSample:
    """The autoscaler's sample. A scraped gauge's total over the ready replicas is read per
    replica of `count`, the count being decided: replicas still starting count as zero (as
    Kubernetes' HPA has them on a scale-up), so a queue seen again at the next round, before
    the new replicas serve, asks for the same count and not for more again."""
    scraped = {} if load is None else {q: t / max(count, 1) for q, t in load.scraped.items()}
    if load is None or load.samples == 0:
        return LoadSample(replicas=count, waiting_requests=waiting, scraped=scraped)
    return LoadSample(
        replicas=count,
        cpu=load.cpu_percent,
        memory=load.memory_percent,
        gpu_utilization=load.gpu_utilization,
        gpu_memory=load.gpu_memory_percent,
        request_duration_mean=load.request_duration_mean,
        request_duration_p95=load.request_duration_p95,
        concurrency=load.concurrency,
        requests_per_second=load.requests_per_s,
        waiting_requests=waiting,
        scraped=scraped,
    )


def with_live_requests(
    load: DeploymentLoad | None, live: EndpointStatistics | None, replicas: int
) -> DeploymentLoad | None:
    """The sampler's load, with the request figures read from the endpoint just now.

    The sampler runs every couple of seconds; the proxy's own counters are current. Reading
    them at each round lets a load step reach the autoscaler within one round (0.5 s).
    """
    if live is None:
        return load
    base = load or DeploymentLoad(window_s=0.0, samples=0, replicas=replicas)
    latency = live.latency if live.latency.count else None
    return dataclasses.replace(
        base,
        samples=max(base.samples, 1),
        concurrency=live.in_flight / max(replicas, 1),
        request_duration_mean=latency.mean if latency else base.request_duration_mean,
        request_duration_p95=latency.p95 if latency else base.request_duration_p95,
    )


def scales_to_zero(spec: DeploymentSpec) -> bool:
    return autoscaled(spec) and spec.replicas.min == 0


def bounds(spec: DeploymentSpec, current: int) -> Replicas:
    """The autoscaler's bounds now: the spec's, except that with `scale_to_zero_after` a
    loaded deployment is kept at one replica at least (its TTL alone takes it to zero,
    `daemon.scaling.idle`), while one at zero may stay there."""
    replicas = spec.replicas
    if replicas.scale_to_zero_after is not None and current > 0 and replicas.min == 0:
        return dataclasses.replace(replicas, min=1)
    return replicas


def decide(
    state: ScaleState, load: DeploymentLoad | None, now: float, waiting: int = 0
) -> Decision:
    """One autoscaler step; `waiting`: requests held at the endpoint (scale from zero)."""
    decision = state.autoscaler.observe(now, sample_of(load, state.count, waiting))
    state.count = decision.desired
    return decision
