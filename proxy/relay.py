"""Relaying one response from a replica to the client, while the request body still streams.

The relay reads the replica's response as it arrives and sends each piece on at once (one
client send per replica read, so SSE and chunked streams flush every chunk). Bodies are
re-framed: Content-Length kept, otherwise chunked to HTTP/1.1 clients and close-delimited
to HTTP/1.0 ones.

It returns how the attempt ended (an `Outcome`, `proxy.exchange`) and records what the
response says on the client connection's `Exchange`: `status` (the response being sent),
`close_after` (the client connection cannot carry another request) and `reusable` (the
replica's connection can). While it waits on the replica, a hang-up by the client
interrupts the wait (`sockets.PeerHangup`): the replica's connection is then cut, which is
how a model server learns that nobody wants the rest of a generation.
"""

from __future__ import annotations

import errno
from typing import Final

import trio

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
from proxy.protocol import END, Framing, ProtocolError, RequestHead, ResponseHead, ResponseParser
from proxy.reader import ClientGone
from proxy.sockets import Conn, PeerHangup, Timeout
from proxy.tunnel import tunnel

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


async def relay(ex: Exchange, conn: Conn, head: RequestHead) -> Outcome:
    """Read the response from the replica on `conn` and send it on as it arrives."""
    ex.reusable = False
    timeouts = ex.balancer.timeouts
    read_idle = timeouts.read_idle
    client = ex.client
    parser = ResponseParser(head_request=head.method == b"HEAD")
    out_framing = Framing.NONE
    sent = False
    got_any = False
    client.hangup_watcher = conn
    try:
        while True:
            try:
                data = await conn.recv_wait_first(read_idle)
            except Timeout:
                if sent:
                    return CUT
                ex.status = 504
                return FAILED
            except PeerHangup:
                ex.status = ex.status or CLIENT_CLOSED
                ex.close_after = True
                return CUT
            except OSError:
                if not got_any:
                    return RETRY
                data = b""
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
                if sent:
                    return CUT
                ex.status = 502
                return FAILED
            if len(events) == 3 and out_framing is Framing.NONE:
                # The common case: a whole small response in one read.
                ev = events[0]
                if type(ev) is ResponseHead and ev.status >= 200 and ev.status != 101:
                    body = events[1]
                    if type(body) is bytes and events[2] is END:
                        out_framing = _framing_for(ex, ev, head)
                        hb = _response_head(ev, framing=out_framing, close=ex.close_after)
                        if out_framing is Framing.CHUNKED:
                            out = hb + chunk(body) + LAST_CHUNK if body else hb + LAST_CHUNK
                        else:
                            out = hb + body
                        try:
                            await client.send_all(out, timeouts.client_idle)
                        except (OSError, Timeout):
                            ex.close_after = True
                            return CUT
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
                    if ev.status < 200 and ev.status != 101:
                        parts.append(_response_head(ev, framing=Framing.NONE, close=False))
                        continue
                    if ev.status == 101:
                        if head.upgrade is None:
                            ex.status = 502
                            return FAILED
                        tunnelling = True
                    out_framing = _framing_for(ex, ev, head)
                    parts.append(_response_head(ev, framing=out_framing, close=ex.close_after))
            if parts:
                try:
                    await client.send_all(b"".join(parts), timeouts.client_idle)
                except (OSError, Timeout):
                    ex.close_after = True
                    return CUT
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
    finally:
        client.hangup_watcher = None


def _framing_for(ex: Exchange, ev: ResponseHead, head: RequestHead) -> Framing:
    """Record the final response's status; how its body goes to this client."""
    ex.status = ev.status
    framing = ev.framing
    if framing is Framing.CHUNKED or framing is Framing.CLOSE:
        if head.http_version == "1.1":
            framing = Framing.CHUNKED
        else:
            framing = Framing.CLOSE
            ex.close_after = True
    if ex.balancer.draining:
        ex.close_after = True
    return framing


async def relay_while_sending(
    ex: Exchange, conn: Conn, head: RequestHead, framing: Framing
) -> Outcome:
    """Stream the rest of the request body to the replica while relaying the response."""
    body_error: BaseException | None = None
    body_done = False
    timeouts = ex.balancer.timeouts
    reader = ex.reader

    async def pump(cancel: trio.CancelScope) -> None:
        nonlocal body_error, body_done
        chunked = framing is Framing.CHUNKED
        try:
            while True:
                ev = await reader.next_event(timeouts.client_idle)
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
        outcome = await relay(ex, conn, head)
        nursery.cancel_scope.cancel()
    if body_error is not None:
        ex.reusable = False
        ex.close_after = True
        if ex.status == 0:
            if isinstance(body_error, ProtocolError):
                ex.status = body_error.status
                return FAILED
            if isinstance(body_error, OSError | Timeout):
                ex.status = 502
                return FAILED
        return CUT
    if not body_done:
        # The replica answered before reading the whole body: neither side can be reused.
        ex.reusable = False
        ex.close_after = True
    if outcome is RETRY or outcome is STALE:  # part of the body reached it: never replay
        ex.status = 502
        return FAILED
    return outcome
