"""Scale to zero and back: the idle unload's TTL and the cold start's cancel. Pure.

Theory of operation. The worker reads its endpoint's live figures each round (`Activity`:
requests in flight, queued, when the last one that reached a replica ended) and asks:
- `unload_due`: `[replicas] scale_to_zero_after` (only with `min = 0`) is a TTL from the
  last request, not from the load and not from the replica's start: once nothing is in
  flight or queued and no request ended for that long, the deployment goes to zero (event
  `unloaded`). The clock starts at the later of the last request's end and `since` (when
  this autoscaler began: a berthd start, a pin handed back), so a replica nobody asked for
  yet is not unloaded at once. With the TTL set, the autoscaler itself never takes a
  loaded deployment to zero (`driver.bounds`): the TTL alone does.
- `ColdStart` / `cancel_due`: a scale from zero that waiting requests caused (and only
  those: a pin, a rollout or `min` are not cold starts) is remembered until one of its
  replicas is ready. If every waiter leaves before that (a client hangs up: the endpoint
  counts neither a queued nor an in-flight request then), the start is cancelled: the
  count goes back to zero and the starting container is removed (event `start-cancelled`).

Nothing here reads a clock: `now` is trio's, passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.units import format_duration


@dataclass(frozen=True)
class Activity:
    """An endpoint's figures now (`proxy.endpoint.Endpoint`)."""

    in_flight: int = 0  # requests under way, queued ones included
    waiting: int = 0  # requests queued (for a slot, or held for a replica)
    last_request: float | None = None  # when the last one that reached a replica ended

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.waiting > 0

    def idle_for(self, since: float, now: float) -> float:
        """Seconds without a request, counted from `since` at the earliest; 0 when busy."""
        if self.busy:
            return 0.0
        last = since if self.last_request is None else max(self.last_request, since)
        return max(now - last, 0.0)


def unload_due(ttl: float | None, activity: Activity, since: float, now: float) -> float | None:
    """The seconds idle when `ttl` has passed with nothing in flight or queued; else None."""
    if ttl is None or activity.busy:
        return None
    idle = activity.idle_for(since, now)
    return idle if idle >= ttl else None


def unloaded_reason(idle: float, ttl: float, current: int) -> str:
    return (
        f"no request for {format_duration(round(idle, 1))} (scale_to_zero_after "
        f"{format_duration(ttl)}): {current} -> 0"
    )


@dataclass(frozen=True)
class ColdStart:
    """A scale from zero that waiting requests caused, not ready yet."""

    since: float
    waiting: int  # the requests that woke it

    def reason(self, desired: int) -> str:
        n = self.waiting
        return f"woken by {n} waiting request{'s' if n != 1 else ''}: 0 -> {desired}"

    def cancelled_reason(self, now: float, current: int) -> str:
        took = format_duration(round(max(now - self.since, 0.0), 1))
        return (
            f"every waiting request left {took} into the cold start, before a replica was "
            f"ready: {current} -> 0 (the starting replica is removed)"
        )


def cold_start(current: int, desired: int, waiting: int, now: float) -> ColdStart | None:
    """The autoscaler went from zero because of waiting requests: a cold start."""
    if current == 0 and desired > 0 and waiting > 0:
        return ColdStart(since=now, waiting=waiting)
    return None


def cancel_due(cold: ColdStart | None, activity: Activity, any_ready: bool) -> bool:
    """Every waiter of a cold start left before a replica of it was ready."""
    return cold is not None and not any_ready and not activity.busy
