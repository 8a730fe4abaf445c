"""One client connection: read requests, forward each to a replica, relay the response.

The flow of one request (an "exchange"):
1. The head arrives (within `header_read` of its first byte) and is checked by the
   protocol core; a malformed request is answered 400/405/431/505 and the connection
   closes, nothing forwarded.
2. Pick the next upstream (round robin); no upstream at all -> 503 + Retry-After.
3. Take an idle pooled connection or connect. A connect failure marks the replica suspect
   and the request goes to the next upstream, always (nothing has been sent).
4. Send the head and whatever body has arrived; stream the rest of the body while reading
   the response (concurrently, so early answers and 100-continue work).
5. Relay the response as it arrives: one send per replica read, so SSE and chunked
   streams flush every chunk at once. Bodies are re-framed (Content-Length kept, otherwise
   chunked to HTTP/1.1 clients and close-delimited to HTTP/1.0 ones).

Retry rule: a request is re-sent to another replica only while nothing has reached the
client, the proxy still holds the whole request, and either the replica provably did not
get it (connect failure, a send that failed at once) or the method is idempotent.
Failures with nothing sent to the client get a clear answer (502 broken replica,
504 read-idle timeout); once bytes went out, the client connection is cut instead.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from proxy.headers import LAST_CHUNK, chunk, error_response, request_head_bytes
from proxy.headers import response_head_bytes as _response_head
from proxy.protocol import (
    END,
    EndOfMessage,
    Event,
    Framing,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)
from proxy.sockets import Conn, Timeout, connect
from proxy.upstreams import Upstream

if TYPE_CHECKING:
    from proxy.endpoint import Balancer

_RETRY_AFTER_S: Final = 1

# Outcomes of one attempt at one upstream.
_DONE: Final = 0  # response relayed completely
_RETRY: Final = 1  # failed before anything reached the client; safe to try another
_FAILED: Final = 2  # failed before anything reached the client; answer with self.status
_CUT: Final = 3  # failed after bytes reached the client, or the client went away


class ClientGone(Exception):
    """The client closed, reset or stopped reading."""


class ClientReader:
    """The client's byte stream as a queue of protocol events."""

    __slots__ = ("conn", "parser", "_events")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.parser = RequestParser()
        self._events: deque[Event] = deque()

    def has_events(self) -> bool:
        return bool(self._events)

    def feed(self, data: bytes) -> None:
        self._events.extend(self.parser.feed(data))

    def pop_ready(self) -> Event | None:
        return self._events.popleft() if self._events else None

    async def next_event(self, timeout: float) -> Event:  # noqa: ASYNC109
        """The next event; raises ClientGone at EOF, ProtocolError, Timeout."""
        events = self._events
        while not events:
            try:
                data = await self.conn.recv(timeout)
            except OSError as exc:
                raise ClientGone from exc
            if not data:
                raise ClientGone
            events.extend(self.parser.feed(data))
        return events.popleft()


class Session:
    """Serves one client connection until it closes, errs or the endpoint drains."""

    def __init__(self, balancer: Balancer, conn: Conn) -> None:
        self.balancer = balancer
        self.conn = conn
        self.reader = ClientReader(conn)
        self.peer = conn.peer.encode()
        self.idle = True  # between requests, no byte of the next one read yet
        self.status = 0  # the status of the response being sent
        self.close_after = False

    async def serve(self) -> None:
        b = self.balancer
        timeouts = b.timeouts
        reader = self.reader
        first = True
        try:
            while not b.draining:
                self.idle = True
                try:
                    if not reader.has_events():
                        # Wait for the first byte of the next request (client idle time).
                        if first:
                            data = await self.conn.recv(timeouts.client_idle)
                            first = False
                        else:
                            data = await self.conn.recv_wait_first(timeouts.client_idle)
                        if not data:
                            return
                        reader.feed(data)
                    self.idle = False
                    event = reader.pop_ready()
                    if event is None:
                        with trio.fail_after(timeouts.header_read):
                            event = await reader.next_event(timeouts.header_read)
                except ProtocolError as exc:
                    await self._answer(exc.status, exc.reason)
                    return
                except (ClientGone, OSError):
                    return
                except (Timeout, trio.TooSlowError):
                    if not self.idle:  # a head was under way: slowloris, or just slow
                        await self._answer(408, "request header timeout")
                    return
                if not isinstance(event, RequestHead):  # pragma: no cover - parser invariant
                    return
                if not await self.exchange(event) or self.close_after:
                    return
        finally:
            self.conn.close()

    async def _answer(self, status: int, message: str, *, close: bool = True) -> None:
        self.status = status
        try:
            await self.conn.send_all(
                error_response(
                    status,
                    message,
                    close=close,
                    retry_after=_RETRY_AFTER_S if status == 503 else None,
                ),
                self.balancer.timeouts.client_idle,
            )
        except (OSError, Timeout):
            self.close_after = True

    async def exchange(self, head: RequestHead) -> bool:
        """Forward one request; True when the client connection may carry another."""
        b = self.balancer
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
        request = request_head_bytes(
            head, peer=self.peer, request_id=b.next_request_id(), framing=framing
        )
        if framing is Framing.CHUNKED:
            request += b"".join(chunk(p) for p in parts if p)
        elif parts:
            request += b"".join(parts)
        self.close_after = not head.keep_alive or head.upgrade is not None
        self.status = 0
        tried: list[Upstream] = []
        upstream: Upstream | None = None
        outcome = _FAILED
        try:
            while True:
                upstream = b.upstreams.pick(tried)
                if upstream is None:
                    if not tried:
                        await self._answer(503, "no ready replica", close=self.close_after)
                        upstream = None
                        return not self.close_after
                    await self._answer(502, "no replica could be reached")
                    return False
                tried.append(upstream)
                outcome = await self._attempt(upstream, head, request, complete, framing)
                if outcome != _RETRY:
                    break
            if outcome == _FAILED:
                await self._answer(self.status, _MESSAGES.get(self.status, "bad gateway"))
                return False
            return outcome == _DONE and not self.close_after
        finally:
            b.finished(upstream, self.status or 502, start)

    async def _attempt(
        self,
        upstream: Upstream,
        head: RequestHead,
        request: bytes,
        complete: bool,
        framing: Framing,
    ) -> int:
        b = self.balancer
        timeouts = b.timeouts
        conn = b.pool.take(upstream)
        fresh = conn is None
        if conn is None:
            try:
                conn = await connect(upstream.host, upstream.port, timeouts.connect, b.watchdog)
            except (OSError, Timeout):
                b.suspect(upstream)
                return _RETRY
        b.started(upstream)
        try:
            try:
                await conn.send_all(request, timeouts.read_idle)
            except (OSError, Timeout):
                conn.abort()
                if fresh:
                    b.suspect(upstream)
                # The replica had reset the connection: it cannot have processed the request.
                return _RETRY if complete else self._fail(502)
            if complete:
                outcome = await self._relay(conn, head)
            else:
                outcome = await self._relay_while_sending(conn, head, framing)
            if outcome == _RETRY:
                if fresh:
                    b.suspect(upstream)
                if not (complete and head.idempotent):
                    outcome = self._fail(502)
            return outcome
        finally:
            b.stopped(upstream)
            if conn is not None and not conn.closed:
                if self._reusable:
                    b.pool.put(upstream, conn)
                else:
                    conn.close()

    def _fail(self, status: int) -> int:
        self.status = status
        return _FAILED

    async def _relay_while_sending(self, conn: Conn, head: RequestHead, framing: Framing) -> int:
        """Stream the rest of the request body while relaying the response."""
        outcome = _CUT
        body_error: BaseException | None = None
        body_done = False

        async def pump(cancel: trio.CancelScope) -> None:
            nonlocal body_error, body_done
            chunked = framing is Framing.CHUNKED
            timeouts = self.balancer.timeouts
            try:
                while True:
                    ev = await self.reader.next_event(timeouts.client_idle)
                    if ev is END:
                        if chunked:
                            await conn.send_all(LAST_CHUNK, timeouts.read_idle)
                        body_done = True
                        return
                    if isinstance(ev, bytes) and ev:
                        await conn.send_all(chunk(ev) if chunked else ev, timeouts.read_idle)
            except (ClientGone, ProtocolError, Timeout, OSError) as exc:
                body_error = exc
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, nursery.cancel_scope)
            outcome = await self._relay(conn, head)
            nursery.cancel_scope.cancel()
        if body_error is not None:
            self._reusable = False
            self.close_after = True
            if isinstance(body_error, ProtocolError) and self.status == 0:
                return self._fail(body_error.status)
            if isinstance(body_error, OSError | Timeout) and self.status == 0:
                return self._fail(502)
            return _CUT
        if not body_done:
            # The replica answered before reading the whole body: neither side can be reused.
            self._reusable = False
            self.close_after = True
        if outcome == _RETRY:  # part of the body reached the replica: never replay
            return self._fail(502)
        return outcome

    async def _relay(self, conn: Conn, head: RequestHead) -> int:
        """Read the response from the replica and send it on as it arrives."""
        self._reusable = False
        timeouts = self.balancer.timeouts
        client = self.conn
        parser = ResponseParser(head_request=head.method == b"HEAD")
        out_framing = Framing.NONE
        sent = False
        got_any = False
        while True:
            try:
                # Try before waiting even for the first byte: measured, it lowers latency
                # at one connection (the replica is often that fast).
                data = await conn.recv(timeouts.read_idle)
            except Timeout:
                return self._fail(504) if not sent else _CUT
            except OSError:
                data = b""
                if not got_any:
                    return _RETRY
            try:
                if data:
                    got_any = True
                    events = parser.feed(data)
                elif not got_any:
                    return _RETRY
                else:
                    events = parser.feed_eof()
            except ProtocolError:
                return self._fail(502) if not sent else _CUT
            out: list[bytes] = []
            tunnel = False
            for ev in events:
                if isinstance(ev, bytes):
                    if ev:
                        out.append(chunk(ev) if out_framing is Framing.CHUNKED else ev)
                elif ev is END:
                    if out_framing is Framing.CHUNKED:
                        out.append(LAST_CHUNK)
                elif isinstance(ev, ResponseHead):
                    if ev.status < 200 and ev.status != 101:
                        out.append(_response_head(ev, framing=Framing.NONE, close=False))
                        continue
                    self.status = ev.status
                    out_framing = ev.framing
                    if out_framing is Framing.CHUNKED or out_framing is Framing.CLOSE:
                        if head.http_version == "1.1":
                            out_framing = Framing.CHUNKED
                        else:
                            out_framing = Framing.CLOSE
                            self.close_after = True
                    if ev.status == 101:
                        tunnel = head.upgrade is not None
                        if not tunnel:
                            return self._fail(502)
                    if self.balancer.draining:
                        self.close_after = True
                    out.append(_response_head(ev, framing=out_framing, close=self.close_after))
            if out:
                try:
                    await client.send_all(b"".join(out), timeouts.client_idle)
                except (OSError, Timeout):
                    self.close_after = True
                    return _CUT
                sent = True
            if tunnel:
                await self._tunnel(conn, parser.tunnel_data or b"")
                return _DONE
            if parser.done:
                self._reusable = parser.reusable
                return _DONE

    async def _tunnel(self, upstream: Conn, pending: bytes) -> None:
        """After a 101: copy bytes both ways until both sides have closed."""
        self.close_after = True
        client = self.conn
        from_client = self.reader.parser.tunnel_data or b""

        async def copy(src: Conn, dst: Conn, first: bytes) -> None:
            try:
                if first:
                    await dst.send_all(first, math.inf)
                while True:
                    data = await src.recv(math.inf)
                    if not data:
                        break
                    await dst.send_all(data, math.inf)
                dst.shutdown_write()
            except (OSError, Timeout):
                src.abort()
                dst.abort()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, client, upstream, from_client)
            nursery.start_soon(copy, upstream, client, pending)

    _reusable = False


_MESSAGES: Final = {
    502: "the replica sent a broken response or closed the connection",
    504: "the replica did not answer in time",
}

SuspectCallback = Callable[[str], None]
__all__ = ["ClientGone", "ClientReader", "EndOfMessage", "Session", "SuspectCallback"]
