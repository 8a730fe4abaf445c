"""What every session of one endpoint shares: its upstreams, pool, poller, counters, policy.

The `Endpoint` owns one `Balancer`; each client session (`proxy.forward`) and the
connector read and update it. It holds no task and does no I/O of its own but the
poller's, which the endpoint runs.

Invariants:
- `set_upstreams` swaps the round-robin set at once and keeps the pool to that set; a
  replica that left it keeps its counters while it has requests in flight.
- Statistics are plain counters bumped on the hot path (`began`, `started`, `stopped`,
  `finished`), summarised only when read (`Endpoint.statistics`).
- `timeouts` is read by each wait as it begins, never cached by a session: `set_timeouts`
  applies to every wait that begins after it (a new connection, the next request on a
  kept-alive one, a connect, a response read), and a wait under way keeps the value it
  began with (a response being read or streamed keeps its `read_idle`). The poller's tick
  follows the shortest timeout (`poller_tick`) and changes with it.
- Hold mode: `hold` waits while the set is empty, at most `hold_max_queue` requests at
  once and none longer than `hold_max_wait`; `wake_held` makes every held request look
  again (a replica came, the settings changed, or the endpoint drains).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from config.spec import (
    ENDPOINT_CLIENT_IDLE_TIMEOUT,
    ENDPOINT_CONNECT_TIMEOUT,
    ENDPOINT_READ_TIMEOUT,
)
from proxy.auth import Guard
from proxy.poller import Poller
from proxy.pool import Pool
from proxy.stats import Counters
from proxy.upstreams import RoundRobin, Upstream

STATS_WINDOW_S = 60.0
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EndpointTimeouts:
    """Seconds. The defaults (the spec's, from `config.spec`) never cut a long model generation
    or stream."""

    connect: float = ENDPOINT_CONNECT_TIMEOUT  # to a replica
    # Replica silent for this long -> 504 (or cut, once streaming).
    read_idle: float = ENDPOINT_READ_TIMEOUT
    # Keep-alive client silent between requests (or not reading).
    client_idle: float = ENDPOINT_CLIENT_IDLE_TIMEOUT
    # From accept (or, on a kept-alive connection, the request's first byte) to the end of
    # its head: the most a slow or silent client holds a connection slot for nothing.
    header_read: float = 10.0
    # A request body must bring at least `body_min_rate` bytes/s, counted over windows of
    # `body_rate_window` seconds (a window ends early once its share has arrived); a slower
    # one is cut (408 while no response has begun). 10 KiB per 10 s: far below any link
    # that uploads a prompt, far above a slowloris body (`proxy.relay.BodyPace`).
    body_min_rate: float = 1024.0
    body_rate_window: float = 10.0


def poller_tick(timeouts: EndpointTimeouts) -> float:
    """The watchdog's tick: a quarter of the shortest timeout it ends, within 10-500 ms
    (a timeout fires within one tick of its time, `proxy.poller`)."""
    shortest = min(
        timeouts.connect,
        timeouts.read_idle,
        timeouts.client_idle,
        timeouts.header_read,
        timeouts.body_rate_window,
    )
    return min(0.5, max(0.01, shortest / 4))


class Balancer:
    """What every session of an endpoint shares: upstreams, pool, counters, policy."""

    def __init__(
        self,
        name: str,
        timeouts: EndpointTimeouts,
        on_suspect: Callable[[str], None] | None,
    ) -> None:
        self.name = name
        self.timeouts = timeouts
        self.upstreams = RoundRobin()
        self.pool = Pool()
        self.poller = Poller(tick=poller_tick(timeouts))
        self.draining = False
        self.on_suspect = on_suspect
        # Hold mode (see the module docstring); max_wait None: off.
        self.hold_max_wait: float | None = None
        self.hold_max_queue = 100
        self.on_wait: Callable[[], None] | None = None
        self.waiting = 0
        self._arrival = trio.Event()  # set (and replaced) when held requests should look again
        self.totals = Counters(STATS_WINDOW_S)
        self.replicas: dict[str, Counters] = {}
        self.guard: Guard | None = None  # a protected endpoint's credentials (`proxy.auth`)
        # Peers whose Forwarded / X-Real-IP / X-Forwarded-* are kept (`proxy.headers`).
        self.trusted_proxies: tuple[IPNetwork, ...] = ()
        # Upstreams known to speak HTTP/1.1 (a 1.1 response seen from them): a streamed
        # chunked body goes only to those; the others get it buffered with a Content-Length.
        self.http11: set[Upstream] = set()
        self._id_prefix = os.urandom(6).hex().encode()
        self._id_next = 0

    def set_upstreams(self, upstreams: Iterable[Upstream]) -> None:
        self.upstreams.set(upstreams)
        current = self.upstreams.upstreams
        self.pool.retain(current)
        self.http11.intersection_update(current)
        ids = {u.replica_id for u in current}
        for rid in ids:
            if rid not in self.replicas:
                self.replicas[rid] = Counters(STATS_WINDOW_S)
        for rid in [r for r, c in self.replicas.items() if r not in ids and not c.in_flight]:
            del self.replicas[rid]
        if current:
            self.wake_held()

    def set_timeouts(self, timeouts: EndpointTimeouts) -> None:
        """New timeouts for every wait that begins from now on (see the module docstring)."""
        if timeouts == self.timeouts:
            return
        self.timeouts = timeouts
        self.poller.retick(poller_tick(timeouts))

    def set_trusted_proxies(self, networks: Iterable[str]) -> None:
        self.trusted_proxies = tuple(ipaddress.ip_network(n) for n in networks)

    def is_trusted(self, peer: str) -> bool:
        """Whether `peer` (an address) lies in `trusted_proxies`: once per connection."""
        if not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted_proxies)

    def share_counters(self, other: Balancer) -> None:
        """Count into `other`'s counters from now on (a move of the endpoint to a new
        address): its statistics go on across the move, and a replica's in-flight count
        includes the requests the old listener's sessions still serve."""
        self.totals = other.totals
        self.replicas = other.replicas
        self.guard = other.guard

    def wake_held(self) -> None:
        """Held requests look again: at the upstream set, the hold settings, draining."""
        if self.waiting:
            self._arrival.set()
            self._arrival = trio.Event()

    async def hold(self) -> str | None:
        """With no upstream: wait for one in hold mode. None once one is there; otherwise
        why the request gets a 503 (hold mode off, queue full, waited too long, draining)."""
        if self.draining:
            return "shutting down"
        max_wait = self.hold_max_wait
        if max_wait is None:
            return "no ready replica"
        if self.waiting >= self.hold_max_queue:
            return "too many requests waiting for a replica"
        self.waiting += 1
        try:
            if self.on_wait is not None:
                self.on_wait()
            with trio.move_on_after(max_wait):
                while True:
                    if self.draining:
                        return "shutting down"
                    if self.upstreams:
                        return None
                    if self.hold_max_wait is None:
                        return "no ready replica"
                    await self._arrival.wait()
            return "no replica became ready in time"
        finally:
            self.waiting -= 1

    def pick(self, tried: list[Upstream]) -> Upstream | None:
        return self.upstreams.pick(tried, self.poller.now)

    def next_request_id(self) -> bytes:
        self._id_next += 1
        return b"%s-%x" % (self._id_prefix, self._id_next)

    def suspect(self, upstream: Upstream) -> None:
        if self.on_suspect is not None:
            self.on_suspect(upstream.replica_id)

    def _counters(self, upstream: Upstream) -> Counters:
        c = self.replicas.get(upstream.replica_id)
        if c is None:
            c = self.replicas[upstream.replica_id] = Counters(STATS_WINDOW_S)
        return c

    def began(self) -> None:
        self.totals.in_flight += 1

    def started(self, upstream: Upstream) -> None:
        self._counters(upstream).in_flight += 1

    def stopped(self, upstream: Upstream) -> None:
        self._counters(upstream).in_flight -= 1

    def finished(self, upstream: Upstream | None, status: int, start: float) -> None:
        now = trio.current_time()
        latency = now - start
        self.totals.in_flight -= 1
        self.totals.finish(status, now, latency)
        if upstream is not None:
            self._counters(upstream).finish(status, now, latency)

    def __repr__(self) -> str:
        state = "draining" if self.draining else "serving"
        return (
            f"<Balancer {self.name!r} {state} upstreams={len(self.upstreams)} "
            f"in_flight={self.totals.in_flight} waiting={self.waiting}>"
        )
