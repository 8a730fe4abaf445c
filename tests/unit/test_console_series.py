"""The console's chart data (daemon/console/series.py): rollup rows in, uPlot columns out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daemon.console.series import CHART_IDS, WINDOWS, WindowError, grid, shape, window_named

NOW = datetime(2026, 12, 1, 18, 30, 25, tzinfo=UTC)


def minute(delta_min: int) -> str:
    t = NOW.replace(second=0) - timedelta(minutes=delta_min)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def row(delta_min: int, replica: str = "", **figures: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"deployment": "web", "replica": replica, "minute": minute(delta_min),
                            "samples": 12}  # fmt: skip
    return {**base, **figures}


def test_grid_is_fixed_by_window_and_clock() -> None:
    g = grid(WINDOWS["1h"], NOW)
    assert len(g) == 60
    assert g[-1] == int(NOW.replace(second=0).timestamp())
    assert all(b - a == 60 for a, b in zip(g, g[1:], strict=False))
    d = grid(WINDOWS["1d"], NOW)
    assert len(d) == 288
    assert d[-1] % 300 == 0 and d[-1] <= NOW.timestamp() < d[-1] + 300


def test_values_land_in_their_minute_with_nulls_for_gaps() -> None:
    rows = [row(1, requests_per_s=2.5, latency_p50=0.01, latency_p95=0.25),
            row(3, requests_per_s=4.0, latency_p50=None, latency_p95=0.5)]  # fmt: skip
    out = shape(rows, WINDOWS["1h"], NOW)
    req = out["charts"]["requests"]
    times, values = req["data"]
    assert len(times) == len(values) == 60
    assert values[-2] == 2.5 and values[-4] == 4.0
    assert values[-1] is None and values[-3] is None and values[0] is None
    assert req["points"] == 2
    lat = out["charts"]["latency"]
    assert lat["labels"] == ["p50", "p95"] and lat["unit"] == "ms"
    assert lat["data"][1][-2] == 10.0 and lat["data"][2][-2] == 250.0  # seconds -> ms
    assert lat["data"][1][-4] is None and lat["data"][2][-4] == 500.0
    assert lat["points"] == 2  # p95 alone counts


def test_every_chart_is_present_even_without_data() -> None:
    out = shape([], WINDOWS["1h"], NOW)
    assert tuple(out["charts"]) == CHART_IDS
    for chart in out["charts"].values():
        assert chart["points"] == 0
        assert len(chart["data"]) == 1 + len(chart["labels"])
        assert all(v is None for col in chart["data"][1:] for v in col)
    assert out["end"] - out["start"] == 3600


def test_day_window_averages_the_measured_minutes_of_each_bucket() -> None:
    # NOW is 18:30:25: the 5-minute bucket 18:25 holds minutes 18:25..18:29 (1..5 ago).
    rows = [row(1, cpu_percent=10.0), row(2, cpu_percent=30.0), row(3, cpu_percent=None),
            row(6, cpu_percent=50.0)]  # fmt: skip
    out = shape(rows, WINDOWS["1d"], NOW)
    times, cpu = out["charts"]["cpu"]["data"]
    assert len(times) == 288
    assert cpu[-1] is None  # the bucket 18:30 has no finished minute yet
    assert cpu[-2] == 20.0  # (10 + 30) / 2: the unmeasured minute is not a zero
    assert cpu[-3] == 50.0


def test_replica_count_is_the_replica_rows_of_each_minute() -> None:
    rows = [row(2), row(2, "web-a"), row(1), row(1, "web-a"), row(1, "web-b")]
    out = shape(rows, WINDOWS["1h"], NOW)
    replicas, desired = out["charts"]["replicas"]["data"][1:]
    assert replicas[-3] == 1.0 and replicas[-2] == 2.0 and replicas[-1] is None
    assert all(v is None for v in desired)  # not in these rollups: a gap, not a zero
    rows.append(row(1, desired_replicas=3))
    assert shape(rows, WINDOWS["1h"], NOW)["charts"]["replicas"]["data"][2][-2] == 3.0


def test_rows_outside_the_grid_and_bad_values_are_ignored() -> None:
    rows = [row(61, requests_per_s=9.0), row(-5, requests_per_s=9.0),
            {"replica": "", "minute": "not a time", "requests_per_s": 1.0},
            row(1, requests_per_s=float("nan")), row(2, requests_per_s="7"),
            row(3, requests_per_s=True)]  # fmt: skip
    out = shape(rows, WINDOWS["1h"], NOW)
    assert out["charts"]["requests"]["points"] == 0


def test_values_are_rounded_to_six_significant_digits() -> None:
    out = shape([row(1, memory_bytes=123456789.0)], WINDOWS["1h"], NOW)
    assert out["charts"]["memory"]["data"][1][-2] == 123457000.0


def test_window_named() -> None:
    assert window_named(None) is WINDOWS["1h"]
    assert window_named("1d") is WINDOWS["1d"]
    with pytest.raises(WindowError, match=r"window: must be one of 1h, 1d \(got '1w'\)"):
        window_named("1w")
