"""The console's chart data: a deployment's per-minute rollups shaped as uPlot's columns.

uPlot draws aligned columns: `[[t0, t1, ...], [a0, a1, ...], [b0, b1, ...]]`, timestamps in
Unix seconds, `null` where a value is missing. `shape` turns the rows the sampler rolled up
(`daemon.metrics.windows`; `Store.metric_rollups` rows as dicts, the shape `GET
/v1/deployments/NAME/metrics` answers in `series`) into one such block per chart, over a
fixed grid.

Invariants:
- The grid is fixed by the window and the clock alone: `window.seconds // window.step`
  buckets, the last one the bucket `now` falls in, each labelled by its start. Data does not
  move the grid, so two fetches a minute apart differ by one bucket.
- A bucket's value is the mean of the minutes measured in it; a bucket with none is `None`
  (a gap in the line), never 0. Rows outside the grid are ignored.
- The replica count of a minute is the number of replica rows rolled up for it (a replica
  that had any sample in that minute); `desired_replicas` and `queued` are read when the
  rollups carry them, else those series are all gaps.
- Pure: no I/O, no clock of its own (`now` is given).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    step: int  # seconds per point

    @property
    def buckets(self) -> int:
        return self.seconds // self.step


WINDOWS: dict[str, Window] = {
    "1h": Window("1h", 3600, 60),
    "1d": Window("1d", 86400, 300),
}
DEFAULT_WINDOW = "1h"


@dataclass(frozen=True)
class Chart:
    """One chart: its id (the page's `data-testid="chart-{id}"`), title, unit and lines,
    each (label, rollup field); `scale` multiplies every value (seconds -> ms)."""

    id: str
    title: str
    unit: str
    lines: tuple[tuple[str, str], ...]
    scale: float = 1.0


CHARTS: tuple[Chart, ...] = (
    Chart("requests", "Requests/s", "req/s", (("requests/s", "requests_per_s"),)),
    Chart(
        "latency", "Latency", "ms", (("p50", "latency_p50"), ("p95", "latency_p95")), scale=1000.0
    ),
    Chart(
        "load",
        "In flight and queued",
        "requests",
        (("in flight", "in_flight"), ("queued", "queued")),
    ),
    Chart("cpu", "CPU", "%", (("cpu", "cpu_percent"),)),
    Chart("memory", "Memory", "bytes", (("used", "memory_bytes"), ("limit", "memory_limit_bytes"))),
    Chart("gpu", "GPU utilisation", "%", (("utilisation", "gpu_utilization"),)),
    Chart(
        "gpu_memory",
        "GPU memory",
        "bytes",
        (("used", "gpu_memory_bytes"), ("total", "gpu_memory_total_bytes")),
    ),
    Chart(
        "replicas",
        "Replicas",
        "replicas",
        (("replicas", "replicas"), ("desired", "desired_replicas")),
    ),
)
CHART_IDS = tuple(c.id for c in CHARTS)


class WindowError(ValueError):
    pass


def window_named(name: str | None) -> Window:
    """The window a `?window=` asks for (default 1h); WindowError names the choices."""
    key = name or DEFAULT_WINDOW
    if key not in WINDOWS:
        raise WindowError(f"window: must be one of {', '.join(WINDOWS)} (got {key!r})")
    return WINDOWS[key]


def grid(window: Window, now: datetime) -> list[int]:
    """The buckets' starts (Unix seconds), oldest first; the last holds `now`."""
    last = math.floor(now.timestamp() / window.step) * window.step
    first = last - (window.buckets - 1) * window.step
    return list(range(first, last + 1, window.step))


def minute_rows(rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, float | None]]:
    """Each minute's deployment figures (the `replica == ""` row) with `replicas`: how many
    replica rows that minute has. Keyed by the minute's Unix second."""
    out: dict[int, dict[str, float | None]] = {}
    counts: dict[int, int] = {}
    epochs: dict[object, int | None] = {}  # a minute's replica rows repeat its text: parse once
    for row in rows:
        minute = row.get("minute")
        t = epochs[minute] if minute in epochs else epochs.setdefault(minute, _epoch(minute))
        if t is None:
            continue
        if row.get("replica"):
            counts[t] = counts.get(t, 0) + 1
            out.setdefault(t, {})
        else:
            figures = out.setdefault(t, {})
            figures.update({f: _number(row.get(f)) for f in _FIELDS})
    for t, figures in out.items():
        figures["replicas"] = float(counts.get(t, 0))
    return out


def shape(rows: Iterable[Mapping[str, Any]], window: Window, now: datetime) -> dict[str, Any]:
    """The series JSON for one deployment: the grid, and per chart its labels, unit and
    uPlot columns, with `points`: how many buckets have a value in any of its lines."""
    times = grid(window, now)
    index = {t: i for i, t in enumerate(times)}
    sums: dict[str, list[float]] = {}
    counts: dict[str, list[int]] = {}
    fields = {f for c in CHARTS for _, f in c.lines}
    for minute, figures in minute_rows(rows).items():
        i = index.get(minute - minute % window.step)
        if i is None:
            continue
        for f in fields:
            v = figures.get(f)
            if v is None:
                continue
            sums.setdefault(f, [0.0] * len(times))[i] += v
            counts.setdefault(f, [0] * len(times))[i] += 1

    def column(f: str, scale: float) -> list[float | None]:
        s, n = sums.get(f), counts.get(f)
        if s is None or n is None:
            return [None] * len(times)
        return [_round(s[i] / n[i] * scale) if n[i] else None for i in range(len(times))]

    charts: dict[str, Any] = {}
    for chart in CHARTS:
        columns = [column(f, chart.scale) for _, f in chart.lines]
        charts[chart.id] = {
            "title": chart.title,
            "unit": chart.unit,
            "labels": [label for label, _ in chart.lines],
            "data": [times, *columns],
            "points": sum(any(c[i] is not None for c in columns) for i in range(len(times))),
        }
    return {
        "window": window.name,
        "step": window.step,
        "start": times[0],
        "end": times[-1] + window.step,
        "charts": charts,
    }


_FIELDS = tuple(dict.fromkeys(f for c in CHARTS for _, f in c.lines if f != "replicas"))


def _epoch(minute: object) -> int | None:
    if not isinstance(minute, str):
        return None
    try:
        return int(datetime.fromisoformat(minute).timestamp())
    except ValueError:
        return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _round(value: float) -> float:
    """Six significant digits: the charts need no more, the JSON is a third the size."""
    return float(f"{value:.6g}")
