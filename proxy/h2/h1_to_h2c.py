"""An HTTP/1.1 client's request forwarded to an h2c replica (`upstream_protocol = "h2c"`).

`proxy.forward.Session` hands a request over (`forward_h1_to_h2c`) once its head is read
and checked (and the endpoint's credentials, if any, passed). The request becomes a
stream on one of the replica's shared h2c connections (`proxy.h2.upstream`), with the
same header rewriting as an HTTP/1.1 replica gets (`proxy.h2.messages`); its body goes on
at `BodyPace` as it arrives; the response comes back as HTTP/1.1: with the replica's
content-length, else chunked (close-delimited to an HTTP/1.0 client). Response trailers
are dropped (HTTP/1.1 clients asked for none), but a `grpc-status` in them is counted.

Failures: nothing sent to the client yet -> the proxy's own answer (502; 504 after
`read_idle` of silence; 400/408 for a broken or too slow body), else the client
connection is aborted (a reset: never a clean end for a cut response). A client that
leaves while its body streams resets the replica's stream (CANCEL).
"""

from __future__ import annotations

import trio

from proxy.answers import answer_for
from proxy.balancer import Balancer
from proxy.exchange import CLIENT_CLOSED
from proxy.h2.attempt import Attempt, Refused
from proxy.h2.channel import END, Data, Head, StreamGone, StreamIO, Trailers
from proxy.h2.client_stream import CANCEL
from proxy.h2.messages import h1_response_head, h2c_request_fields, has_content_length
from proxy.h2.to_h2c import count_grpc_status
from proxy.h2.upstream import H2cConn, pool_for
from proxy.headers import LAST_CHUNK, chunk
from proxy.protocol import END as BODY_END
from proxy.protocol import Framing, ProtocolError, RequestHead
from proxy.reader import ClientGone, ClientReader
from proxy.relay import BodyPace, BodyTooSlow, next_body_event
from proxy.sockets import Conn, Timeout


async def forward_h1_to_h2c(
    balancer: Balancer,
    conn: Conn,
    reader: ClientReader,
    head: RequestHead,
    *,
    peer: bytes,
    trusted: bool,
    proto: bytes,
) -> bool:
    """Forward one HTTP/1.1 request to an h2c replica; True when the client connection may
    carry another request. Records the request's statistics itself."""
    attempt = Attempt(balancer)
    status = CLIENT_CLOSED
    try:
        status, keep = await _forward(balancer, conn, reader, head, attempt, peer, trusted, proto)
        return keep and head.keep_alive and not balancer.draining
    finally:
        attempt.finish(status)


async def _answer(b: Balancer, conn: Conn, head: RequestHead, status: int, message: str) -> int:
    try:
        await conn.send_all(answer_for(head, status, message, close=True), b.timeouts.client_idle)
    except (OSError, Timeout):
        pass
    return status


async def _forward(
    b: Balancer,
    conn: Conn,
    reader: ClientReader,
    head: RequestHead,
    attempt: Attempt,
    peer: bytes,
    trusted: bool,
    proto: bytes,
) -> tuple[int, bool]:
    fields = h2c_request_fields(
        head,
        scheme=b"http",
        peer=peer,
        request_id=b.next_request_id(),
        trusted=trusted,
        proto=proto,
    )
    end = head.framing is Framing.NONE
    up = await attempt.acquire()
    while True:
        if isinstance(up, Refused):
            try:
                await conn.send_all(
                    answer_for(head, up.status, up.message, close=True, retry_after=up.retry_after),
                    b.timeouts.client_idle,
                )
            except (OSError, Timeout):
                pass
            return up.status, False
        opened = await pool_for(b).open_stream(attempt, up, fields, end)
        if opened is not None:
            break
        attempt.release(502)
        up = await attempt.acquire()
    uc, uio = opened
    status, keep = await _exchange(b, conn, reader, head, uc, uio, end)
    attempt.release(status)
    return status, keep


async def _exchange(
    b: Balancer,
    conn: Conn,
    reader: ClientReader,
    head: RequestHead,
    uc: H2cConn,
    uio: StreamIO,
    end: bool,
) -> tuple[int, bool]:
    """Stream the body while relaying the response: (status, connection may go on)."""
    ch = uc.channel
    body_error: BaseException | None = None
    body_done = end
    clean = False

    async def pump(cancel: trio.CancelScope) -> None:
        nonlocal body_error, body_done
        pace = BodyPace(b.timeouts, b.poller)
        try:
            while True:
                ev = await next_body_event(reader, pace)
                if ev is BODY_END:
                    ch.end_stream(uio)
                    body_done = True
                    return
                if isinstance(ev, bytes) and ev:
                    await ch.send_data(uio, ev, False, b.timeouts.read_idle)
        except (ClientGone, ProtocolError, BodyTooSlow) as exc:
            body_error = exc
            cancel.cancel()
        except StreamGone:
            return  # the replica ended the stream: the relay says how

    try:
        result: tuple[int, bool] = (502, False)
        if end:
            result = await _relay(b, conn, head, uc, uio)
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, nursery.cancel_scope)
                result = await _relay(b, conn, head, uc, uio)
                nursery.cancel_scope.cancel()
        status, ok = result
        if body_error is not None:
            if isinstance(body_error, ClientGone):
                return CLIENT_CLOSED, False
            answered = status != 0
            status = body_error.status if isinstance(body_error, ProtocolError) else 408
            if answered:
                conn.abort()
                return status, False
            return await _answer(b, conn, head, status, "request body failed"), False
        clean = ok
        return status, ok and body_done
    finally:
        if not clean:
            ch.reset_stream(uio.stream_id, CANCEL)
        ch.forget(uio.stream_id)


async def _relay(
    b: Balancer, conn: Conn, head: RequestHead, uc: H2cConn, uio: StreamIO
) -> tuple[int, bool]:
    """The replica's response as HTTP/1.1 to the client: (status, ended cleanly)."""
    ch = uc.channel
    status = 0
    chunked = False
    close = False
    sent = False
    timeout = b.timeouts.client_idle
    try:
        while True:
            try:
                item = await ch.next_item(uio, b.timeouts.read_idle)
            except StreamGone as exc:
                if sent:
                    conn.abort()
                    return status or 502, False
                if exc.args and exc.args[0] == "timeout":
                    return await _answer(
                        b, conn, head, 504, "the replica did not answer in time"
                    ), False
                return await _answer(b, conn, head, 502, "the replica reset the stream"), False
            if isinstance(item, Head):
                if item.info:
                    continue
                close = not head.keep_alive or b.draining
                bodyless = item.end or head.method == b"HEAD"
                chunked = not bodyless and not has_content_length(item.headers)
                if chunked and head.http_version != "1.1":
                    chunked, close = False, True  # close-delimited to an HTTP/1.0 client
                status, out = h1_response_head(item.headers, chunked=chunked, close=close)
                if item.end:
                    count_grpc_status(b, item.headers)
                    if chunked:
                        out += LAST_CHUNK
                await conn.send_all(out, timeout)
                sent = True
                if item.end:
                    return status, not close
            elif isinstance(item, Data):
                if item.data:
                    await conn.send_all(chunk(item.data) if chunked else item.data, timeout)
                ch.consumed(uio.stream_id, item.flow)
            elif isinstance(item, Trailers) or item is END:
                if isinstance(item, Trailers):
                    count_grpc_status(b, item.headers)
                if chunked:
                    await conn.send_all(LAST_CHUNK, timeout)
                return status, not close
    except (OSError, Timeout):
        return CLIENT_CLOSED, False
