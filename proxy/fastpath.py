"""The fast path: a kept-alive client's plain requests served from the poller's callbacks.

A session (`proxy.forward.Session`) after its first request hands its connection to its
`FastPath` and parks. The fast path serves the exchanges that need no wait of their own
straight from the poller's read edges (`Poller.watch`), with no task switch:
1. the client's bytes arrive (one read) and hold exactly one whole request: a kept-alive
   one, no upgrade, its body (if any) complete in that read;
2. a slot is free now (`Balancer.try_take`: nobody queued) and its upstream has an idle
   pooled connection (`Pool.take`, trusting a recent one as `forward` does for a whole
   request; none: `forward` connects, with that slot); the request goes out in one send;
3. the replica's response arrives whole in one read (`proxy.relay.whole_response`) and
   the client's socket takes all of it in one send.
Then it records the exchange as `forward` would (the slot released with the status for
passive health, the statistics, the connection pooled or closed) and waits for the next
request the same way.

At the first thing it does not handle it stops and wakes the session's task with what it
has done so far, and the general path goes on from exactly there (`Handover`), so no byte
is read twice or sent twice:
- `READ`: the client's first read failed, timed out (`client_idle`), or ended the stream;
- `FED`: bytes were fed to the session's reader (a head in parts, a body to come, a
  pipelined request, one the fast path does not serve, no slot free, a `ProtocolError`):
  `serve` reads and forwards it as any other;
- `ATTEMPT`: the request holds a slot and went (or was going) to a replica: `forward`'s
  attempt goes on from `pending` (no pooled connection, or the send failed at once: a
  fresh connection, as by the stale rule; sent in part: the rest; the response's first
  read gave anything but a whole response, failed, timed out or the client hung up:
  `relay` goes on from that read; the client took part of the answer: the rest);
- `CLOSE`: the exchange was served and the connection ends (the endpoint drains, or the
  response closes it);
- `AGAIN`: the exchange was served and the client's next bytes may be there already:
  the task checkpoints and runs the fast path again (a client that keeps the proxy busy
  cannot hold the poller's callbacks).

Invariants:
- At most one callback is armed per session, on the client's connection (waiting for a
  request) or on the replica's (waiting for the response), and none once the task is
  woken: the task and the callbacks never act on a session at the same time.
- From the slot taken to the handover or the exchange's end, the fast path owns what
  `forward` would (the slot, `Balancer.began`/`started`, the replica connection); a
  handover passes all of it to the general path; a cancelled session gives it back.
- The session is `idle` exactly while no byte of its next request has been read.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio
from trio.lowlevel import Abort, Task, current_task, wait_task_rescheduled

from proxy.balancer import Balancer
from proxy.exchange import Exchange
from proxy.headers import request_head_bytes
from proxy.poller import CLOSED, EXPIRED, INTERRUPTED
from proxy.protocol import Event, Framing, ProtocolError, RequestHead
from proxy.reader import ClientReader
from proxy.relay import FirstRead, arm_parser, whole_response
from proxy.sockets import RECV_SIZE, Conn, PeerHangup, Timeout
from proxy.upstreams import Upstream


class Session(Protocol):
    """What the fast path uses of its session (`proxy.forward.Session`)."""

    balancer: Balancer
    conn: Conn
    reader: ClientReader
    peer: bytes
    trusted: bool
    proto: bytes
    idle: bool
    exchange: Exchange
    slot: Upstream | None
    replayed: bool


# How the fast path hands a session back to its task (see the module docstring).
READ: Final = 1
FED: Final = 2
ATTEMPT: Final = 3
CLOSE: Final = 4
AGAIN: Final = 5


class Pending:
    """An attempt the fast path began, for `forward` to go on with: the upstream whose slot
    it holds, the replica connection (None: the send failed at once, so a fresh one),
    the request bytes not yet sent, what the first read of the response gave, and the
    bytes of the response the client has not taken yet."""

    __slots__ = ("upstream", "conn", "unsent", "first", "reply_rest")

    def __init__(
        self,
        upstream: Upstream,
        conn: Conn | None,
        *,
        unsent: bytes = b"",
        first: FirstRead | None = None,
        reply_rest: bytes | None = None,
    ) -> None:
        self.upstream = upstream
        self.conn = conn
        self.unsent = unsent
        self.first = first
        self.reply_rest = reply_rest


class FastPath:
    """One session's fast path (see the module docstring)."""

    __slots__ = (
        "session",
        "task",
        "parked",
        "kind",
        "value",
        "head",
        "request",
        "framing",
        "start",
        "upstream",
        "rconn",
        "pending",
        "served",
    )

    def __init__(self, session: Session) -> None:
        self.session = session
        self.task: Task | None = None
        self.parked = False
        self.kind = 0  # the handover, once decided (0: none yet)
        self.value: bytes | BaseException | None = None  # READ's bytes or error, FED's error
        # The exchange under way (an upstream set: from its slot taken to its end).
        self.head: RequestHead | None = None
        self.request = b""
        self.framing = Framing.NONE
        self.start = 0.0
        self.upstream: Upstream | None = None
        self.rconn: Conn | None = None
        self.pending: Pending | None = None  # ATTEMPT's
        self.served = 0  # exchanges served in this `run`

    async def run(self) -> int:
        """Serve requests until the general path must go on; the handover kind (its
        value in `value`, an ATTEMPT's state in `head`, `request`, ..., `pending`)."""
        self.kind = 0
        self.value = None
        self.served = 0
        self.task = current_task()
        self._next_request()
        if not self.kind:
            self.parked = True
            await wait_task_rescheduled(self._abort)
        return self.kind

    def _hand(self, kind: int, value: bytes | BaseException | None = None) -> None:
        self.kind = kind
        self.value = value
        if self.parked:
            self.parked = False
            assert self.task is not None
            self.session.balancer.poller.wake_soon(self.task)

    def _abort(self, _: object) -> Abort:
        """The session is cancelled (the endpoint stops): give back what is held. Once
        handed back (its wake-up may be queued, `Poller.wake_soon`) the task goes on as
        handed, and the cancellation reaches it at its next checkpoint."""
        if not self.parked:
            return Abort.FAILED
        self.parked = False
        self._give_back()
        return Abort.SUCCEEDED

    def _give_back(self) -> None:
        s = self.session
        b = s.balancer
        b.poller.unwatch(s.conn)
        up, rconn = self.upstream, self.rconn
        if rconn is not None:
            b.poller.unwatch(rconn)
            s.conn.hangup_watcher = None
            rconn.close()
        if up is not None:
            if rconn is not None:  # set once `started` counted it
                b.stopped(up)
            s.slot = None
            b.release(up)
            b.finished(up, s.exchange.status or 502, self.start)
        self.upstream = self.rconn = None

    def _next_request(self) -> None:
        s = self.session
        b = s.balancer
        if b.draining or s.exchange.close_after:
            self._hand(CLOSE)
            return
        s.idle = True
        client = s.conn
        p = b.poller
        if client.maybe_readable:
            if self.served:
                self._hand(AGAIN)
                return
            if p.watchdog_parked:
                p.rouse()
            client.deadline = p.now + b.timeouts.client_idle
            self._on_client(0)
        else:
            p.watch(client, self._on_client, b.timeouts.client_idle)

    def _on_client(self, why: int) -> None:
        """A read edge (or the deadline) on the client's connection, between requests."""
        try:
            self._client_edge(why)
        except Exception as exc:  # a bug: this session ends (`Endpoint._serve` logs it)
            self._failed(exc)

    def _on_replica(self, why: int) -> None:
        """A read edge (the deadline, the client's hang-up) on the replica's connection."""
        try:
            self._replica_edge(why)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """An error in a callback, which runs in whichever task polls: it must not reach
        the poller. What is held is given back and the session's task raises `exc`."""
        self._give_back()
        self.kind = 0
        self._hand(READ, exc)

    def _client_edge(self, why: int) -> None:
        s = self.session
        client = s.conn
        if why:
            if why == EXPIRED:
                self._hand(READ, Timeout())
            else:
                self._hand(READ, trio.ClosedResourceError("connection closed while waiting"))
            return
        try:
            data = client.sock.recv(RECV_SIZE)
        except BlockingIOError:
            client.maybe_readable = False
            s.balancer.poller.watch(client, self._on_client, None)  # a late edge
            return
        except OSError as exc:
            self._hand(READ, exc)
            return
        n = len(data)
        client.maybe_readable = n == RECV_SIZE or n == 0 or client.peer_closed
        if not data:
            self._hand(READ, data)
            return
        s.idle = False
        reader = s.reader
        try:
            reader.feed(data)
        except ProtocolError as exc:
            self._hand(FED, exc)
            return
        whole = reader.whole_request()
        if whole is None or not self._send(*whole):
            self._hand(FED)

    def _send(self, head: RequestHead, body: bytes | None) -> bool:
        """Send a whole request to a pooled connection with a free slot; False (nothing
        done) when this is not the fast path's case."""
        s = self.session
        b = s.balancer
        if (
            not head.keep_alive
            or head.upgrade is not None
            or head.asks_h2c
            or b.guard is not None
            or b.upstream_h2c
        ):
            return False
        up = b.try_take(())
        if up is None:
            return False
        rconn = b.pool.take(up, b.poller.now, trust_recent=True)
        s.reader.clear()
        # From here on, what `forward` does before its first attempt.
        self.start = trio.current_time()
        b.began()
        s.slot = self.upstream = up
        framing = head.framing
        if framing is Framing.CHUNKED:  # whole: sent with a Content-Length
            framing = Framing.LENGTH
            head.content_length = len(body) if body else 0
        request = request_head_bytes(
            head,
            peer=s.peer,
            request_id=b.next_request_id(),
            framing=framing,
            trusted=s.trusted,
            proto=s.proto,
        )
        if body:
            request += body
        ex = s.exchange
        ex.close_after = False
        ex.status = 0
        ex.reusable = False
        s.replayed = False
        self.head, self.request, self.framing = head, request, framing
        if rconn is None:  # none pooled: `forward` connects (with the slot taken here)
            self._attempt(Pending(up, None))
            return True
        try:
            sent = rconn.sock.send(request)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The replica had reset it: it cannot have read the request (the stale rule).
            rconn.abort()
            self._attempt(Pending(up, None))
            return True
        b.started(up)
        self.rconn = rconn
        arm_parser(rconn, head)
        if sent < len(request):
            self._attempt(Pending(up, rconn, unsent=request[sent:]))
            return True
        s.conn.hangup_watcher = rconn
        if rconn.maybe_readable:
            p = b.poller
            if p.watchdog_parked:
                p.rouse()
            rconn.deadline = p.now + b.timeouts.read_idle
            self._on_replica(0)
        else:
            b.poller.watch(rconn, self._on_replica, b.timeouts.read_idle)
        return True

    def _replica_edge(self, why: int) -> None:
        rconn = self.rconn
        assert rconn is not None
        if why:
            first: FirstRead
            if why == EXPIRED:
                first = Timeout()
            elif why == INTERRUPTED:
                first = PeerHangup()
            else:
                assert why == CLOSED
                first = trio.ClosedResourceError("connection closed while waiting")
            self._attempt_on(first)
            return
        try:
            data = rconn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            rconn.maybe_readable = False
            self.session.balancer.poller.watch(rconn, self._on_replica, None)
            return
        except OSError as exc:
            self._attempt_on(exc)
            return
        n = len(data)
        rconn.maybe_readable = n == RECV_SIZE or n == 0 or rconn.peer_closed
        if not data:
            self._attempt_on(data)
            return
        parser = rconn.response_parser
        assert parser is not None and self.head is not None and self.upstream is not None
        try:
            events: list[Event] = parser.feed(data)
        except ProtocolError as exc:
            self._attempt_on(exc)
            return
        s = self.session
        out = whole_response(s.exchange, events, self.head, self.upstream, parser)
        if out is None:
            self._attempt_on(events)
            return
        client = s.conn
        try:
            taken = client.sock.send(out)
        except (BlockingIOError, OSError):
            taken = 0  # `relay` sends it (or finds the client gone)
        if taken == 0:
            self._attempt_on(events)
        elif taken < len(out):
            self._attempt(Pending(self.upstream, rconn, reply_rest=out[taken:]))
        else:
            s.exchange.reusable = parser.reusable
            self._done()

    def _attempt_on(self, first: FirstRead) -> None:
        assert self.upstream is not None
        self._attempt(Pending(self.upstream, self.rconn, first=first))

    def _attempt(self, pending: Pending) -> None:
        """Hand the attempt under way to `forward` (which owns its slot from now on)."""
        self.session.conn.hangup_watcher = None
        self.pending = pending
        self.upstream = self.rconn = None
        self._hand(ATTEMPT)

    def _done(self) -> None:
        """The response went whole to the client: end the exchange as `forward` does."""
        s = self.session
        b = s.balancer
        ex = s.exchange
        up, rconn = self.upstream, self.rconn
        assert up is not None and rconn is not None
        self.upstream = self.rconn = None
        s.conn.hangup_watcher = None
        b.stopped(up)
        if ex.reusable:
            b.pool.put(up, rconn, b.poller.now)
        else:
            rconn.close()
        s.slot = None
        status = ex.status
        b.release(up, status, False)
        b.finished(up, status or 502, self.start)
        b.fast_served += 1
        self.served += 1
        self._next_request()
