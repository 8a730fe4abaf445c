"""The model gateway's Prometheus families, one series per model (its canonical name).

    berth_gateway_requests_total{model, code}       responses by status class (2xx .. 5xx,
                                                    other), the gateway's own answers in
    berth_gateway_ttft_seconds{model, quantile}     time to first byte of 2xx responses
                                                    over the proxy's window (0.5, 0.95, 0.99)
    berth_gateway_queue_time_seconds{model, quantile}  how long requests waited in its
                                                    deployment's endpoint queue, same window
    berth_gateway_swaps_total{model}                swaps made to start it (its `swap` events)
    berth_gateway_cold_starts_total{model}          `cold-start` events of its deployment
    berth_gateway_model_loaded{model}               1 while it has a ready replica
    berth_gateway_refused_total{code}               what the gateway answered itself, for
                                                    no model (400 no model, 404 unknown,
                                                    413 too large, 401, ...), by status

A quantile the window cannot give (no request in it) is left out, as the endpoints' are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.stats import LatencySummary, StatusCounts

_NONE = LatencySummary(0, None, None, None)


@dataclass(frozen=True)
class GatewayModelMetrics:
    model: str  # the canonical name (the spec's first `[gateway] models` entry)
    deployment: str
    loaded: bool
    status: StatusCounts = StatusCounts()
    ttft: LatencySummary = _NONE
    queue_time: LatencySummary = _NONE
    swaps: int = 0
    cold_starts: int = 0


def gateway_families(
    models: tuple[GatewayModelMetrics, ...], refused: tuple[tuple[int, int], ...] = ()
) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "berth_gateway_requests",
        "Responses of the model gateway, by model and status class",
        labels=["model", "code"],
    )
    ttft = GaugeMetricFamily(
        "berth_gateway_ttft_seconds",
        "Time to first byte of the gateway's 2xx responses, quantiles over the proxy's window",
        labels=["model", "quantile"],
    )
    queue = GaugeMetricFamily(
        "berth_gateway_queue_time_seconds",
        "Time requests waited in the model's endpoint queue, quantiles over the proxy's window",
        labels=["model", "quantile"],
    )
    swaps = CounterMetricFamily(
        "berth_gateway_swaps",
        "Swaps made to start the model (others scaled to zero)",
        labels=["model"],
    )
    cold = CounterMetricFamily(
        "berth_gateway_cold_starts", "Cold starts of the model's deployment", labels=["model"]
    )
    loaded = GaugeMetricFamily(
        "berth_gateway_model_loaded", "1 while the model has a ready replica", labels=["model"]
    )
    for m in models:
        s = m.status
        for code, n in (("2xx", s.s2xx), ("3xx", s.s3xx), ("4xx", s.s4xx), ("5xx", s.s5xx)):
            requests.add_metric([m.model, code], n)
        requests.add_metric([m.model, "other"], s.other)
        for family, summary in ((ttft, m.ttft), (queue, m.queue_time)):
            for q, v in (("0.5", summary.p50), ("0.95", summary.p95), ("0.99", summary.p99)):
                if v is not None:
                    family.add_metric([m.model, q], v)
        swaps.add_metric([m.model], m.swaps)
        cold.add_metric([m.model], m.cold_starts)
        loaded.add_metric([m.model], 1.0 if m.loaded else 0.0)
    if models:
        yield from (requests, ttft, queue, swaps, cold, loaded)
    if refused:
        by_code = CounterMetricFamily(
            "berth_gateway_refused",
            "Requests the gateway answered itself, routed to no model, by status",
            labels=["code"],
        )
        for status, n in refused:
            by_code.add_metric([str(status)], n)
        yield by_code
