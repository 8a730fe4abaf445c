"""Request statistics per endpoint and per replica, cheap to record, computed on read.

Recording costs a few integer operations: counters by status class, an in-flight gauge,
and one increment in a per-second log-scale latency histogram (4 buckets per doubling,
so a percentile is within ~9 % of the true value). `statistics(window)` sums the
per-second histograms of the last `window` seconds (at most the kept 60); nothing is kept
longer than that.
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


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    name: str
    in_flight: int
    requests_total: int
    status: StatusCounts
    latency: LatencySummary
    window: float
    replicas: tuple[ReplicaStatistics, ...]


class LatencyWindow:
    """Per-second latency histograms in a ring covering `window` seconds."""

    __slots__ = ("_window", "_seconds", "_hists")

    def __init__(self, window: float = 60.0) -> None:
        self._window = int(math.ceil(window))
        self._seconds = [-1] * self._window
        self._hists = [[0] * _BUCKETS for _ in range(self._window)]

    def record(self, now: float, latency: float) -> None:
        second = int(now)
        slot = second % self._window
        hist = self._hists[slot]
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            for i in range(_BUCKETS):
                hist[i] = 0
        us = latency * 1e6
        b = int(math.log2(us) * _SUB) if us > 1.0 else 0
        hist[b if b < _BUCKETS else _BUCKETS - 1] += 1

    def summary(self, now: float, window: float | None = None) -> LatencySummary:
        """Over the last `window` seconds (the current one included), at most the ring's."""
        second = int(now)
        span = self._window if window is None else min(self._window, math.ceil(window))
        total = [0] * _BUCKETS
        for slot, s in enumerate(self._seconds):
            if s >= 0 and second - s < span:
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
