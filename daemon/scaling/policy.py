"""The autoscaler: a pure policy from load samples to a replica count, with explicit time.

Theory of operation. The worker owns one `Autoscaler` per deployment and, every round,
calls `observe(now, sample)` with the deployment's current replica count and its load; the
answer is a `Decision` (the count to run, and why). Nothing here reads a clock, sleeps or
does I/O: `now` is any monotonic time in seconds (`trio.current_time()` in the daemon).

The math is Kubernetes' HPA; the knobs are Paperspace's:
- Each `[[autoscale.metrics]]` entry proposes `ceil(current * observed / target)`, or
  `current` when `|observed / target - 1| <= TOLERANCE`; the highest proposal wins and the
  result is clamped to `[replicas.min, replicas.max]`.
- A metric missing from the sample (no GPU data yet, no stats, a scrape that failed)
  proposes nothing: unknown is not zero.
- No traffic (no request per second, none in flight, none waiting) is zero load for every
  built-in metric, resource metrics included: an idle model server still holds its memory and
  VRAM, which is not demand, and without this rule a `memory` or `gpu_memory` metric would
  keep an idle deployment above `min` (and `min = 0` out of reach) for ever.
- A `prometheus` metric (a gauge scraped from the replicas) is the server's own word and is
  not overridden by that rule: a queue the endpoint does not see (work a server pulls from a
  broker, requests sent to a replica's port directly) is demand all the same, and a queue
  gauge of requests that came through the endpoint is zero by itself when they stop (they
  are in flight while queued, so the endpoint is not idle). When idle, such a metric can
  only hold the count up: its proposal counts when it is above zero; otherwise the idle
  zero stands. Its observed value is the gauge per replica of the count being decided
  (`daemon.scaling.driver.sample_of`), so a scrape seen again at the next round does not
  raise the count again.
- Scale-up is immediate. Scale-down goes only as low as the highest proposal recorded within
  the last `scale_down_delay` (HPA's stabilisation window), so a load oscillating around the
  target moves the count up once and then holds it, and `min = 0` is reached only after a
  whole window without traffic.
- A request held at the endpoint while no replica runs (`waiting_requests`) asks for one
  replica at once: scale from zero never waits for a window.
- A fresh autoscaler counts the current replica count as proposed at its first sample, so a
  berthd restart (or a spec update) never scales down before a full window has passed.

Pinned counts (`berth scale NAME N`) are the worker's business: it simply does not call
`observe` (or ignores the decision) while a count is pinned.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from config.spec import Autoscale, AutoscaleMetric, MetricName, Replicas, Summary
from config.units import format_duration

TOLERANCE = 0.1


@dataclass(frozen=True)
class LoadSample:
    """The deployment's load right now, as the worker measured it.

    Percentages are of each replica's own limit (`resources.cpus`, `resources.memory`, the
    VRAM of its GPUs), averaged over the replicas; durations are seconds. `None` means not
    measured (no replica reported it), which is different from zero.
    """

    replicas: int  # the count the deployment runs now (the count this decision moves)
    cpu: float | None = None
    memory: float | None = None
    gpu_utilization: float | None = None
    gpu_memory: float | None = None
    request_duration_mean: float | None = None
    request_duration_p95: float | None = None
    concurrency: float | None = None  # requests in flight per replica
    requests_per_second: float | None = None  # None: the endpoint has no figure yet
    waiting_requests: int = 0  # queued at the endpoint (for a slot, or a starting replica)
    # A prometheus metric's query (as `str(SeriesSelector)`) -> the gauge per replica; a
    # query that is absent was not measured (no ready replica answered its scrape).
    scraped: Mapping[str, float] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        """True only when the endpoint saw no request at all (unknown is not idle)."""
        return (
            self.requests_per_second is not None
            and self.requests_per_second <= 0
            and not self.concurrency
            and self.waiting_requests <= 0
        )

    def observed(self, metric: AutoscaleMetric) -> float | None:
        match metric.metric:
            case MetricName.CPU:
                return self.cpu
            case MetricName.MEMORY:
                return self.memory
            case MetricName.GPU_UTILIZATION:
                return self.gpu_utilization
            case MetricName.GPU_MEMORY:
                return self.gpu_memory
            case MetricName.REQUEST_DURATION:
                if metric.summary is Summary.P95:
                    return self.request_duration_p95
                return self.request_duration_mean
            case MetricName.CONCURRENCY:
                return self.concurrency
            case MetricName.PROMETHEUS:
                return None if metric.query is None else self.scraped.get(str(metric.query))
            case MetricName.QUEUE:
                # Requests waiting at the endpoint, per replica of the count being decided
                # (for a slot, or for a replica that is starting).
                return self.waiting_requests / max(self.replicas, 1)


@dataclass(frozen=True)
class Reading:
    """One metric's view of a sample: what it saw and the count it proposes."""

    metric: AutoscaleMetric
    observed: float | None  # None: missing from the sample, so it proposes nothing
    proposal: int | None
    text: str  # e.g. "request_duration avg 310ms > target 200ms"


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    reason: str  # e.g. "request_duration avg 310ms > target 200ms: 1 -> 2"
    readings: tuple[Reading, ...] = ()

    @property
    def changed(self) -> bool:
        return self.desired != self.current


class Autoscaler:
    """One deployment's autoscaler; keeps only the proposals of the last window."""

    def __init__(self, replicas: Replicas, autoscale: Autoscale) -> None:
        self.replicas = replicas
        self.autoscale = autoscale
        # (time, proposal) pairs within the stabilisation window, oldest first.
        self._history: deque[tuple[float, int]] = deque()

    def __repr__(self) -> str:
        window = [p for _, p in self._history]
        return (
            f"<Autoscaler min={self.replicas.min} max={self.replicas.max} "
            f"metrics={len(self.autoscale.metrics)} window={window}>"
        )

    def reconfigure(self, replicas: Replicas, autoscale: Autoscale) -> None:
        """A new revision changed the bounds or the metrics; the window is kept."""
        self.replicas = replicas
        self.autoscale = autoscale

    def reset(self, now: float, count: int) -> None:
        """The count was set outside the policy (to zero: an idle unload, a swap, a cancelled
        cold start): the window starts afresh there, so no earlier proposal brings it back."""
        self._history.clear()
        self._history.append((now, count))

    def observe(self, now: float, sample: LoadSample) -> Decision:
        current = max(sample.replicas, 0)
        if not self._history:
            self._history.append((now, current))
        readings = tuple(self._read(metric, sample, current) for metric in self.autoscale.metrics)
        proposals = [r.proposal for r in readings if r.proposal is not None]
        # Idle: only a scraped gauge (the server's own word) may ask for more than zero.
        asking = [r for r in readings if r.metric.metric is MetricName.PROMETHEUS and r.proposal]
        if sample.idle and asking:
            proposal = max(r.proposal or 0 for r in asking)
            why = next(r.text for r in asking if r.proposal == proposal)
        elif sample.idle:
            proposal, why = 0, "no traffic"
        elif proposals:
            proposal = max(proposals)
            why = next(r.text for r in readings if r.proposal == proposal)
        else:
            proposal, why = current, "no load figures"
        if sample.waiting_requests > 0 and proposal < 1:
            n = sample.waiting_requests
            proposal = 1
            why = f"{n} request{'s' if n != 1 else ''} waiting with {current} replicas"

        # The window is (now - delay, now]: a proposal exactly `delay` old has served its time.
        delay = self.autoscale.scale_down_delay
        while self._history and self._history[0][0] <= now - delay:
            self._history.popleft()
        self._history.append((now, proposal))
        window_high = max(p for _, p in self._history)

        if proposal >= current:
            wanted = proposal
        else:
            wanted = min(current, window_high)
        desired = min(max(wanted, self.replicas.min), self.replicas.max)
        reason = self._reason(why, current, proposal, wanted, desired)
        return Decision(current=current, desired=desired, reason=reason, readings=readings)

    def _reason(self, why: str, current: int, proposal: int, wanted: int, desired: int) -> str:
        lo, hi = self.replicas.min, self.replicas.max
        delay = self.autoscale.scale_down_delay
        held = format_duration(delay)
        if desired > current:
            if wanted < lo:
                return f"replicas.min is {lo}: {current} -> {desired}"
            if wanted > hi:
                return f"{why}: {current} -> {desired} (replicas.max; {wanted} wanted)"
            return f"{why}: {current} -> {desired}"
        if desired < current:
            if wanted > hi:
                return f"replicas.max is {hi}: {current} -> {desired}"
            if wanted > max(proposal, lo):
                return f"{why}: {current} -> {desired} (the highest proposal of the last {held})"
            lasted = f" for {held}" if delay > 0 else ""
            return f"{why}{lasted}: {current} -> {desired}"
        if wanted > hi:
            return f"{why}: stays at {current} (replicas.max; {wanted} wanted)"
        if proposal < current and max(proposal, lo) < current:
            return (
                f"{why}: stays at {current} until the load is lower for {held} "
                f"({max(proposal, lo)} wanted)"
            )
        return f"{why}: stays at {current}"

    @staticmethod
    def _read(metric: AutoscaleMetric, sample: LoadSample, current: int) -> Reading:
        name = _label(metric)
        target = _format(metric, metric.target)
        if sample.idle and metric.metric is not MetricName.PROMETHEUS:
            return Reading(metric, 0.0, 0, f"no traffic ({name} counts as zero)")
        observed = sample.observed(metric)
        if observed is None:
            return Reading(metric, None, None, f"{name} not measured")
        ratio = observed / metric.target
        shown = f"{name} {_format(metric, observed)}"
        if abs(ratio - 1.0) <= TOLERANCE + 1e-9:  # 55/50 - 1 is 0.10000000000000009
            return Reading(metric, observed, current, f"{shown} ~ target {target}")
        # Round before the ceiling so that 3 x 0.7 / 0.7 stays 3, not 4.
        proposal = math.ceil(round(current * ratio, 9))
        sign = ">" if ratio > 1 else "<"
        return Reading(metric, observed, proposal, f"{shown} {sign} target {target}")


def _label(metric: AutoscaleMetric) -> str:
    if metric.metric is MetricName.REQUEST_DURATION:
        return f"request_duration {'p95' if metric.summary is Summary.P95 else 'avg'}"
    if metric.metric is MetricName.PROMETHEUS:
        return f"{metric.query} avg"
    return metric.metric.value


def _format(metric: AutoscaleMetric, value: float) -> str:
    if metric.metric is MetricName.REQUEST_DURATION:
        # Milliseconds are the useful resolution for a latency in an event line.
        return format_duration(round(max(value, 0.0), 3))
    if metric.metric in (MetricName.CONCURRENCY, MetricName.PROMETHEUS, MetricName.QUEUE):
        return f"{value:g}" if value == round(value, 2) else f"{value:.2f}"
    return f"{value:.0f}%" if value == round(value) else f"{value:.1f}%"
