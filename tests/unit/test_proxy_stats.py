"""Latency windows: per-second histograms summed over the last `window` seconds."""

from __future__ import annotations

import pytest

from proxy.stats import Counters, LatencyWindow


def test_a_shorter_window_counts_only_the_latest_seconds() -> None:
    w = LatencyWindow(60.0)
    for t in (100.2, 100.7, 105.0, 112.5):
        w.record(t, 0.010)
    assert w.summary(112.9).count == 4
    assert w.summary(112.9, window=10.0).count == 2  # seconds 103..112
    assert w.summary(112.9, window=1.0).count == 1  # the current second only
    assert w.summary(112.9, window=0.5).count == 1  # whole seconds: rounds up
    assert w.summary(112.9, window=600.0).count == 4  # no more than is kept


def test_the_mean_is_exact_and_covers_the_window() -> None:
    w = LatencyWindow(60.0)
    assert w.summary(100.0).mean is None
    w.record(100.1, 0.010)
    w.record(100.2, 0.030)
    w.record(105.0, 1.100)  # a percentile would hide it; the mean must not
    assert w.summary(105.5).mean == pytest.approx(1.14 / 3)
    assert w.summary(105.5, window=1.0).mean == pytest.approx(1.1)  # the current second only
    w.record(160.0, 0.002)  # second 100's slot is reused: its sum starts again
    assert w.summary(160.5).mean == pytest.approx((1.1 + 0.002) / 2)


def test_the_default_window_drops_what_is_older() -> None:
    w = LatencyWindow(60.0)
    w.record(100.0, 0.010)
    w.record(150.0, 0.020)
    assert w.summary(159.5).count == 2
    assert w.summary(160.5).count == 1  # second 100 has left the 60 s window


def test_percentiles_within_the_bucket_precision() -> None:
    w = LatencyWindow(60.0)
    for i in range(100):
        w.record(10.0, 0.001 * (i + 1))  # 1 ms .. 100 ms
    s = w.summary(10.0, window=10.0)
    assert s.count == 100
    assert s.p50 == pytest.approx(0.050, rel=0.1)
    assert s.p99 == pytest.approx(0.099, rel=0.1)


def test_counters_by_status_class() -> None:
    c = Counters(60.0)
    for status in (200, 204, 301, 404, 502, 101, 499):
        c.finish(status, 1.0, 0.001)
    counts = c.status_counts()
    assert (counts.s2xx, counts.s3xx, counts.s4xx, counts.s5xx, counts.other) == (2, 1, 2, 1, 1)


def test_the_cumulative_histogram_counts_every_request_since_start() -> None:
    from proxy.stats import HISTOGRAM_BOUNDS, LatencyWindow

    window = LatencyWindow(60.0)
    for now, latency in [(0.0, 0.003), (1.0, 0.003), (100.0, 0.2), (200.0, 2.0), (300.0, 400.0)]:
        window.record(now, latency)  # far apart: the 60 s window forgets, the histogram not
    hist = window.histogram()
    assert hist.count == 5 and hist.sum == pytest.approx(402.206)
    cumulative = dict(hist.buckets)
    assert list(cumulative) == list(HISTOGRAM_BOUNDS)
    assert cumulative[0.001] == 0 and cumulative[0.0025] == 0
    assert cumulative[0.005] == 2 and cumulative[0.1] == 2
    assert cumulative[0.25] == 3 and cumulative[2.5] == 4 and cumulative[300.0] == 4
    counts = [n for _, n in hist.buckets]
    assert counts == sorted(counts)  # cumulative
