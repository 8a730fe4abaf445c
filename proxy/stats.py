"""Request statistics per endpoint and per replica, cheap to record, computed on read.

Recording costs a few integer operations: counters by status class, an in-flight gauge,
and one increment in a per-second log-scale latency histogram (4 buckets per doubling,
so a percentile is within ~9 % of the true value) plus the second's latency sum (so the
mean is exact). `statistics(window)` sums the per-second histograms and sums of the last
`window` seconds (at most the kept 60); nothing is kept longer than that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

_BUCKETS: Final = 160  # 2 ** (160 / 4) us: far beyond any timeout
_SUB: Final = 4


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Request latency (seconds, from request head to response end) over the window."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None = None  # exact: the window's latency sum over its count


# Upper bounds (seconds) of the cumulative latency histogram exported to Prometheus.
HISTOGRAM_BOUNDS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """Every request since the endpoint started: cumulative counts at HISTOGRAM_BOUNDS.

    A count is taken from the log-scale buckets whose upper edge is within the bound, so a
    bound may count a request up to ~19 % above it (one bucket) as below it.
    """

    buckets: tuple[tuple[float, int], ...]  # (upper bound in seconds, requests at or below)
    count: int
    sum: float  # seconds


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """Responses by status class since the endpoint started (proxy-made answers included)."""

    s2xx: int = 0
    s3xx: int = 0
    s4xx: int = 0
    s5xx: int = 0
    other: int = 0  # 1xx final (101 tunnels)


@dataclass(frozen=True, slots=True)
class ReplicaStatistics:
    replica_id: str
    in_flight: int
    requests_total: int
    status: StatusCounts
    latency: LatencySummary
    histogram: LatencyHistogram | None = None


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    name: str
    in_flight: int
    requests_total: int
    status: StatusCounts
    latency: LatencySummary
    window: float
    replicas: tuple[ReplicaStatistics, ...]
    histogram: LatencyHistogram | None = None
    # A protected endpoint (`proxy.auth`): requests let through per credential id, and the
    # requests refused with 401. None: the endpoint is open.
    by_credential: tuple[tuple[str, int], ...] | None = None
    unauthorized: int = 0
    # Admission (`proxy.queue`): requests queued now, ever, and how long those that left
    # the queue over the window waited; replicas out of rotation by passive health.
    queued: int = 0
    queued_total: int = 0
    queue_time: LatencySummary = LatencySummary(0, None, None, None)
    ejected: tuple[str, ...] = ()
    # gRPC calls finished, by status name ("OK", "NOT_FOUND"; `proxy.h2.grpc_status`).
    grpc_status: tuple[tuple[str, int], ...] = ()


class LatencyWindow:
    """Per-second latency histograms in a ring covering `window` seconds."""

    __slots__ = ("_window", "_seconds", "_hists", "_sums", "_totals", "_sum")

    def __init__(self, window: float = 60.0) -> None:
        self._window = int(math.ceil(window))
        self._seconds = [-1] * self._window
        self._hists = [[0] * _BUCKETS for _ in range(self._window)]
        self._sums = [0.0] * self._window  # each second's latency sum, seconds
        self._totals = [0] * _BUCKETS  # since start, for the Prometheus histogram
        self._sum = 0.0

    def record(self, now: float, latency: float) -> None:
        second = int(now)
        slot = second % self._window
        hist = self._hists[slot]
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            for i in range(_BUCKETS):
                hist[i] = 0
            self._sums[slot] = 0.0
        us = latency * 1e6
        b = int(math.log2(us) * _SUB) if us > 1.0 else 0
        b = b if b < _BUCKETS else _BUCKETS - 1
        hist[b] += 1
        self._sums[slot] += latency
        self._totals[b] += 1
        self._sum += latency

    def histogram(self) -> LatencyHistogram:
        """Since start, cumulative at HISTOGRAM_BOUNDS (computed on read)."""
        totals = self._totals
        buckets = []
        running = 0
        i = 0
        for bound in HISTOGRAM_BOUNDS:
            # bucket i holds latencies below 2 ** ((i + 1) / _SUB) microseconds
            while i < _BUCKETS and 2 ** ((i + 1) / _SUB) <= bound * 1e6:
                running += totals[i]
                i += 1
            buckets.append((bound, running))
        return LatencyHistogram(tuple(buckets), sum(totals), self._sum)

    def summary(self, now: float, window: float | None = None) -> LatencySummary:
        """Over the last `window` seconds (the current one included), at most the ring's."""
        second = int(now)
        span = self._window if window is None else min(self._window, math.ceil(window))
        total = [0] * _BUCKETS
        seconds = 0.0
        for slot, s in enumerate(self._seconds):
            if s >= 0 and second - s < span:
                seconds += self._sums[slot]
                for i, c in enumerate(self._hists[slot]):
                    total[i] += c
        count = sum(total)
        if count == 0:
            return LatencySummary(0, None, None, None)
        return LatencySummary(
            count,
            _quantile(total, count, 0.5),
            _quantile(total, count, 0.95),
            _quantile(total, count, 0.99),
            seconds / count,
        )


def _quantile(hist: list[int], count: int, q: float) -> float:
    rank = q * count
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= rank and c:
            # the bucket's geometric middle, in seconds
            return float(2 ** ((i + 0.5) / _SUB) / 1e6)
    return float(2 ** ((len(hist) - 0.5) / _SUB) / 1e6)


class Counters:
    """What one replica (or the whole endpoint) has served."""

    __slots__ = ("in_flight", "total", "by_class", "latency")

    def __init__(self, window: float) -> None:
        self.in_flight = 0
        self.total = 0
        self.by_class = [0] * 6  # index: status // 100
        self.latency = LatencyWindow(window)

    def finish(self, status: int, now: float, latency: float) -> None:
        self.total += 1
        cls = status // 100
        self.by_class[cls if 0 < cls < 6 else 0] += 1
        self.latency.record(now, latency)

    def status_counts(self) -> StatusCounts:
        c = self.by_class
        return StatusCounts(c[2], c[3], c[4], c[5], c[1] + c[0])
