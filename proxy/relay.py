"""Relaying one response from a replica to the client, while the request body still streams.

The relay reads the replica's response as it arrives and sends each piece on at once (one
client send per replica read, so SSE and chunked streams flush every chunk). Bodies are
re-framed: Content-Length kept, otherwise chunked to HTTP/1.1 clients and close-delimited
to HTTP/1.0 ones, except a body with a transfer coding of its own (`gzip, chunked`),
whose Transfer-Encoding goes on as sent (an HTTP/1.0 client gets 502 instead).
Interim (1xx) responses go to HTTP/1.1 clients only.

A response cut short after bytes went to the client (reset, early end, broken framing,
read-idle timeout) is never ended cleanly: the attempt is CUT with 502/504 recorded (never
the replica's 2xx) and `forward` aborts the client connection with a reset, which is the
only signal a close-delimited body has. Each response's version says whether its
upstream speaks HTTP/1.1 (`Balancer.http11`, which `forward` reads for request bodies).

The request body streamed alongside keeps a minimum rate (`BodyPace`): slower, it is cut,
with 408 while no response has begun.

It returns how the attempt ended (an `Outcome`, `proxy.exchange`) and records what the
response says on the client connection's `Exchange`: `status` (the response being sent),
`close_after` (the client connection cannot carry another request) and `reusable` (the
replica's connection can). While it waits on the replica, a hang-up by the client
interrupts the wait (`sockets.PeerHangup`): the replica's connection is then cut, which is
how a model server learns that nobody wants the rest of a generation.

One `ResponseParser` serves every response of a replica connection (`Conn.response_parser`,
re-armed by `next_response`): a connection is pooled only after a complete response.
"""

from __future__ import annotations

import errno
from typing import Final

import trio

from proxy.balancer import EndpointTimeouts
from proxy.exchange import (
    CLIENT_CLOSED,
    CUT,
    DONE,
    FAILED,
    RETRY,
    STALE,
    Exchange,
    Outcome,
)
from proxy.headers import LAST_CHUNK, chunk
from proxy.headers import response_head_bytes as _response_head
from proxy.poller import Poller
from proxy.protocol import (
    END,
    Event,
    Framing,
    ProtocolError,
    RequestHead,
    ResponseHead,
    ResponseParser,
)
from proxy.reader import ClientGone, ClientReader
from proxy.sockets import Conn, PeerHangup, Timeout
from proxy.stream_relay import StreamRelay
from proxy.tunnel import tunnel
from proxy.upstreams import Upstream

# SO_ERROR after an end-of-stream: the replica's kernel reset the connection in answer to
# bytes that reached an already closed socket (see `forward` for the retry rule).
_RESET_AFTER_CLOSE: Final = frozenset({errno.EPIPE, errno.ECONNRESET})


def _eof_outcome(conn: Conn) -> Outcome:
    """Nothing arrived before end-of-stream: STALE when a reset proves nobody read it."""
    try:
        err = conn.sock.getsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_ERROR)
    except OSError:
        return RETRY
    return STALE if err in _RESET_AFTER_CLOSE else RETRY


class BodyTooSlow(Exception):
    """A request body came slower than `body_min_rate` (or stalled past `client_idle`)."""


class BodyPace:
    """The minimum request body rate: each window of `body_rate_window` seconds must bring
    `body_min_rate * body_rate_window` body bytes (chunk framing does not count). A window
    ends early, and the next begins, as soon as its share has arrived, so a body that
    comes fast and then pauses gets a whole window for the pause; a client silent for a
    window, or trickling, is cut at the window's end (on the poller's coarse clock)."""

    __slots__ = ("_poller", "_need", "_window", "_idle", "_start", "_got")

    def __init__(self, timeouts: EndpointTimeouts, poller: Poller) -> None:
        self._poller = poller
        self._window = timeouts.body_rate_window
        self._need = timeouts.body_min_rate * timeouts.body_rate_window
        self._idle = timeouts.client_idle
        self._start = poller.now
        self._got = 0

    def timeout(self) -> float:
        """How long the next read may wait. Raises BodyTooSlow once the window is over."""
        left = self._start + self._window - self._poller.now
        if left <= 0:
            raise BodyTooSlow
        return left if left < self._idle else self._idle

    def got(self, n: int) -> None:
        self._got += n
        now = self._poller.now
        if self._got >= self._need:
            self._start = now
            self._got = 0
        elif now >= self._start + self._window:
            raise BodyTooSlow


async def next_body_event(reader: ClientReader, pace: BodyPace) -> Event:
    """The next event of a request body, at `pace`. Raises ClientGone, ProtocolError,
    BodyTooSlow (a read that waited out its window or `client_idle` too)."""
    ev = reader.pop_ready()
    while ev is None:
        try:
            data = await reader.conn.recv(pace.timeout())
        except Timeout:
            raise BodyTooSlow from None
        except OSError as exc:
            raise ClientGone from exc
        if not data:
            raise ClientGone
        reader.feed(data)
        ev = reader.pop_ready()
    if type(ev) is bytes:
        pace.got(len(ev))
    return ev


# What the fast path (`proxy.fastpath`) already read of a response when it hands the rest
# to `relay`: the first read's bytes (b"": end-of-stream), its error, or the events it
# parsed from them (nothing of which reached the client).
FirstRead = (
    bytes | OSError | Timeout | PeerHangup | trio.ClosedResourceError | ProtocolError | list[Event]
)


def arm_parser(conn: Conn, head: RequestHead) -> ResponseParser:
    """The replica connection's response parser, ready for the response to `head`."""
    parser = conn.response_parser
    if parser is None:
        parser = conn.response_parser = ResponseParser(head_request=head.method == b"HEAD")
    else:  # a pooled connection: its last response left the parser at a boundary
        parser.next_response(head_request=head.method == b"HEAD")
    return parser


def whole_response(
    ex: Exchange, events: list[Event], head: RequestHead, upstream: Upstream, parser: ResponseParser
) -> bytes | None:
    """The common case, a whole small final response in one read: the bytes for the
    client (its status recorded on `ex`), or None when `events` are anything else."""
    if len(events) != 3:
        return None
    ev = events[0]
    if not (
        type(ev) is ResponseHead
        and ev.status >= 200
        and ev.status != 101
        and ev.transfer_coding is None
    ):
        return None
    body = events[1]
    if type(body) is not bytes or events[2] is not END:
        return None
    if ev.http_version != parser.version_seen:
        _learn_version(ex, ev, upstream, parser)
    out_framing = _framing_for(ex, ev, head)
    hb = _response_head(ev, framing=out_framing, close=ex.close_after)
    if out_framing is Framing.CHUNKED:
        return hb + chunk(body) + LAST_CHUNK if body else hb + LAST_CHUNK
    return hb + body


async def relay(
    ex: Exchange,
    conn: Conn,
    head: RequestHead,
    upstream: Upstream,
    first: FirstRead | None = None,
    *,
    stream: bool = True,
) -> Outcome:
    """Read the response from the replica on `conn` and send it on as it arrives.

    A response cut short once bytes reached the client (a reset, an early end, a broken
    chunk, the read-idle timeout) returns CUT with a 5xx status recorded, and the caller
    aborts the client connection: never a clean end, never counted as the replica's 2xx.
    `first`: what the fast path read already (its parser is armed then). `stream`: a
    body still arriving once its head went out goes on from the poller's callbacks
    (`proxy.stream_relay`) when both connections are plain.
    """
    ex.reusable = False
    timeouts = ex.balancer.timeouts
    read_idle = timeouts.read_idle
    client = ex.client
    parser = arm_parser(conn, head) if first is None else conn.response_parser
    assert parser is not None
    out_framing = Framing.NONE
    sent = False
    got_any = False
    final = False  # the final response head is among what went to the client
    stream = stream and not client.secure and not conn.secure
    client.hangup_watcher = conn
    try:
        while True:
            events: list[Event] | None = None
            try:
                if first is None:
                    data = await conn.recv_wait_first(read_idle)
                else:
                    pre, first = first, None
                    if isinstance(pre, ProtocolError):
                        ex.status = 502
                        return FAILED
                    if isinstance(pre, BaseException):
                        raise pre
                    if isinstance(pre, list):
                        events, data, got_any = pre, b"", True
                    else:
                        data = pre
            except Timeout:
                ex.status = 504
                return CUT if sent else FAILED
            except PeerHangup:
                ex.status = ex.status or CLIENT_CLOSED
                ex.close_after = True
                return CUT
            except OSError:
                if not got_any or not sent:
                    return RETRY  # nothing reached the client (a head cut short)
                ex.status = 502  # reset mid-body: even a close-delimited one is cut
                return CUT
            if events is None:
                try:
                    if data:
                        got_any = True
                        events = parser.feed(data)
                    elif not got_any:
                        return _eof_outcome(conn)
                    elif not sent:
                        # Cut short inside the head (a replica killed between two writes of
                        # it): nothing reached the client, so this is as good as no answer.
                        return RETRY
                    else:
                        events = parser.feed_eof()
                except ProtocolError:
                    ex.status = 502
                    return CUT if sent else FAILED
            if len(events) == 3 and out_framing is Framing.NONE:
                # The common case: a whole small response in one read.
                out = whole_response(ex, events, head, upstream, parser)
                if out is not None:
                    try:
                        # At once when the kernel takes it all (no coroutine to run).
                        taken = 0 if client.secure else client.send_now(out)
                        if taken < len(out):
                            await client.send_all(out[taken:], timeouts.client_idle)
                    except (OSError, Timeout):
                        return client_gone(ex)
                    ex.reusable = parser.reusable
                    return DONE
            parts: list[bytes] = []
            tunnelling = False
            for ev in events:
                if type(ev) is bytes:
                    if ev:
                        parts.append(chunk(ev) if out_framing is Framing.CHUNKED else ev)
                elif ev is END:
                    if out_framing is Framing.CHUNKED:
                        parts.append(LAST_CHUNK)
                elif isinstance(ev, ResponseHead):
                    if ev.http_version != parser.version_seen:
                        _learn_version(ex, ev, upstream, parser)
                    if ev.status < 200 and ev.status != 101:
                        if head.http_version == "1.1":  # HTTP/1.0 has no interim answers
                            parts.append(_response_head(ev, framing=Framing.NONE, close=False))
                        continue
                    if ev.status == 101:
                        if head.upgrade is None:
                            ex.status = 502
                            return FAILED
                        tunnelling = True
                    if ev.transfer_coding is not None and head.http_version != "1.1":
                        # gzip, chunked (or gzip alone) cannot go to an HTTP/1.0 client as
                        # sent, and undoing a coding is not the proxy's to do.
                        ex.status = 502
                        return CUT if sent else FAILED
                    out_framing = _framing_for(ex, ev, head)
                    parts.append(_response_head(ev, framing=out_framing, close=ex.close_after))
                    final = True
            if parts:
                try:
                    await client.send_all(b"".join(parts), timeouts.client_idle)
                except (OSError, Timeout):
                    return client_gone(ex)
                sent = True
            if tunnelling:
                client.hangup_watcher = None
                ex.close_after = True
                await tunnel(
                    client,
                    conn,
                    ex.reader.parser.tunnel_data or b"",
                    parser.tunnel_data or b"",
                    read_idle,
                )
                return DONE
            if parser.done:
                ex.reusable = parser.reusable
                return DONE
            if final and stream and sent:
                # The body is still arriving: one wait for all of it (`proxy.stream_relay`).
                chunked = out_framing is Framing.CHUNKED
                return await StreamRelay(ex, conn, parser, chunked).run()
    finally:
        client.hangup_watcher = None


def client_gone(ex: Exchange) -> Outcome:
    """The client stopped reading or left while the response was sent."""
    ex.status = CLIENT_CLOSED
    ex.close_after = True
    return CUT


def _learn_version(
    ex: Exchange, ev: ResponseHead, upstream: Upstream, parser: ResponseParser
) -> None:
    """Which upstreams speak HTTP/1.1: only those get a request body streamed chunked.
    Looked at when the version differs from the connection's last response's (a
    connection whose upstream left the set is never pooled again)."""
    parser.version_seen = ev.http_version
    if ev.http_version == "1.1":
        ex.balancer.http11.add(upstream)
    else:
        ex.balancer.http11.discard(upstream)


def _framing_for(ex: Exchange, ev: ResponseHead, head: RequestHead) -> Framing:
    """Record the final response's status; how its body goes to this client."""
    ex.status = ev.status
    framing = ev.framing
    if ev.transfer_coding is not None:
        # Passed on as sent (HTTP/1.1 clients only): chunked last, or close-delimited.
        if framing is Framing.CLOSE:
            ex.close_after = True
    elif framing is Framing.CHUNKED or framing is Framing.CLOSE:
        if head.http_version == "1.1":
            framing = Framing.CHUNKED
        else:
            framing = Framing.CLOSE
            ex.close_after = True
    if ex.balancer.draining:
        ex.close_after = True
    return framing


async def relay_while_sending(
    ex: Exchange, conn: Conn, head: RequestHead, framing: Framing, upstream: Upstream
) -> Outcome:
    """Stream the rest of the request body to the replica while relaying the response.

    The body must keep `BodyPace`; a slower one (or a broken chunk) is cut: the client
    gets 408 (400) while no response has begun, else its connection is aborted.
    """
    body_error: BaseException | None = None
    body_done = False
    timeouts = ex.balancer.timeouts
    reader = ex.reader
    pace = BodyPace(timeouts, ex.balancer.poller)

    async def pump(cancel: trio.CancelScope) -> None:
        nonlocal body_error, body_done
        chunked = framing is Framing.CHUNKED
        try:
            while True:
                ev = await next_body_event(reader, pace)
                if ev is END:
                    if chunked:
                        await conn.send_all(LAST_CHUNK, timeouts.read_idle)
                    body_done = True
                    return
                if isinstance(ev, bytes) and ev:
                    await conn.send_all(chunk(ev) if chunked else ev, timeouts.read_idle)
        except (ClientGone, ProtocolError, BodyTooSlow, Timeout, OSError) as exc:
            body_error = exc
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, nursery.cancel_scope)
        # The task relay: the pump task writes to `conn` while the response is read.
        outcome = await relay(ex, conn, head, upstream, stream=False)
        nursery.cancel_scope.cancel()
    if body_error is not None:
        ex.reusable = False
        ex.close_after = True
        answered = ex.status != 0  # a response began: the client connection is aborted
        ex.status = _body_error_status(body_error)
        if answered or ex.status == CLIENT_CLOSED:
            return CUT
        return FAILED  # answered with ex.status: 400, 408 or 502
    if not body_done:
        # The replica answered before reading the whole body: neither side can be reused.
        ex.reusable = False
        ex.close_after = True
    if outcome is RETRY or outcome is STALE:  # part of the body reached it: never replay
        ex.status = 502
        return FAILED
    return outcome


def _body_error_status(exc: BaseException) -> int:
    """What a request body that failed on its way is recorded (and answered) as."""
    if isinstance(exc, ProtocolError):
        return exc.status
    if isinstance(exc, BodyTooSlow):
        return 408
    if isinstance(exc, ClientGone):
        return CLIENT_CLOSED
    return 502  # OSError, Timeout: the replica stopped reading the body
