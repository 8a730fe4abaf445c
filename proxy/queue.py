"""Request admission: per-replica slots (`max_concurrency`) and one FIFO queue per endpoint.

A request takes a slot on the replica it is sent to and gives it back when the attempt
ends (`Balancer.acquire` / `Balancer.release`). When no replica has a free slot, or no
replica is ready at all, the request waits here, in arrival order, for one of:
- a slot on a replica it has not tried (granted to it directly by `Slots.release`, so a
  newcomer never overtakes a request that waited);
- its deadline: `queue_timeout` while replicas exist but are all busy (429), the cold-start
  hold (`cold_start_timeout`, scale from zero) while none is ready (503); a wait that
  changes kind (the first replica came, but is full) starts the new kind's clock;
- a refusal: hold mode off with no replica, the endpoint draining (503);
- the client hanging up (the caller cancels the wait, and the waiter leaves at once).

Invariants:
- A replica never has more than `max_concurrency` slots taken (None: no cap); `take` and
  `release` are the only writers of the count.
- A waiter is in `waiters` exactly while it waits; a slot granted to a waiter that was
  cancelled before it woke is given back (never leaked).
- At most `max_queue` requests wait at once; one more is refused at once.
- With no cap and nobody waiting, `take` is one dict update and `release` one more.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Final

import trio

from proxy.stats import LatencyWindow
from proxy.upstreams import Upstream

RETRY_AFTER_S: Final = 1


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not served: the status (429, 503) and message it is answered with."""

    status: int
    message: str
    retry_after: int = RETRY_AFTER_S


SHUTTING_DOWN: Final = Refusal(503, "shutting down")
NO_REPLICA: Final = Refusal(503, "no ready replica")
NO_REPLICA_IN_TIME: Final = Refusal(503, "no replica became ready in time")
QUEUE_FULL_COLD: Final = Refusal(503, "too many requests waiting for a replica")
QUEUE_FULL: Final = Refusal(429, "too many requests: every replica is busy and the queue is full")
QUEUE_TIMEOUT: Final = Refusal(429, "too many requests: no replica had room in time")


class Waiter:
    """One queued request: what it must not be sent to, and what it was granted."""

    __slots__ = ("tried", "event", "granted")

    def __init__(self, tried: Container[Upstream]) -> None:
        self.tried = tried
        self.event = trio.Event()
        self.granted: Upstream | None = None


class Slots:
    """In-flight requests per replica against `max_concurrency`, and the queue."""

    __slots__ = ("max_concurrency", "taken", "waiters", "wait_times", "queued_total")

    def __init__(self, window: float = 60.0) -> None:
        self.max_concurrency: int | None = None
        self.taken: dict[Upstream, int] = {}
        self.waiters: deque[Waiter] = deque()
        self.wait_times = LatencyWindow(window)  # how long each queued request waited
        self.queued_total = 0  # requests that ever waited

    def has_room(self, upstream: Upstream) -> bool:
        cap = self.max_concurrency
        return cap is None or self.taken.get(upstream, 0) < cap

    def take(self, upstream: Upstream) -> None:
        taken = self.taken
        taken[upstream] = taken.get(upstream, 0) + 1

    def give_back(self, upstream: Upstream) -> None:
        taken = self.taken
        n = taken.get(upstream, 0) - 1
        if n > 0:
            taken[upstream] = n
        else:
            taken.pop(upstream, None)

    def grant(self, choose: Callable[[Container[Upstream]], Upstream | None]) -> None:
        """Give free slots to waiters, in arrival order: `choose(tried)` picks (and does not
        take) a replica with room for a waiter, None when it has none."""
        waiters = self.waiters
        if not waiters:
            return
        for waiter in list(waiters):
            up = choose(waiter.tried)
            if up is None:
                if not choose(()):
                    return  # no slot free anywhere: nobody behind can be served either
                continue  # room only on replicas this one tried: the next one may go
            self.take(up)
            waiter.granted = up
            waiters.remove(waiter)
            waiter.event.set()

    def wake_all(self) -> None:
        """Every waiter looks again (the set, the settings or draining changed)."""
        for waiter in self.waiters:
            waiter.event.set()

    def __repr__(self) -> str:
        return (
            f"<Slots cap={self.max_concurrency} taken={sum(self.taken.values())} "
            f"waiting={len(self.waiters)}>"
        )
