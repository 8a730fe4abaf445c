"""`[replicas]` and `[autoscale]`: how many replicas, and what moves the number.

`count = N` is shorthand for `min = max = N` and excludes both. With only `min`, `max`
defaults to `max(min, 1)` (a fixed count); with only `max`, `min` defaults to 1.
`scale_to_zero_after` (a TTL from the last request) is only for `min = 0`.
"""

from __future__ import annotations

import re

from config.parse_metrics import as_selector
from config.reader import Converter, Reader, as_duration, as_enum, as_int, as_number
from config.spec import (
    Autoscale,
    AutoscaleMetric,
    MetricName,
    Replicas,
    Resources,
    SeriesSelector,
    Summary,
)

MAX_REPLICAS = 100
MAX_SCALE_DOWN_DELAY = 86400.0
MAX_SCALE_TO_ZERO_AFTER = 30 * 86400.0
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_PERCENT_METRICS = frozenset(
    {MetricName.CPU, MetricName.MEMORY, MetricName.GPU_UTILIZATION, MetricName.GPU_MEMORY}
)
_GPU_METRICS = frozenset({MetricName.GPU_UTILIZATION, MetricName.GPU_MEMORY})


def read_replicas(r: Reader | None) -> Replicas:
    if r is None:
        return Replicas()
    count = r.optional("count", as_int(1, MAX_REPLICAS))
    lo = r.optional("min", as_int(0, MAX_REPLICAS))
    hi = r.optional("max", as_int(1, MAX_REPLICAS))
    ttl = r.optional("scale_to_zero_after", as_duration(hi=MAX_SCALE_TO_ZERO_AFTER, above=0))
    r.close()
    replicas = _min_max(r, count, lo, hi)
    if ttl is None or not r.ok("count", "min", "max"):
        return replicas
    if replicas.min != 0:
        r.problem(
            "scale_to_zero_after",
            f"only with replicas.min = 0 (min is {replicas.min}): it scales to zero",
        )
        return replicas
    return Replicas(min=replicas.min, max=replicas.max, scale_to_zero_after=ttl)


def _min_max(r: Reader, count: int | None, lo: int | None, hi: int | None) -> Replicas:
    if r.has("count"):
        if r.has("min") or r.has("max"):
            r.problem(
                "count",
                "cannot be combined with replicas.min or replicas.max "
                "(count = N means min = max = N)",
            )
        n = count if count is not None else 1
        return Replicas(min=n, max=n)
    if lo is None and hi is None:
        return Replicas()
    if hi is None:
        hi = max(lo or 0, 1)
    if lo is None:
        lo = min(1, hi)
    if r.ok("min", "max") and hi < lo:
        r.problem("max", f"must be >= replicas.min ({hi} < {lo})")
    return Replicas(min=lo, max=hi)


def read_autoscale(r: Reader | None, resources: Resources, *, scraped: bool = False) -> Autoscale:
    """`scraped`: the spec has a `[[metrics.scrape]]` entry (a prometheus metric needs one)."""
    if r is None:
        return Autoscale()
    delay = r.get("scale_down_delay", as_duration(0, MAX_SCALE_DOWN_DELAY), 300.0)
    metrics: list[AutoscaleMetric] = []
    seen: dict[tuple[MetricName, Summary, SeriesSelector | None], str] = {}
    for m in r.tables("metrics"):
        metric = _read_metric(m, resources, scraped)
        if metric is None:
            continue
        key = (metric.metric, metric.summary, metric.query)
        if key in seen:
            same = "query" if metric.query is not None else "summary"
            m.problem("metric", f"same metric and {same} as {seen[key]}", metric.metric.value)
            continue
        seen[key] = m.path
        metrics.append(metric)
    r.close()
    return Autoscale(metrics=tuple(metrics), scale_down_delay=delay)


def _read_metric(m: Reader, resources: Resources, scraped: bool) -> AutoscaleMetric | None:
    metric = m.required("metric", as_enum({x.value: x for x in MetricName}))
    summary = m.get("summary", as_enum({x.value: x for x in Summary}), Summary.AVERAGE)
    target = m.required("target", _target_converter(metric))
    query = m.optional("query", as_selector)
    m.close()
    if metric is None:
        return None
    if metric is MetricName.PROMETHEUS:
        if not m.has("query"):
            m.problem("query", 'required for metric = "prometheus"')
        elif query is not None and not scraped:
            m.problem(
                "query",
                "no [[metrics.scrape]] entry: a prometheus metric reads the series berthd "
                "scrapes from the replicas",
            )
    elif m.has("query"):
        m.problem("query", 'only for metric = "prometheus"')
    if summary is Summary.P95 and metric is not MetricName.REQUEST_DURATION:
        m.problem("summary", "p95 is only for request_duration", summary.value)
    if metric in _GPU_METRICS and resources.gpus == 0 and resources.gpu_memory is None:
        m.problem("metric", "needs resources.gpus or resources.gpu_memory", metric.value)
    if metric is MetricName.MEMORY and resources.memory is None:
        m.problem("metric", "needs resources.memory (the target is a percentage of it)")
    if target is None or not m.ok("query"):
        return None
    return AutoscaleMetric(metric=metric, summary=summary, target=target, query=query)


def _target_converter(metric: MetricName | None) -> Converter[float]:
    if metric is None:
        return _any_target
    if metric in _PERCENT_METRICS:
        return _as_percent
    if metric is MetricName.REQUEST_DURATION:
        return as_duration(above=0)
    # concurrency: in-flight requests per replica; prometheus: the gauge's value per replica
    return as_number(above=0)


def _any_target(raw: object) -> float:
    # The metric itself is wrong or missing; that is the problem to report, not the target.
    return 0.0


def _as_percent(raw: object) -> float:
    value: float | None = None
    if isinstance(raw, str):
        m = _PERCENT.fullmatch(raw.strip())
        value = float(m.group(1)) if m else None
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    if value is None or not 1 <= value <= 100:
        raise ValueError('must be a percentage between 1 and 100, such as "70%" or 70')
    return value
