"""An HTTP/2 client stream forwarded to an HTTP/1.1 replica (`upstream_protocol = "http1"`).

Each stream is one HTTP/1.1 request on the endpoint's pooled replica connections, exactly
as an HTTP/1.1 client's would be (`proxy.headers` rewriting, `proxy.connector`'s hedged
connects, `proxy.pool`), and the response comes back as HTTP/2 (`proxy.h2.messages`).

Theory of operation:
- The body that has already arrived goes with the head. A body still under way is
  streamed: with its Content-Length, or chunked to a replica known to speak HTTP/1.1; to
  one not known to (maybe HTTP/1.0) it is read whole first, up to `MAX_BUFFERED_BODY`
  (413 beyond). Data is credited back to the client only once sent on to the replica,
  so the client's window, not memory, holds a body a replica reads slowly.
- Request trailers are dropped (HTTP/1.1 replicas get none); so are the response's.
- Retries as for HTTP/1.1 clients, where the proxy still holds the whole request and
  nothing reached the client: a failed connect goes to the next upstream; a reused
  pooled connection found closed goes once more on a fresh one; a replica that closed or
  reset before any response byte gets the request again elsewhere only when it is
  idempotent.
- The client's RST_STREAM cancels the stream's task wherever it waits (`StreamIO.scope`):
  the replica's connection is then aborted (a reset), never pooled, so that it stops.
"""

from __future__ import annotations

from typing import Final

import trio

from proxy.connector import open_connection
from proxy.exchange import CLIENT_CLOSED
from proxy.h2.attempt import Attempt, Refused, grpc_counts
from proxy.h2.channel import END, Data, StreamGone, Trailers
from proxy.h2.client_stream import ClientStream
from proxy.h2.grpc_status import grpc_status_of
from proxy.h2.messages import h2_response_fields
from proxy.headers import LAST_CHUNK, chunk, request_head_bytes
from proxy.protocol import Framing, ProtocolError, RequestHead, ResponseHead, ResponseParser
from proxy.sockets import Conn, Timeout
from proxy.upstreams import Upstream

MAX_BUFFERED_BODY: Final = 8 * 1024 * 1024  # as `proxy.forward`'s


class _Retry(Exception):
    """Nothing reached the replica's application or the client: try the next upstream."""


async def forward_http1(cs: ClientStream, head: RequestHead) -> int:
    """Forward one stream to an HTTP/1.1 replica; the status recorded for it."""
    attempt = Attempt(cs.balancer)
    status = CLIENT_CLOSED
    try:
        status = await _forward(cs, head, attempt)
        return status
    finally:
        attempt.finish(status)


def _take_ready(cs: ClientStream, parts: list[bytes]) -> bool:
    """Move the body that has arrived into `parts` (credited back); True once it is whole."""
    inbox = cs.io.inbox
    while inbox:
        item = inbox.popleft()
        if isinstance(item, Data):
            parts.append(item.data)
            cs.consumed(item.flow)
        elif item is END or isinstance(item, Trailers):
            if isinstance(item, Trailers):
                inbox.clear()  # END follows trailers: the body is whole
            return True
    return False


async def _forward(cs: ClientStream, head: RequestHead, attempt: Attempt) -> int:
    b = cs.balancer
    parts: list[bytes] = []
    complete = head.framing is Framing.NONE or _take_ready(cs, parts)
    framing = head.framing
    if complete and framing is Framing.CHUNKED:
        framing = Framing.LENGTH
        head.content_length = sum(len(p) for p in parts)
    request_id = b.next_request_id()
    while True:
        up = await attempt.acquire()
        if isinstance(up, Refused):
            return await cs.answer(head, up.status, up.message, retry_after=up.retry_after)
        if not complete and framing is Framing.CHUNKED and up not in b.http11:
            whole = await _read_whole(cs, parts)
            if whole is None:
                return await cs.answer(head, 413, "a request body over 8 MiB needs a length here")
            complete, framing = True, Framing.LENGTH
            parts = [whole]
            head.content_length = len(whole)
        request = request_head_bytes(
            head,
            peer=cs.peer,
            request_id=request_id,
            framing=framing,
            trusted=cs.trusted,
            proto=cs.proto,
        )
        if framing is Framing.CHUNKED:
            request += b"".join(chunk(p) for p in parts if p)
        else:
            request += b"".join(parts)
        try:
            status = await _attempt(cs, attempt, up, head, request, complete, framing)
        except _Retry:
            attempt.release(502)
            continue
        attempt.release(status)
        return status


async def _read_whole(cs: ClientStream, parts: list[bytes]) -> bytes | None:
    size = sum(len(p) for p in parts)
    while True:
        item = await cs.next_item()
        if isinstance(item, Data):
            size += len(item.data)
            if size > MAX_BUFFERED_BODY:
                return None
            parts.append(item.data)
            cs.consumed(item.flow)
        elif item is END or isinstance(item, Trailers):
            return b"".join(parts)


async def _attempt(
    cs: ClientStream,
    attempt: Attempt,
    up: Upstream,
    head: RequestHead,
    request: bytes,
    complete: bool,
    framing: Framing,
) -> int:
    """One upstream's try. Raises _Retry (see the module docstring)."""
    b = cs.balancer
    conn = b.pool.take(up, b.poller.now, trust_recent=complete)
    reused = conn is not None
    while True:
        if conn is None:
            opened = await open_connection(b, up, attempt.tried)
            if opened is None:
                raise _Retry
            got, conn = opened
            if got is not up:
                attempt.switch(got)
                up = got
        try:
            await conn.send_all(request, b.timeouts.read_idle)
        except (OSError, Timeout):
            conn.abort()
            if not complete:
                return await cs.answer(head, 502, "the replica closed the connection")
            if reused:
                conn, reused = None, False
                continue
            raise _Retry from None
        try:
            return await _exchange(cs, conn, up, head, complete, framing, reused)
        except _Stale:
            conn, reused = None, False  # once more, on a fresh connection


class _Stale(Exception):
    """A reused connection the replica had closed: nothing was read by it."""


async def _exchange(
    cs: ClientStream,
    conn: Conn,
    up: Upstream,
    head: RequestHead,
    complete: bool,
    framing: Framing,
    reused: bool,
) -> int:
    """Stream the rest of the body while relaying the response; the status recorded."""
    b = cs.balancer
    reusable = False
    body_error: str | None = None
    body_done = complete

    async def pump(cancel: trio.CancelScope) -> None:
        nonlocal body_error, body_done
        chunked = framing is Framing.CHUNKED
        timeout = b.timeouts.read_idle
        try:
            while True:
                item = await cs.next_item()
                if isinstance(item, Data):
                    if item.data:
                        await conn.send_all(chunk(item.data) if chunked else item.data, timeout)
                    cs.consumed(item.flow)
                elif item is END or isinstance(item, Trailers):
                    if chunked:
                        await conn.send_all(LAST_CHUNK, timeout)
                    body_done = True
                    return
        except StreamGone:
            body_error = "client"
            cancel.cancel()
        except (OSError, Timeout):
            body_error = "replica"  # it stopped reading the body: the response says why
            return

    clean = False  # the response went out whole: the replica's connection may just close
    try:
        if complete:  # no nursery: _Retry and _Stale pass as they are
            status, reusable = await _relay(cs, conn, up, head, complete, reused)
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, nursery.cancel_scope)
                status, reusable = await _relay(cs, conn, up, head, complete, reused)
                nursery.cancel_scope.cancel()
        if body_error == "client":
            return CLIENT_CLOSED
        clean = True
        if not body_done:
            reusable = False
        return status
    finally:
        if not conn.closed:
            if reusable and clean:
                b.pool.put(up, conn, b.poller.now)
            elif clean:
                conn.close()
            else:
                conn.abort()  # cut (the client reset, say): the replica sees it at once


async def _relay(
    cs: ClientStream, conn: Conn, up: Upstream, head: RequestHead, complete: bool, reused: bool
) -> tuple[int, bool]:
    """The replica's response, as HTTP/2 to the client: (status, replica conn reusable).
    Raises _Stale, _Retry only for a `complete` request (see the module docstring)."""
    b = cs.balancer
    head_request = head.method == b"HEAD"
    parser = ResponseParser(head_request=head_request)
    pending: list[tuple[bytes, bytes]] | None = None
    status = 0
    got_any = False
    while True:
        try:
            data = await conn.recv_wait_first(b.timeouts.read_idle)
        except Timeout:
            return await cs.answer(head, 504, "the replica did not answer in time"), False
        except OSError:
            data = None
        try:
            if data:
                got_any = True
                events = parser.feed(data)
            elif not got_any and not cs.sent:
                if complete and reused:
                    raise _Stale
                if complete and head.idempotent:
                    raise _Retry
                return await cs.answer(head, 502, "the replica closed the connection"), False
            elif data is None:
                cs.reset()
                return 502, False
            else:
                events = parser.feed_eof()
        except ProtocolError:
            return await cs.answer(head, 502, "the replica sent a broken response"), False
        for ev in events:
            if type(ev) is bytes:
                if pending is not None:
                    cs.send_head(pending, end=False, status=status)
                    pending = None
                if ev:
                    await cs.send_data(ev)
            elif isinstance(ev, ResponseHead):
                if ev.status < 200:
                    continue  # interim answers (100 Continue) stay here
                if ev.status == 101:
                    return await cs.answer(head, 502, "the replica switched protocols"), False
                _learn_version(cs, ev, up)
                status = ev.status
                pending = h2_response_fields(ev)
                code = grpc_status_of(ev.headers)
                if code is not None:
                    grpc_counts(b).add(code)
            else:  # END
                if pending is not None:
                    cs.send_head(pending, end=True, status=status)
                    pending = None
                else:
                    cs.end()
        if parser.done:
            return status, parser.reusable


def _learn_version(cs: ClientStream, ev: ResponseHead, up: Upstream) -> None:
    if ev.http_version == "1.1":
        cs.balancer.http11.add(up)
    else:
        cs.balancer.http11.discard(up)
