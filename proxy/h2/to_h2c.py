"""An HTTP/2 client stream forwarded to an h2c replica (`upstream_protocol = "h2c"`): gRPC.

The request goes on as a stream of one of the replica's shared h2c connections
(`proxy.h2.upstream`), both ways at once: the request body (and its trailers, if any)
while the response (head, data, trailers) comes back, so client-, server- and
bidirectional streaming calls all work. The response trailers are relayed (gRPC's
`grpc-status` lives there); a trailers-only response (a gRPC error before any message)
is a head with END_STREAM and goes on as that. Each `grpc-status` seen is counted per
endpoint (`proxy.h2.grpc_status`).

Theory of operation:
- Flow control end to end: data from one side is credited back to it only once the other
  side's window has taken it, so a slow reader on either side slows its writer.
- The client's RST_STREAM cancels the stream task (`StreamIO.scope`); on the way out the
  replica's stream is reset with CANCEL (a gRPC server sees the call cancelled), as for
  any stream that did not end cleanly.
- The replica resetting the stream or the connection failing: nothing sent to the client
  yet -> 502 (504 when it stayed silent past `read_idle`), or, when the replica provably
  never processed it (REFUSED_STREAM, above its GOAWAY) and no body was consumed, the
  request goes to the next upstream; once the response has begun, the client's stream is
  reset.
"""

from __future__ import annotations

import trio

from proxy.balancer import Balancer
from proxy.exchange import CLIENT_CLOSED
from proxy.h2.attempt import Attempt, Refused, grpc_counts
from proxy.h2.channel import END, Data, Head, StreamGone, StreamIO, Trailers
from proxy.h2.client_stream import CANCEL, ClientStream
from proxy.h2.grpc_status import grpc_status_of
from proxy.h2.messages import h2c_request_fields, response_status
from proxy.h2.upstream import H2cConn, pool_for
from proxy.protocol import Framing, RequestHead


class _Retry(Exception):
    pass


async def forward_h2c(
    cs: ClientStream, head: RequestHead, fields: list[tuple[bytes, bytes]]
) -> int:
    """Forward one stream to an h2c replica; the status recorded for it."""
    del fields  # the head carries them, rewritten (`proxy.h2.messages`)
    attempt = Attempt(cs.balancer)
    status = CLIENT_CLOSED
    try:
        status = await _forward(cs, head, attempt)
        return status
    finally:
        attempt.finish(status)


async def _forward(cs: ClientStream, head: RequestHead, attempt: Attempt) -> int:
    b = cs.balancer
    fields = h2c_request_fields(
        head,
        scheme=b"http",
        peer=cs.peer,
        request_id=b.next_request_id(),
        trusted=cs.trusted,
        proto=cs.proto,
    )
    end = head.framing is Framing.NONE
    pool = pool_for(b)
    while True:
        up = await attempt.acquire()
        if isinstance(up, Refused):
            return await cs.answer(head, up.status, up.message, retry_after=up.retry_after)
        opened = await pool.open_stream(attempt, up, fields, end)
        if opened is None:
            attempt.release(502)
            continue
        uc, uio = opened
        try:
            status = await _exchange(cs, head, uc, uio, end)
        except _Retry:
            attempt.release(502)
            continue
        attempt.release(status)
        return status


async def _exchange(
    cs: ClientStream, head: RequestHead, uc: H2cConn, uio: StreamIO, end: bool
) -> int:
    ch = uc.channel
    b = cs.balancer
    pumped = False  # some of the body went to the replica: never replayed
    finished = False  # the replica's stream ended cleanly

    async def pump() -> None:
        nonlocal pumped
        timeout = b.timeouts.read_idle
        try:
            while True:
                item = await cs.next_item()
                if isinstance(item, Data):
                    pumped = True
                    await ch.send_data(uio, item.data, False, timeout)
                    cs.consumed(item.flow)
                elif isinstance(item, Trailers):
                    ch.send_headers(uio, item.headers, True)
                    return
                elif item is END:
                    ch.end_stream(uio)
                    return
        except StreamGone:
            return  # either side: the relay (or the client's reset) says what follows

    try:
        if end:
            status = await _relay(cs, head, uc, uio, retryable=True)
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                status = await _relay(cs, head, uc, uio, retryable=False)
                nursery.cancel_scope.cancel()
        finished = True
        return status
    finally:
        if not finished or uio.reset is None and not _ended_remotely(uc, uio):
            ch.reset_stream(uio.stream_id, CANCEL)
        ch.forget(uio.stream_id)
        del pumped


def _ended_remotely(uc: H2cConn, uio: StreamIO) -> bool:
    stream = uc.channel.h2.streams.get(uio.stream_id)
    return stream is None or stream.state_machine.state.name == "CLOSED"


async def _relay(
    cs: ClientStream, head: RequestHead, uc: H2cConn, uio: StreamIO, *, retryable: bool
) -> int:
    """The replica's response to the client; the status. Raises _Retry (a stream the
    replica never processed, when `retryable`)."""
    ch = uc.channel
    b = cs.balancer
    status = 0
    while True:
        try:
            item = await ch.next_item(uio, b.timeouts.read_idle)
        except StreamGone as exc:
            if cs.sent:
                cs.reset()
                return 502
            if retryable and uc.never_processed(uio):
                raise _Retry from None
            if exc.args and exc.args[0] == "timeout":
                return await cs.answer(head, 504, "the replica did not answer in time")
            return await cs.answer(head, 502, "the replica reset the stream")
        if isinstance(item, Data):
            await cs.send_data(item.data)
            ch.consumed(uio.stream_id, item.flow)
        elif isinstance(item, Head):
            if item.info:
                continue
            status = response_status(item.headers)
            cs.send_head(item.headers, end=item.end, status=status)
            if item.end:
                count_grpc_status(b, item.headers)
                return status
        elif isinstance(item, Trailers):
            cs.send_trailers(item.headers)
            count_grpc_status(b, item.headers)
            return status
        elif item is END:
            cs.end()
            return status


def count_grpc_status(balancer: Balancer, headers: list[tuple[bytes, bytes]]) -> None:
    """Count the call's `grpc-status`, if the section has one."""
    code = grpc_status_of(headers)
    if code is not None:
        grpc_counts(balancer).add(code)
