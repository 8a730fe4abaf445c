"""Per-model statistics of the gateway: requests by status class, time to first byte, in flight.

Recorded by plain counters as each request ends (`proxy.stats`' pieces), summarised on
read. TTFT is the time from the request read whole (its body included) to the first byte
of its response sent to the client: queue time and a cold start's wait are in it, which
is what a client waits for its first token. It is recorded for 2xx responses only (the
proxy's own refusals and errors are answered at once, and would pull it down). The queue
time itself is the endpoint's (`Endpoint.statistics().queue_time`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from proxy.balancer import STATS_WINDOW_S
from proxy.stats import Counters, LatencyHistogram, LatencySummary, LatencyWindow, StatusCounts


@dataclass(frozen=True, slots=True)
class ModelStats:
    """One model (by its canonical name) as the gateway served it."""

    model: str  # the canonical name
    deployment: str
    in_flight: int  # requests routed to it and not finished (queued ones included)
    requests_total: int  # since the gateway started
    status: StatusCounts  # by class, since start (the proxy's own answers included)
    ttft: LatencySummary  # time to first byte of 2xx responses over `window` seconds
    latency: LatencySummary  # request read -> response end, over `window`
    window: float
    last_request_at: float | None  # trio time the last request for it ended; None: none
    ttft_histogram: LatencyHistogram | None = None  # since start, when asked for


class ModelCounters:
    """What one model has served through the gateway."""

    __slots__ = ("deployment", "counters", "ttft", "last_request_at")

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.counters = Counters(STATS_WINDOW_S)
        self.ttft = LatencyWindow(STATS_WINDOW_S)
        self.last_request_at: float | None = None

    def began(self) -> None:
        self.counters.in_flight += 1

    def finished(self, status: int, start: float, first_byte_at: float | None) -> None:
        now = trio.current_time()
        c = self.counters
        c.in_flight -= 1
        c.finish(status, now, now - start)
        if first_byte_at is not None and 200 <= status < 300:
            self.ttft.record(now, max(0.0, first_byte_at - start))
        self.last_request_at = now

    def summary(self, model: str, window: float, *, histogram: bool) -> ModelStats:
        now = trio.current_time()
        c = self.counters
        return ModelStats(
            model=model,
            deployment=self.deployment,
            in_flight=c.in_flight,
            requests_total=c.total,
            status=c.status_counts(),
            ttft=self.ttft.summary(now, window),
            latency=c.latency.summary(now, window),
            window=window,
            last_request_at=self.last_request_at,
            ttft_histogram=self.ttft.histogram() if histogram else None,
        )


def clamp_window(window: float) -> float:
    """Whole seconds, at most what is kept (as `Endpoint.statistics`)."""
    if not window > 0:
        raise ValueError(f"window must be positive, got {window}")
    return min(float(math.ceil(window)), STATS_WINDOW_S)
