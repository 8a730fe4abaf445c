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
- Admission (`proxy.queue`): `acquire` takes a slot on the upstream a request goes to,
  `release` gives it back; a request finds none free (every replica at `max_concurrency`,
  or none ready in hold mode) waits in the one FIFO queue, at most `max_queue` at once,
  `queue_timeout` for a busy replica and `hold_max_wait` (None: hold mode off) for a
  starting one; `wake_held` makes every queued request look again (a replica came, the
  settings changed, or the endpoint drains).
- Passive health (`proxy.outlier`): `release` reports each attempt's end; an ejected
  replica is skipped while others have room, and returns at its time (or its probe).
- Retry budget: a replay that the replica may have seen (`retry = "all"`, a POST whose
  replica died before answering) spends a token; each request earns `RETRY_BUDGET` of
  one, up to `RETRY_BURST`: replays stay within ~20 % of the requests.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Final

import trio

from config.spec import (
    ENDPOINT_CLIENT_IDLE_TIMEOUT,
    ENDPOINT_CONNECT_TIMEOUT,
    ENDPOINT_READ_TIMEOUT,
    MAX_QUEUE_DEFAULT,
    QUEUE_TIMEOUT_DEFAULT,
    Outlier,
)
from proxy.auth import Guard
from proxy.h2.grpc_status import GrpcStatusCounts
from proxy.outlier import Outliers
from proxy.poller import Poller
from proxy.pool import Pool
from proxy.queue import (
    NO_REPLICA,
    NO_REPLICA_IN_TIME,
    QUEUE_FULL,
    QUEUE_FULL_COLD,
    QUEUE_TIMEOUT,
    SHUTTING_DOWN,
    Refusal,
    Slots,
    Waiter,
)
from proxy.stats import Counters
from proxy.upstreams import RoundRobin, Upstream

STATS_WINDOW_S = 60.0
RETRY_BUDGET: Final = 0.2  # of a replay earned by each request
RETRY_BURST: Final = 10.0  # replays allowed at once (and at the start)
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


class LastRequest:
    """When the last request that reached a replica ended (trio time; None: none yet).
    Shared by the balancers of a moved endpoint, as its counters are."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None


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
        self.drain_started = trio.Event()  # set with `draining` (`begin_drain`)
        self.on_suspect = on_suspect
        # Admission (see the module docstring); hold_max_wait None: hold mode off.
        self.slots = Slots(STATS_WINDOW_S)
        self.max_queue = MAX_QUEUE_DEFAULT
        self.queue_timeout = QUEUE_TIMEOUT_DEFAULT
        self.hold_max_wait: float | None = None
        self.on_wait: Callable[[], None] | None = None
        # Why no replica is on its way yet (no GPU free, nothing to swap out), told to a held
        # request that waited out hold_max_wait; None: nothing to add.
        self.hold_note: str | None = None
        self.least_request = False
        self.outliers = Outliers()
        self.retry_all = False  # `retry = "all"`: a POST is replayed too (within the budget)
        self._retry_tokens = RETRY_BURST
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
        self.grpc_status = GrpcStatusCounts()  # gRPC calls by status code (`proxy.h2`)
        # `upstream_protocol = "h2c"`: replicas are spoken to in HTTP/2 (`proxy.h2`).
        self.upstream_h2c = False
        # The endpoint's nursery for tasks that outlive a client connection but not the
        # endpoint (h2c connections to replicas); set while `Endpoint.run` runs.
        self.background: trio.Nursery | None = None
        self.fast_served = 0  # exchanges served whole by the fast path (`proxy.fastpath`)
        # When a request that reached a replica last ended (idle unload, swap's LRU).
        self.last_request = LastRequest()

    def set_upstreams(self, upstreams: Iterable[Upstream]) -> None:
        self.upstreams.set(upstreams)
        current = self.upstreams.upstreams
        self.pool.retain(current)
        self.outliers.retain(current)
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

    def set_admission(
        self,
        *,
        max_concurrency: int | None,
        max_queue: int,
        queue_timeout: float,
        least_request: bool,
        retry_all: bool,
        outlier: Outlier,
    ) -> None:
        """New traffic rules, for the next pick (queued requests look again at once)."""
        self.slots.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.least_request = least_request
        self.retry_all = retry_all
        self.outliers.rules = outlier
        self.wake_held()

    def may_replay(self) -> bool:
        """Spend a token of the retry budget on a replay the replica may have seen."""
        if self._retry_tokens < 1.0:
            return False
        self._retry_tokens -= 1.0
        return True

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
        self.slots.taken = other.slots.taken  # max_concurrency counts both listeners' requests
        self.grpc_status = other.grpc_status
        self.last_request = other.last_request

    def begin_drain(self) -> None:
        """Stop taking requests: queued ones are refused, HTTP/2 connections say GOAWAY."""
        self.draining = True
        self.drain_started.set()
        self.wake_held()

    def wake_held(self) -> None:
        """Queued requests look again: at the upstream set, the settings, draining."""
        slots = self.slots
        if slots.waiters:
            slots.grant(self._choose)
            slots.wake_all()

    @property
    def waiting(self) -> int:
        """Requests queued: for a free slot, or for a replica that is starting."""
        return len(self.slots.waiters)

    def _choose(self, tried: Container[Upstream]) -> Upstream | None:
        return self.upstreams.choose(
            tried,
            self.poller.now,
            self.slots.taken,
            self.slots.max_concurrency,
            self.least_request,
            self.outliers.out,
        )

    def try_take(self, tried: Container[Upstream]) -> Upstream | None:
        """A slot on an upstream with room, taken now, or None (nothing waits)."""
        if self.outliers.out:
            self._returns()
        if self.slots.waiters and not tried:
            return None  # others wait already: they go first
        up = self._choose(tried)
        if up is not None:
            self.slots.take(up)
        return up

    async def acquire(self, tried: list[Upstream]) -> Upstream | Refusal | None:
        """A slot on the next upstream for a request (`proxy.queue`), waiting in the queue
        when none has room; a `Refusal` to answer with; None when every upstream there is
        has been tried (the request failed at each)."""
        up = self.try_take(tried)
        if up is not None:
            return up
        if self.draining:
            return SHUTTING_DOWN
        items = self.upstreams.upstreams
        if tried and not any(u not in tried for u in items):
            return None
        return await self._wait(tried)

    async def _wait(self, tried: list[Upstream]) -> Upstream | Refusal:
        slots = self.slots
        busy = bool(self.upstreams)
        if not busy and self.hold_max_wait is None:
            return NO_REPLICA
        if len(slots.waiters) >= self.max_queue:
            return QUEUE_FULL if busy else QUEUE_FULL_COLD
        waiter = Waiter(tried)
        slots.waiters.append(waiter)
        slots.queued_total += 1
        start = since = trio.current_time()
        if not busy and self.on_wait is not None:
            self.on_wait()
        handed = False
        try:
            while True:
                limit = self.queue_timeout if busy else self.hold_max_wait
                if limit is None:
                    return NO_REPLICA
                with trio.move_on_at(since + limit):
                    await waiter.event.wait()
                if waiter.granted is not None:
                    handed = True
                    return waiter.granted
                if not waiter.event.is_set():
                    return QUEUE_TIMEOUT if busy else self._cold_refusal()
                if self.draining:
                    return SHUTTING_DOWN
                waiter.event = trio.Event()
                now_busy = bool(self.upstreams)
                if now_busy != busy:  # a replica came (all full), or the last one left
                    busy, since = now_busy, trio.current_time()
                    if not busy and self.on_wait is not None:
                        self.on_wait()
        finally:
            if waiter.granted is None:
                slots.waiters.remove(waiter)  # still queued: it leaves now
            elif not handed:  # granted, then cancelled before it woke: not leaked
                slots.give_back(waiter.granted)
                slots.grant(self._choose)
            end = trio.current_time()
            slots.wait_times.record(end, end - start)

    def _cold_refusal(self) -> Refusal:
        """No replica in time; with why none came, when the daemon said (`hold_note`)."""
        note = self.hold_note
        if note is None:
            return NO_REPLICA_IN_TIME
        return Refusal(NO_REPLICA_IN_TIME.status, f"{NO_REPLICA_IN_TIME.message}: {note}")

    def _returns(self) -> None:
        """Ejected replicas whose time is up: back now, or asked to prove it by a probe."""
        due = self.outliers.due_back(self.poller.now)
        if not due:
            return
        if self.outliers.by_probe:
            for up in due:
                self.suspect(up)
        else:
            self.slots.grant(self._choose)  # back now: queued requests may go to it

    def probe_passed(self, replica_id: str) -> None:
        """A readiness probe of this replica passed (an ejected one may return)."""
        for up in self.upstreams.upstreams:
            if up.replica_id == replica_id:
                self.outliers.probe_passed(up, self.poller.now)
                self.wake_held()

    def release(self, upstream: Upstream, status: int = 0, failed: bool = False) -> None:
        """The attempt on `upstream` ended: its slot is free (and given to the first waiter
        with a use for it); `status` (0: none was known) and `failed` (no proper answer:
        a reset, a broken response, a read timeout) feed passive health."""
        slots = self.slots
        slots.give_back(upstream)
        if slots.waiters:
            slots.grant(self._choose)
        if status or failed:
            self.outliers.record(upstream, status, failed, self.poller.now)

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
        if self._retry_tokens < RETRY_BURST:
            self._retry_tokens += RETRY_BUDGET

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
            self.last_request.at = now

    def __repr__(self) -> str:
        state = "draining" if self.draining else "serving"
        return (
            f"<Balancer {self.name!r} {state} upstreams={len(self.upstreams)} "
            f"in_flight={self.totals.in_flight} waiting={self.waiting}>"
        )
