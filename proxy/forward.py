"""One client connection: read requests, forward each to a replica, retry where safe.

The flow of one request (an "exchange"):
1. The head arrives within `header_read` (from accept for a connection's first request,
   from its first byte on a kept-alive one; a trickled head does not extend it: 408) and
   is checked by the protocol core; a malformed request is answered
   400/405/431/501/505 and the connection closes, nothing forwarded.
2. Pick the next upstream (round robin, skipping for a moment those whose connect failed
   or hung). No upstream at all -> 503 + Retry-After at once, or, with the endpoint's hold
   mode (scale from zero), the request waits for one, bounded (`Balancer.hold`).
3. Take an idle pooled connection or connect (`proxy.connector`: a connect still pending
   after ~150 ms races one to the next upstream). A connect failure marks the replica
   suspect and the request goes to the next upstream, always (nothing has been sent).
4. Send the head and whatever body has arrived; stream the rest of the body while reading
   the response (concurrently, so early answers and 100-continue work), at the minimum
   body rate (`proxy.relay.BodyPace`). A chunked body still under way goes chunked only
   to an upstream known to speak HTTP/1.1 (a 1.1 response seen from it); for any other
   (an HTTP/1.0 replica, or one not heard from yet) it is read whole first, up to
   `MAX_BUFFERED_BODY`, and sent with a Content-Length (longer: 411).
5. Relay the response as it arrives (`proxy.relay`); a client that hangs up while the
   replica works ends the exchange, and the replica's connection is cut, not pooled.
The exchange's state (the response's status, whether either connection can carry another
request) lives in the connection's `Exchange`, and each attempt ends in an `Outcome`
(`proxy.exchange`), to which the retry rule below applies.

Retry rule. A request is sent again only while nothing has reached the client and the
proxy still holds the whole request (it arrived with its head), and only when one of:
- the replica provably never got it: connect failure, or a send that failed at once
  (the kernel had already seen the replica's reset) -> the next upstream, any method;
- the request went out on a *reused* pooled connection that the replica had closed
  before the request arrived ("stale": end-of-stream with nothing received, and the
  kernel reports the reset that a closed socket sends back for unexpected bytes) -> once,
  on a fresh connection to the same upstream, any method. A replica that read the request
  and then closed or crashed sends only its FIN (no reset: nothing was left unread), so
  this never replays a request that a live replica process has read;
- the replica reset or closed before a whole response head arrived (nothing, or a head
  cut short: a replica killed mid-request), on any connection, and the method is
  idempotent -> the next upstream (the replica is marked suspect if the connection was
  fresh: a stale keep-alive connection says nothing about the replica's health).
Failures with nothing sent to the client get a clear answer (502 broken replica,
504 read-idle timeout; as JSON to a client that asks for it, `proxy.answers`); once bytes
went out, the client connection is cut instead.
"""

from __future__ import annotations

from typing import Final

import trio

from proxy.answers import answer_for
from proxy.auth import Refused, discard_body
from proxy.balancer import Balancer
from proxy.connector import open_connection
from proxy.exchange import (
    CLIENT_CLOSED,
    CUT,
    DONE,
    FAILED,
    NOT_SENT,
    RETRY,
    STALE,
    Exchange,
    Outcome,
)
from proxy.fastpath import AGAIN, ATTEMPT, CLOSE, READ, FastPath, Pending
from proxy.h2.h1_to_h2c import forward_h1_to_h2c
from proxy.h2.server import is_h2c_upgrade, is_preface_start, serve_h2
from proxy.headers import chunk, request_head_bytes
from proxy.linger import linger
from proxy.protocol import END, Framing, ProtocolError, RequestHead
from proxy.queue import SHUTTING_DOWN, Refusal
from proxy.reader import ClientGone, ClientReader
from proxy.relay import (
    BodyPace,
    BodyTooSlow,
    client_gone,
    next_body_event,
    relay,
    relay_while_sending,
)
from proxy.sockets import Conn, Timeout
from proxy.upstreams import Upstream

_RETRY_AFTER_S: Final = 1
# While a request waits in the queue its client is read (so a hang-up is seen), this much
# at most, in reads of at most this long.
_WATCH_BYTES: Final = 256 * 1024
_WATCH_S: Final = 3600.0
# The most of a chunked request body read whole for an upstream that may be HTTP/1.0.
MAX_BUFFERED_BODY: Final = 8 * 1024 * 1024


class Session:
    """Serves one client connection until it closes, errs or the endpoint drains."""

    __slots__ = (
        "balancer",
        "conn",
        "reader",
        "peer",
        "trusted",
        "proto",
        "idle",
        "linger",
        "exchange",
        "slot",
        "replayed",
        "fast",
    )

    def __init__(self, balancer: Balancer, conn: Conn, reader: ClientReader | None = None) -> None:
        """`reader`: the connection's own, when another owner read requests from it before
        (the model gateway's, `proxy.gateway`: a session per request, on this balancer)."""
        self.balancer = balancer
        self.conn = conn
        self.reader = ClientReader(conn) if reader is None else reader
        self.peer = conn.peer.encode()
        self.trusted = balancer.is_trusted(conn.peer)  # its Forwarded etc. are kept
        self.proto = b"https" if conn.secure else b"http"  # X-Forwarded-Proto, Forwarded
        self.idle = True  # between requests, no byte of the next one read yet
        self.linger = False  # an answer of the proxy's own closes the connection
        self.exchange = Exchange(balancer, conn, self.reader)  # the request being served
        self.slot: Upstream | None = None  # the upstream whose slot the request holds
        self.replayed = False  # the request was sent again after its replica may have read it
        # Kept-alive plain requests served from the poller's callbacks (`proxy.fastpath`).
        self.fast = None if conn.secure else FastPath(self)

    async def serve(self) -> None:
        b = self.balancer
        reader = self.reader
        conn = self.conn
        ex = self.exchange
        poller = b.poller
        # The first head is due `header_read` after accept: a connection that says nothing,
        # or trickles, holds its slot no longer than that (not `client_idle`).
        deadline = trio.current_time() + b.timeouts.header_read
        first = True
        fast = self.fast
        try:
            # Draining ends the loop before another request is read, but not before the
            # first: a connection accepted before the drain began gets its answer.
            while first or not b.draining:
                self.idle = True
                timeouts = b.timeouts  # per request: a change applies to the next one
                resume = False
                try:
                    if not reader.has_events():
                        data: bytes | None
                        if fast is not None and not first:
                            kind = await fast.run()  # `proxy.fastpath`: back with its handover
                            if kind is AGAIN:
                                await trio.lowlevel.checkpoint()
                                continue
                            if kind is CLOSE:
                                return
                            value = fast.value
                            if isinstance(value, BaseException):
                                raise value
                            resume = kind is ATTEMPT
                            data = value if kind is READ else None
                        else:
                            # The first byte of the request: on a kept-alive connection,
                            # within client idle time, and the head within header_read of it.
                            wait = deadline - trio.current_time() if first else timeouts.client_idle
                            data = await conn.recv_wait_first(wait if wait > 0 else 0.0)
                        if resume:
                            pass
                        elif data is None:  # the fast path fed the reader
                            deadline = poller.now + timeouts.header_read
                        else:
                            if not data:
                                return
                            if first and is_preface_start(data):  # HTTP/2: prior knowledge
                                self.idle = False  # a drain sends its GOAWAY, not a close
                                await serve_h2(b, conn, data)
                                return
                            if not first:
                                deadline = poller.now + timeouts.header_read
                            reader.feed(data)
                    elif not first:
                        deadline = poller.now + timeouts.header_read
                    first = False
                    self.idle = False
                    event = None if resume else reader.pop_ready()
                    if event is None and not resume:  # a head split over reads
                        event = await reader.rest_of_head(deadline)
                        if event is None:
                            return
                except ProtocolError as exc:
                    await self._answer(None, exc.status, exc.reason)
                    return
                except (ClientGone, OSError):
                    return
                except Timeout:
                    if not self.idle:  # a head was under way: slowloris, or just slow
                        await self._answer(None, 408, "request header timeout")
                    return
                if resume:
                    assert fast is not None
                    if not await self._resume(fast) or ex.close_after:
                        return
                    continue
                if not isinstance(event, RequestHead):  # pragma: no cover - parser invariant
                    return
                if not await self.forward(event) or ex.close_after:
                    return
        finally:
            try:
                if self.linger:
                    await linger(self.conn)
            finally:
                conn.close()
                # Their cycles (the fast path with the session, the parser with llhttp),
                # broken: refcounting frees the connection's objects now, not a full
                # garbage collection later (`proxy.gc_policy`).
                self.fast = None
                reader.parser.close()

    async def _answer(
        self, head: RequestHead | None, status: int, message: str, *, close: bool = True
    ) -> None:
        """Answer the request `head` (None: no head was parsed) with the proxy's own error,
        in the form it asks for (`proxy.answers`)."""
        ex = self.exchange
        ex.status = status
        try:
            await self.conn.send_all(
                answer_for(
                    head,
                    status,
                    message,
                    close=close,
                    retry_after=_RETRY_AFTER_S if status in (429, 503) else None,
                ),
                self.balancer.timeouts.client_idle,
            )
        except (OSError, Timeout):
            ex.close_after = True
            return
        if close:
            self.linger = True  # after the request is recorded: see `serve`

    async def forward(self, head: RequestHead, *, admitted: bool = False) -> bool:
        """Forward one request; True when the client connection may carry another.
        `admitted`: its credential was checked already (the gateway's own, `proxy.gateway`),
        so this endpoint's guard does not judge it."""
        b = self.balancer
        ex = self.exchange
        if head.asks_h2c and is_h2c_upgrade(head, self.conn):
            await serve_h2(b, self.conn, b"", upgrade=head)  # each stream checked there
            return False
        guard = None if admitted else b.guard
        if guard is not None and (refused := await guard.admit(head)) is not None:
            return await self._unauthorized(head, refused)
        if b.upstream_h2c:  # an HTTP/1.1 client to an h2c replica (`proxy.h2.h1_to_h2c`)
            return await forward_h1_to_h2c(
                b,
                self.conn,
                self.reader,
                head,
                peer=self.peer,
                trusted=self.trusted,
                proto=self.proto,
            )
        start = trio.current_time()
        b.began()
        # The body that has already arrived goes out with the head.
        parts: list[bytes] = []
        complete = False
        reader = self.reader
        while True:
            ev = reader.pop_ready()
            if ev is None:
                break
            if ev is END:
                complete = True
                break
            if isinstance(ev, bytes):
                parts.append(ev)
        framing = head.framing
        if complete and framing is Framing.CHUNKED:
            # Whole body at hand: send it with a Content-Length, which every app accepts.
            framing = Framing.LENGTH
            head.content_length = sum(len(p) for p in parts)
        request_id = b.next_request_id()
        request = request_head_bytes(
            head,
            peer=self.peer,
            request_id=request_id,
            framing=framing,
            trusted=self.trusted,
            proto=self.proto,
        )
        if parts:
            if framing is Framing.CHUNKED:
                request += b"".join(chunk(p) for p in parts if p)
            else:
                request += b"".join(parts)
        ex.close_after = not head.keep_alive or head.upgrade is not None
        ex.status = 0
        self.slot = None
        self.replayed = False
        return await self._exchange(head, request, parts, complete, framing, request_id, start)

    async def _resume(self, fast: FastPath) -> bool:
        """Go on with the attempt the fast path began (`proxy.fastpath.Pending`)."""
        head, pending = fast.head, fast.pending
        assert head is not None and pending is not None
        fast.head = fast.pending = None
        return await self._exchange(
            head, fast.request, [], True, fast.framing, b"", fast.start, pending
        )

    async def _exchange(
        self,
        head: RequestHead,
        request: bytes,
        parts: list[bytes],
        complete: bool,
        framing: Framing,
        request_id: bytes,
        start: float,
        pending: Pending | None = None,
    ) -> bool:
        """The attempts at upstreams, by the retry rule (`pending`: the first one, begun
        by the fast path, which took its slot); True when the connection goes on."""
        b = self.balancer
        ex = self.exchange
        tried: list[Upstream] = [] if pending is None else [pending.upstream]
        outcome = DONE
        try:
            if not complete and b.retry_all and _replayable(head):
                # `retry = "all"`: a request can be replayed only while the proxy holds all
                # of it; read the body whole first (it is bounded), before taking a slot.
                whole = await self._whole_request(head, parts, request_id)
                if whole is None:
                    return False  # answered (408, 411, 400) or the client left
                complete, framing, request = True, Framing.LENGTH, whole
            while True:
                if pending is not None:
                    outcome = await self._attempt(tried, head, request, complete, framing, pending)
                    pending = None
                    if outcome is not RETRY:
                        break
                    self._release(failed=True)
                got: Upstream | Refusal | None = b.try_take(tried)
                if got is None:
                    got = await self._queued(tried)
                if got is None:  # every upstream there is was tried: each failed
                    await self._answer(head, 502, _NO_ANSWER)
                    return False
                if isinstance(got, Refusal):
                    if ex.status == CLIENT_CLOSED:  # it hung up while queued
                        return False
                    close = ex.close_after or b.draining
                    await self._answer(head, got.status, got.message, close=close)
                    return not close
                upstream = self.slot = got
                tried.append(upstream)
                if not complete and framing is Framing.CHUNKED and upstream not in b.http11:
                    # Maybe HTTP/1.0, which cannot read chunked: read it whole, then send it
                    # with a Content-Length, to this upstream and any other tried after it.
                    whole = await self._whole_request(head, parts, request_id)
                    if whole is None:
                        self._release(failed=False)  # it never saw the request
                        return False  # answered (408, 411, 400) or the client left
                    complete, framing, request = True, Framing.LENGTH, whole
                outcome = await self._attempt(tried, head, request, complete, framing)
                if outcome is not RETRY:
                    break
                self._release(failed=True)
            if outcome is FAILED:
                await self._answer(head, ex.status, _MESSAGES.get(ex.status, _BAD_GATEWAY))
                return False
            if outcome is CUT:
                # Cut mid-response: a reset, so that no client takes what it got for the whole.
                self.conn.abort()
                return False
            return outcome is DONE and not ex.close_after
        finally:
            last = self.slot
            if last is not None:
                status = ex.status
                failed = outcome is CUT or (outcome is FAILED and status in (502, 504))
                self._release(failed=failed, status=status)
            b.finished(last, ex.status or 502, start)

    def _release(self, *, failed: bool, status: int = 0) -> None:
        """Give back the slot of the upstream just tried (`proxy.queue`), reporting its
        result for passive health (`proxy.outlier`)."""
        upstream = self.slot
        if upstream is not None:
            self.slot = None
            if status == CLIENT_CLOSED:
                status, failed = 0, False  # the client left: says nothing of the replica
            self.balancer.release(upstream, status, failed)

    async def _queued(self, tried: list[Upstream]) -> Upstream | Refusal | None:
        """`Balancer.acquire`, while watching the client: one that hangs up leaves the
        queue at once (its bytes, a body or a next request, are kept for later)."""
        b = self.balancer
        result: Upstream | Refusal | None = None

        async def wait() -> None:
            nonlocal result
            result = await b.acquire(tried)
            nursery.cancel_scope.cancel()

        left = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                left = await self._client_left()
                nursery.cancel_scope.cancel()
        except BaseException:  # cancelled from outside (the endpoint stops) once granted
            if isinstance(result, Upstream):
                b.release(result)
            raise
        if left:
            if isinstance(result, Upstream):  # granted in the same instant: given back
                b.release(result)
            self.exchange.status = CLIENT_CLOSED
            return SHUTTING_DOWN  # never sent: the status says the client left
        return result

    async def _client_left(self) -> bool:
        """Read what the client sends while its request waits (into the reader, bounded),
        True once it hangs up; never returns otherwise (the caller cancels it)."""
        reader = self.reader
        conn = self.conn
        got = 0
        while got < _WATCH_BYTES:
            try:
                data = await conn.recv(_WATCH_S)
            except Timeout:
                continue
            except (OSError, trio.ClosedResourceError):
                return True
            if not data:
                return True
            got += len(data)
            try:
                reader.feed(data)
            except ProtocolError:
                self.exchange.close_after = True  # a bad next request: no more after this
                break
        await trio.sleep_forever()
        return False  # pragma: no cover - sleep_forever never returns

    async def _unauthorized(self, head: RequestHead, refused: Refused) -> bool:
        """A 401 (`proxy.auth`), never forwarded; True when the connection goes on."""
        b, start = self.balancer, trio.current_time()
        assert b.guard is not None
        b.began()
        keep = head.keep_alive and head.upgrade is None
        keep = keep and await discard_body(self.reader, head, b.timeouts.header_read)
        try:
            await self.conn.send_all(
                b.guard.answer(head, refused, close=not keep), b.timeouts.client_idle
            )
        except (OSError, Timeout):
            keep = False
        b.finished(None, 401, start)
        self.exchange.status, self.exchange.close_after = 401, not keep
        return keep

    async def _whole_request(
        self, head: RequestHead, parts: list[bytes], request_id: bytes
    ) -> bytes | None:
        """The request with the rest of its body read (`_buffer_body`), sent with a
        Content-Length; None once answered (408, 411, 400) or the client left."""
        body = await self._buffer_body(head, parts)
        if body is None:
            return None
        head.content_length = len(body)
        request = request_head_bytes(
            head,
            peer=self.peer,
            request_id=request_id,
            framing=Framing.LENGTH,
            trusted=self.trusted,
            proto=self.proto,
        )
        return request + body

    async def _buffer_body(self, head: RequestHead, parts: list[bytes]) -> bytes | None:
        """The rest of a chunked body, read whole (at the body rate, up to
        `MAX_BUFFERED_BODY`); None once answered (408, 411, 400) or the client left."""
        b = self.balancer
        pace = BodyPace(b.timeouts, b.poller)
        size = sum(len(p) for p in parts)
        try:
            while True:
                ev = await next_body_event(self.reader, pace)
                if ev is END:
                    return b"".join(parts)
                if isinstance(ev, bytes):
                    size += len(ev)
                    if size > MAX_BUFFERED_BODY:
                        message = "a chunked body over 8 MiB needs a Content-Length here"
                        await self._answer(head, 411, message)
                        return None
                    parts.append(ev)
        except ProtocolError as exc:
            await self._answer(head, exc.status, exc.reason)
        except BodyTooSlow:
            await self._answer(head, 408, _MESSAGES[408])
        except ClientGone:
            self.exchange.status = CLIENT_CLOSED
        return None

    async def _attempt(
        self,
        tried: list[Upstream],
        head: RequestHead,
        request: bytes,
        complete: bool,
        framing: Framing,
        pending: Pending | None = None,
    ) -> Outcome:
        """Send the request to the upstream of the slot held (`self.slot`) and relay its
        answer; see the retry rule. A hanging connect raced to another upstream
        (`proxy.connector`, which adds it to `tried`) moves the slot to the one that won.
        `pending`: the fast path began it on a pooled connection (None there: its send
        failed at once, the stale case).
        """
        b = self.balancer
        upstream = self.slot
        assert upstream is not None
        if pending is not None:
            conn = pending.conn
            reused = conn is not None  # None: its send failed at once (stale): a fresh one
            if conn is None:
                pending = None
        else:
            # A pooled connection is checked (peeked) before reuse unless it was pooled
            # moments ago and the request could go again after all (see the retry rule).
            conn = b.pool.take(upstream, b.poller.now, trust_recent=complete)
            reused = conn is not None
        while True:
            if conn is None:
                opened = await open_connection(b, upstream, tried)
                if opened is None:
                    return RETRY
                winner, conn = opened
                if winner is not upstream:  # the race's winner holds its own slot
                    b.release(upstream)
                    upstream = self.slot = winner
            outcome = await self._send_and_relay(
                conn, upstream, head, request, complete, framing, reused, pending
            )
            pending = None
            if outcome is not STALE:
                break
            conn = None  # once more, on a fresh connection (`reused` only now and then)
            reused = False
        if outcome is NOT_SENT:
            if not reused:
                b.suspect(upstream)
            return RETRY
        if outcome is RETRY:
            if not reused:
                b.suspect(upstream)
            if complete and head.idempotent:
                return RETRY
            if complete and b.retry_all and not self.replayed and b.may_replay():
                self.replayed = True  # `retry = "all"`: once, within the budget
                return RETRY
            self.exchange.status = 502
            return FAILED
        return outcome

    async def _send_and_relay(
        self,
        conn: Conn,
        upstream: Upstream,
        head: RequestHead,
        request: bytes,
        complete: bool,
        framing: Framing,
        reused: bool,
        pending: Pending | None,
    ) -> Outcome:
        b = self.balancer
        ex = self.exchange
        if pending is None:
            b.started(upstream)
            ex.reusable = False
        else:  # begun by the fast path (`started` counted there)
            request = pending.unsent
        try:
            try:
                if request:
                    await conn.send_all(request, b.timeouts.read_idle)
            except (OSError, Timeout):
                conn.abort()
                if not complete:
                    ex.status = 502
                    return FAILED
                # The replica had reset the connection: it cannot have read the request.
                return STALE if reused else NOT_SENT
            if pending is not None and pending.reply_rest is not None:
                outcome = await self._send_rest(conn, pending.reply_rest)
            elif complete:
                first = None if pending is None else pending.first
                outcome = await relay(ex, conn, head, upstream, first)
            else:
                outcome = await relay_while_sending(ex, conn, head, framing, upstream)
            if outcome is STALE and not (reused and complete):
                outcome = RETRY  # a fresh connection closed unread: a broken replica
            return outcome
        finally:
            b.stopped(upstream)
            if not conn.closed:
                if ex.reusable:
                    b.pool.put(upstream, conn, b.poller.now)
                elif ex.status == CLIENT_CLOSED:
                    conn.abort()  # the replica sees a reset at once, and stops generating
                else:
                    conn.close()

    async def _send_rest(self, conn: Conn, rest: bytes) -> Outcome:
        """The rest of a whole response the fast path sent in part."""
        try:
            await self.conn.send_all(rest, self.balancer.timeouts.client_idle)
        except (OSError, Timeout):
            return client_gone(self.exchange)
        parser = conn.response_parser
        self.exchange.reusable = parser is not None and parser.reusable
        return DONE


def _replayable(head: RequestHead) -> bool:
    """A body small enough to hold whole for a replay: known to fit, or chunked (read up to
    `MAX_BUFFERED_BODY`, over it 411)."""
    if head.framing is Framing.CHUNKED:
        return True
    return head.framing is Framing.LENGTH and (head.content_length or 0) <= MAX_BUFFERED_BODY


_BAD_GATEWAY: Final = "the replica sent a broken response or closed the connection"
_NO_ANSWER: Final = "no replica answered: each one tried refused or closed the connection"
_MESSAGES: Final = {
    400: "malformed request body",
    408: "request body too slow",
    502: _BAD_GATEWAY,
    504: "the replica did not answer in time",
}
