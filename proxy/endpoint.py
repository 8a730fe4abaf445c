"""A deployment's public endpoint: the listener, its client sessions, and their lifecycle.

Invariants:
- `set_upstreams` swaps the round-robin set at once; the next request sees the new set.
  Replicas that left it get no new request; their in-flight requests finish, and their
  connections are closed rather than pooled.
- `run` owns every client session in one nursery. `begin_shutdown(t)` stops accepting,
  closes the listener and idle keep-alive connections, and gives in-flight requests until
  now + t; `run` returns when the last session ends. A connection accepted before the
  drain that has not sent its first request yet is not idle: that request is answered
  (a planned restart cuts nothing that was accepted), within `header_read`. A request
  this endpoint serves for another listener (`session_on`: the model gateway's) gets the
  same deadline before the poller, which watches its connections, stops.
- A fault in one client connection stays in it: each session runs behind a barrier that
  takes any `Exception` (never a cancellation), logs it once with the endpoint and the
  peer, and closes that connection; the listener and every other session go on. The
  barrier is one `try` around the whole session, so it costs nothing per request.
- Its address (`bind`, `port`) is fixed for its life; its timeouts are not:
  `set_timeouts` applies to every wait that begins after it and leaves the waits under
  way as they are (`proxy.balancer`), with no rebind.
- A moved endpoint (`continue_from`) shares its predecessor's counters: statistics and
  in-flight counts span the move while the old one drains.
- `wait_listener_closed` returns once the listening socket is closed (after
  `begin_shutdown`, or when `run` ends), while in-flight requests may still drain: the
  port is free for another listener from then on, unless another process holds a copy of
  the socket (a listener given to the constructor, kept in systemd's fd store): closing
  is `close()` on this process's descriptor, never `shutdown()`, so such a copy keeps
  the socket listening and its backlog accepting for the next process.
- At most `max_connections` client connections are open at once (None: berthd's budget,
  shared by every endpoint, `proxy.admission`); over it the accept loop waits and new
  connections queue in the listen backlog; an open connection is never closed for it.
- A protected endpoint (`set_credentials`, `proxy.auth`) answers 401 to a request without
  a credential of its set before any replica is picked; a new set applies to the next
  request on every connection.
- A TLS endpoint (`set_tls`, `proxy.tls`) speaks TLS to every client connection accepted
  while it holds a context; a new context (a certificate reloaded) applies to connections
  accepted from then on, with no rebind, and open ones keep the one they began with.
- Statistics are recorded by plain counters on the hot path (`proxy.balancer`) and
  summarised on read (`statistics`).
- Hold mode (`hold_when_empty`, scale from zero, as Knative's activator): while the set is
  empty a request waits, its head read and its body unread, until `set_upstreams` brings
  a replica; at most `max_queue` wait, none longer than `max_wait`, and `begin_shutdown`
  releases them all; each refusal is a 503 with Retry-After. Off, an empty set is a 503
  at once.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Callable, Iterable
from functools import partial

import trio

from config.spec import MAX_QUEUE_DEFAULT, QUEUE_TIMEOUT_DEFAULT, Outlier
from proxy import sockets
from proxy.admission import ConnectionBudget, Gate, process_budget
from proxy.auth import Credentials, Guard
from proxy.balancer import STATS_WINDOW_S, Balancer, EndpointTimeouts
from proxy.forward import Session
from proxy.h2.attempt import set_upstream_protocol
from proxy.reader import ClientReader
from proxy.serving import accept_under, serve_guarded
from proxy.stats import EndpointStatistics, ReplicaStatistics
from proxy.tls import TlsConn
from proxy.upstreams import Upstream

# `EndpointTimeouts` lives beside the `Balancer` that holds them; callers name it from here,
# beside the `Endpoint` it configures.
__all__ = ["Endpoint", "EndpointTimeouts"]


class Endpoint:
    """One deployment's listener and round-robin proxy (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        bind: str,
        port: int,
        timeouts: EndpointTimeouts = EndpointTimeouts(),  # noqa: B008 - frozen
        on_suspect: Callable[[str], None] | None = None,
        max_connections: int | None = None,
        trusted_proxies: Iterable[str] = (),
        budget: ConnectionBudget | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        """`listener`: a socket already listening on bind:port (bound by the caller, or
        passed from systemd's fd store) that `run` serves instead of binding one."""
        self.name = name
        self.bind = bind
        self.port = port
        self._balancer = Balancer(name, timeouts, on_suspect)
        self._balancer.set_trusted_proxies(trusted_proxies)
        self._gate = Gate(budget or process_budget(), max_connections)
        self._sessions: set[Session] = set()
        self._accept_scope: trio.CancelScope | None = None
        self._handlers_scope: trio.CancelScope | None = None
        self._drain_deadline: float | None = None
        self._address: tuple[str, int] | None = None
        self._listener_closed = trio.Event()
        self._tls: ssl.SSLContext | None = None
        self._given_listener = listener
        # Sessions of requests accepted elsewhere (`session_on`: the gateway's) under way.
        self._guests: set[Session] = set()
        self._guests_changed = trio.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), once `run` has started; port 0 asks for a free one."""
        if self._address is None:
            raise RuntimeError(f"endpoint {self.name!r} is not listening")
        return self._address

    @property
    def timeouts(self) -> EndpointTimeouts:
        return self._balancer.timeouts

    def set_timeouts(self, timeouts: EndpointTimeouts) -> None:
        """New timeouts, in place: for every wait that begins from now on (a new
        connection, the next request on a kept-alive one, a connect, a response read); a
        wait under way keeps its own. The poller's tick follows them."""
        self._balancer.set_timeouts(timeouts)

    def set_limits(self, max_connections: int | None, trusted_proxies: Iterable[str]) -> None:
        """A new connection cap and trusted proxies, in place: the cap applies to the next
        accept (connections over a lowered cap are not closed), the proxies to connections
        accepted from now on."""
        self._gate.set_max_connections(max_connections)
        self._balancer.set_trusted_proxies(trusted_proxies)

    def connections(self) -> int:
        """Client connections open now."""
        return self._gate.open

    def set_credentials(self, credentials: Credentials | None) -> None:
        """Protect the endpoint with `credentials` (None: open it), in place: the next
        request on every connection, kept-alive ones included, is judged by them (a key
        created or revoked), with no rebind; the per-credential counters go on."""
        b = self._balancer
        if credentials is None:
            b.guard = None
        elif b.guard is None:
            b.guard = Guard(credentials)
        else:
            b.guard.set_credentials(credentials)

    @property
    def tls(self) -> ssl.SSLContext | None:
        return self._tls

    def set_tls(self, context: ssl.SSLContext | None) -> None:
        """Speak TLS with `context` (None: plain HTTP) to the connections accepted from now
        on, with no rebind; connections already open keep what they began with."""
        self._tls = context

    def continue_from(self, old: Endpoint) -> None:
        """Take over `old`'s request counters (before `run`): the same deployment's endpoint
        moved to a new address. Statistics go on, and `in_flight` counts the requests `old`
        still drains, so a replica's drain waits for those too."""
        self._balancer.share_counters(old._balancer)

    def use_listener(self, listener: socket.socket) -> None:
        """Serve `listener` (listening on bind:port already) rather than bind one; before
        `run`, which then owns it."""
        self._given_listener = listener

    async def wait_listener_closed(self) -> None:
        """Until the listening socket is closed (see the module docstring)."""
        await self._listener_closed.wait()

    def set_upstreams(self, upstreams: Iterable[Upstream]) -> None:
        self._balancer.set_upstreams(upstreams)

    def upstreams(self) -> tuple[Upstream, ...]:
        return self._balancer.upstreams.upstreams

    def in_flight(self, replica_id: str) -> int:
        c = self._balancer.replicas.get(replica_id)
        return c.in_flight if c is not None else 0

    def set_admission(
        self,
        *,
        max_concurrency: int | None = None,
        max_queue: int = MAX_QUEUE_DEFAULT,
        queue_timeout: float = QUEUE_TIMEOUT_DEFAULT,
        least_request: bool = False,
        retry_all: bool = False,
        outlier: Outlier = Outlier(),  # noqa: B008 - frozen
    ) -> None:
        """The traffic rules (`proxy.queue`, `proxy.outlier`), in place: the next request
        sees them, and queued requests look again at once (a raised cap serves them)."""
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self._balancer.set_admission(
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            queue_timeout=queue_timeout,
            least_request=least_request,
            retry_all=retry_all,
            outlier=outlier,
        )

    def set_upstream_protocol(self, protocol: str) -> None:
        """`upstream_protocol` ("http1" or "h2c"), for the next request (`proxy.h2`)."""
        set_upstream_protocol(self._balancer, protocol)

    def watch_outliers(
        self,
        on_eject: Callable[[Upstream, str, float], None] | None,
        on_return: Callable[[Upstream], None] | None,
        *,
        by_probe: bool,
    ) -> None:
        """Be told of each ejection and return; `by_probe`: an ejected replica returns only
        at a passing readiness probe (`probe_passed`) after its time is up."""
        o = self._balancer.outliers
        o.on_eject, o.on_return, o.by_probe = on_eject, on_return, by_probe

    def probe_passed(self, replica_id: str) -> None:
        """A readiness probe of this replica passed: an ejected one whose time is up is
        back in rotation. Never blocks."""
        self._balancer.probe_passed(replica_id)

    def ejected(self) -> frozenset[str]:
        """Replica ids out of rotation by passive health now."""
        return frozenset(u.replica_id for u in self._balancer.outliers.out)

    def hold_when_empty(
        self,
        max_wait: float | None,
        max_queue: int | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        """Scale from zero: while no upstream is set, hold requests instead of a 503.

        A request that finds the set empty waits (head read, body unread) until
        `set_upstreams` brings a replica, then is served. `on_wait` is called as each
        request starts waiting (synchronously: it must not block), so that the caller can
        start a replica at once. A request that would wait longer than `max_wait` seconds,
        or finds `max_queue` requests waiting already, gets 503 with Retry-After.
        `max_wait=None` turns hold mode off (503 at once); requests already waiting then
        get their 503 too. The queue is the one of `set_admission` (`max_queue`, which
        this sets too when given).
        """
        if max_wait is not None and max_wait <= 0:
            raise ValueError(f"max_wait must be positive or None, got {max_wait}")
        if max_queue is not None and max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        b = self._balancer
        b.hold_max_wait = max_wait
        if max_queue is not None:
            b.max_queue = max_queue
        b.on_wait = on_wait
        if max_wait is None:
            b.wake_held()

    def session_on(self, conn: sockets.Conn, reader: ClientReader) -> Session:
        """A session of this endpoint for one request on a client connection accepted
        elsewhere (the model gateway's, `proxy.gateway`, which read its head and body into
        `reader`): the request goes through this endpoint's balancing, queue, hold mode,
        retries and statistics as its own requests do. `conn` moves to this endpoint's
        poller (`Conn.move_to`), so that a hang-up is seen while a replica works, as on the
        endpoint's own connections; the caller moves it back after the request, and calls
        `session_done` (a drain waits for it as for its own, up to the same deadline)."""
        session = Session(self._balancer, conn, reader)
        session.fast = None  # `Session.serve` alone uses it; the caller calls `forward`
        conn.move_to(self._balancer.poller)
        self._guests.add(session)
        return session

    def session_done(self, session: Session) -> None:
        """The request of a `session_on` session ended: a drain no longer waits for it."""
        self._guests.discard(session)
        self._guests_changed.set()
        self._guests_changed = trio.Event()

    async def _wait_for_guests(self) -> None:
        """A drain gives the requests of `session_on` sessions (the gateway's) the same
        deadline as its own before the poller, which watches their connections, stops."""
        deadline = self._drain_deadline
        if deadline is None:
            return
        with trio.move_on_at(deadline):
            while self._guests:
                await self._guests_changed.wait()

    def set_hold_note(self, note: str | None) -> None:
        """Why no replica is on its way yet (e.g. no GPU free and nothing to swap out): a held
        request that waits out its time is told it in its 503. None: nothing to add."""
        self._balancer.hold_note = note

    def waiting(self) -> int:
        """How many requests are queued: for a free slot, or for a replica (hold mode)."""
        return self._balancer.waiting

    def requests_in_flight(self) -> int:
        """Requests under way now (read, queued or at a replica), on every listener."""
        return self._balancer.totals.in_flight

    def last_request_at(self) -> float | None:
        """When the last request that reached a replica ended (trio time); None: none yet."""
        return self._balancer.last_request.at

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener, self._given_listener = self._given_listener, None
        if listener is not None:
            listener.setblocking(False)
        else:
            try:
                listener = sockets.listen(self.bind, self.port)
            except OSError:
                self._listener_closed.set()  # there is none
                raise
        name = listener.getsockname()
        self._address = (str(name[0]), int(name[1]))
        closed = False
        try:
            async with trio.open_nursery() as poller:
                await poller.start(self._balancer.poller.run)
                self._balancer.background = poller  # ends with the poller, after the sessions
                async with trio.open_nursery() as handlers:
                    self._handlers_scope = handlers.cancel_scope
                    with trio.CancelScope() as accept_scope:
                        self._accept_scope = accept_scope
                        task_status.started()
                        if self._balancer.draining:
                            accept_scope.cancel()
                            self._apply_drain_deadline()
                        await accept_under(self._gate, listener, handlers, self._serve)
                    sockets.close_listener(listener)
                    closed = True
                    self._listener_closed.set()
                await self._wait_for_guests()
                self._balancer.pool.close_all()
                poller.cancel_scope.cancel()
        finally:
            self._balancer.background = None
            if not closed:
                sockets.close_listener(listener)
            self._listener_closed.set()
            self._balancer.pool.close_all()
            self._address = None

    async def _serve(self, sock: socket.socket, peer: str) -> None:
        await serve_guarded(
            sock,
            peer,
            open_conn=self._open_conn,
            make_handler=partial(Session, self._balancer),
            live=self._sessions,
            gate=self._gate,
            what=f"endpoint {self.name}",
        )

    def _open_conn(self, sock: socket.socket, peer: str) -> sockets.Conn:
        tls = self._tls
        if tls is None:
            return sockets.Conn(sock, peer, self._balancer.poller)
        return TlsConn(sock, peer, self._balancer.poller, tls)

    def begin_shutdown(self, drain_timeout: float) -> None:
        """Stop accepting; in-flight requests get `drain_timeout` seconds to finish."""
        self._balancer.begin_drain()  # each queued request gets its 503 now
        self._drain_deadline = trio.current_time() + drain_timeout
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        self._apply_drain_deadline()

    def _apply_drain_deadline(self) -> None:
        if self._handlers_scope is not None and self._drain_deadline is not None:
            self._handlers_scope.deadline = min(self._handlers_scope.deadline, self._drain_deadline)
        for session in list(self._sessions):
            # Idle between requests: its wait for the next one ends with end-of-stream. A
            # connection that has had no answer yet is not idle but new: accepted before
            # the drain, its first request is on its way (or in the socket already) and
            # is answered (Connection: close), within `header_read` of its accept.
            if session.idle and session.exchange.status != 0:
                session.conn.shutdown()

    def statistics(
        self, window: float = STATS_WINDOW_S, *, histogram: bool = False
    ) -> EndpointStatistics:
        """Counters since start; latency percentiles over the last `window` seconds; with
        `histogram`, the cumulative latency histogram since start too (for Prometheus).

        `window` is whole seconds at most `STATS_WINDOW_S` (what is kept); a shorter one
        (the autoscaler's ~10 s) counts only the latest seconds, the current one included.
        """
        if not window > 0:
            raise ValueError(f"window must be positive, got {window}")
        window = min(float(math.ceil(window)), STATS_WINDOW_S)
        b = self._balancer
        now = trio.current_time()
        replicas = tuple(
            ReplicaStatistics(
                replica_id=rid,
                in_flight=c.in_flight,
                requests_total=c.total,
                status=c.status_counts(),
                latency=c.latency.summary(now, window),
                histogram=c.latency.histogram() if histogram else None,
            )
            for rid, c in sorted(b.replicas.items())
        )
        t = b.totals
        guard = b.guard
        return EndpointStatistics(
            name=self.name,
            in_flight=t.in_flight,
            requests_total=t.total,
            status=t.status_counts(),
            latency=t.latency.summary(now, window),
            window=window,
            replicas=replicas,
            histogram=t.latency.histogram() if histogram else None,
            by_credential=tuple(sorted(guard.allowed.items())) if guard else None,
            unauthorized=guard.refused if guard else 0,
            queued=b.waiting,
            queued_total=b.slots.queued_total,
            queue_time=b.slots.wait_times.summary(now, window),
            ejected=tuple(sorted(u.replica_id for u in b.outliers.out)),
            grpc_status=tuple(b.grpc_status.by_name().items()),
        )

    def __repr__(self) -> str:
        state = "draining" if self._balancer.draining else "serving"
        return (
            f"<Endpoint {self.name!r} {self.bind}:{self.port} {state} "
            f"upstreams={len(self._balancer.upstreams)} sessions={len(self._sessions)}>"
        )
