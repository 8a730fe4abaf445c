"""The callback relay of long response bodies (`proxy.stream_relay`), over real sockets.

A scripted replica (raw trio sockets on 127.0.0.1) answers with a body that keeps arriving
(chunked server-sent events, close-delimited, a large Content-Length) while the test drives
each side: the replica sends an event only once the client got the one before (a
`trio.Event` each), a client that stops reading, hangs up, or a replica that goes silent.
Each test checks that the callback relay did relay the body (`relays`, a spy on
`StreamRelay.run`), so that none passes by falling back to the task relay. Every wait is
bounded (`WAIT`).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.lowlevel

from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.stream_relay import StreamRelay
from proxy.upstreams import Upstream

WAIT = 10.0  # the bound on any single step

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)

Script = Callable[["Replica", trio.SocketStream], Awaitable[None]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Replica:
    """Reads one request head per connection, then runs `script` on the connection."""

    script: Script
    port: int = 0
    connections: int = 0
    requests: int = 0
    sent: int = 0  # body bytes the script got into its socket
    closed: trio.Event = field(default_factory=trio.Event)  # the proxy closed or reset it
    step: list[trio.Event] = field(default_factory=list)

    @property
    def upstream(self) -> Upstream:
        return Upstream("r", "127.0.0.1", self.port)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            while True:
                got = b""
                while b"\r\n\r\n" not in got:
                    data = await stream.receive_some(65536)
                    if not data:
                        self.closed.set()
                        return
                    got += data
                self.requests += 1
                await self.script(self, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed.set()

    async def wait_closed(self, stream: trio.SocketStream) -> None:
        """Read until the proxy closes the connection (EOF or reset)."""
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        self.closed.set()


@asynccontextmanager
async def setup(
    script: Script, timeouts: EndpointTimeouts | None = None
) -> AsyncIterator[tuple[Replica, Endpoint]]:
    r = Replica(script)
    ep = Endpoint("streams", bind="127.0.0.1", port=0, timeouts=timeouts or EndpointTimeouts())
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
        r.port = listeners[0].socket.getsockname()[1]
        ep.set_upstreams([r.upstream])
        await nursery.start(ep.run)
        yield r, ep
        nursery.cancel_scope.cancel()


async def settled(check: Callable[[], bool]) -> None:
    """Wait (bounded) until the endpoint's books say `check` (recorded after the reply)."""
    with trio.fail_after(WAIT):
        while not check():  # noqa: ASYNC110 - the endpoint's statistics, as the API reads them
            await trio.sleep(0.01)


@pytest.fixture
def relays(monkeypatch: pytest.MonkeyPatch) -> list[StreamRelay]:
    """Every StreamRelay that ran (a spy: the relay itself is unchanged)."""
    seen: list[StreamRelay] = []
    run = StreamRelay.run

    async def spy(self: StreamRelay) -> object:
        seen.append(self)
        return await run(self)

    monkeypatch.setattr(StreamRelay, "run", spy)
    return seen


class Reader:
    """The client side, on raw bytes: reads until a marker, or until the end."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def until(self, marker: bytes) -> bytes:
        with trio.fail_after(WAIT):
            while marker not in self.buf:
                data = await self.stream.receive_some(65536)
                assert data, f"the stream ended before {marker!r}: {self.buf[-200:]!r}"
                self.buf += data
        out, _, self.buf = self.buf.partition(marker)
        return out + marker

    async def end(self) -> tuple[bytes, bool]:
        """The rest, and whether it ended with a reset (not a clean FIN)."""
        out, self.buf = self.buf, b""
        with trio.fail_after(WAIT):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return out, True
                if not data:
                    return out, False
                out += data

    async def end_of_chunked(self) -> tuple[bytes, bool]:
        """The rest of a chunked body (read to its last chunk), decoded."""
        raw = bytearray(self.buf)
        self.buf = b""
        with trio.fail_after(WAIT * 3):
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                try:
                    data = await self.stream.receive_some(1 << 20)
                except trio.BrokenResourceError:
                    return bytes(raw), True
                if not data:
                    return bytes(raw), False
                raw += data
        return dechunk(bytes(raw)), False


async def open_get(ep: Endpoint, path: bytes = b"/sse", version: bytes = b"1.1") -> Reader:
    stream = await trio.open_tcp_stream(*ep.address)
    await stream.send_all(b"GET %s HTTP/%s\r\nHost: t\r\n\r\n" % (path, version))
    return Reader(stream)


def dechunk(body: bytes) -> bytes:
    """A whole chunked body (ending with the last chunk) decoded."""
    out = bytearray()
    at = 0
    while True:
        eol = body.index(b"\r\n", at)
        size = int(body[at:eol], 16)
        at = eol + 2
        if size == 0:
            assert body[at:] == b"\r\n", body[at:]
            return bytes(out)
        out += body[at : at + size]
        assert body[at + size : at + size + 2] == b"\r\n"
        at += size + 2


# --- server-sent events, event by event -----------------------------------------------------

EVENTS = 30


def event(i: int) -> bytes:
    return b"data: %d\n\n" % i


async def sse_in_step(r: Replica, s: trio.SocketStream) -> None:
    """The head, then each event once the client has the one before; then the end."""
    await s.send_all(SSE_HEAD)
    for i in range(EVENTS):
        await s.send_all(chunk(event(i)))
        with trio.fail_after(WAIT):
            await r.step[i].wait()
    await s.send_all(b"0\r\n\r\n")


class TaskSteps(trio.abc.Instrument):
    """How many times the proxy's connection tasks (`Endpoint._serve`) ran."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Endpoint._serve"):
            self.steps += 1


async def test_sse_is_relayed_event_by_event_without_waking_the_task_per_event(
    relays: list[StreamRelay],
) -> None:
    async with setup(sse_in_step) as (r, ep):
        r.step = [trio.Event() for _ in range(EVENTS)]
        client = await open_get(ep)
        async with client.stream:
            head = await client.until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" in head.lower()
            await client.until(b"data: 0\n\n\r\n")
            r.step[0].set()
            await client.until(b"data: 1\n\n\r\n")
            steps = TaskSteps()
            trio.lowlevel.add_instrument(steps)
            try:
                for i in range(2, EVENTS):
                    r.step[i - 1].set()
                    # Each event arrives before the next is sent (the replica waits for it).
                    await client.until(chunk(event(i)))
                per_event = steps.steps
            finally:
                trio.lowlevel.remove_instrument(steps)
            r.step[EVENTS - 1].set()
            await client.until(b"0\r\n\r\n")
        # 28 events relayed while the connection's task slept: it ran at most once (the
        # task relay ran it for each event: at least 28 steps).
        assert per_event <= 1, per_event
        assert relays, "the callback relay did not run"
        await settled(lambda: ep.statistics().status.s2xx == 1)
        assert ep.statistics().status.s5xx == 0


async def test_a_finished_stream_leaves_its_replica_connection_pooled_and_the_client_kept(
    relays: list[StreamRelay],
) -> None:
    async with setup(sse_in_step) as (r, ep):
        client = await open_get(ep)
        async with client.stream:
            for request in range(2):
                r.step = [trio.Event() for _ in range(EVENTS)]
                if request:
                    await client.stream.send_all(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n")
                await client.until(b"\r\n\r\n")
                for i in range(EVENTS):
                    await client.until(chunk(event(i)))
                    r.step[i].set()
                await client.until(b"0\r\n\r\n")
        assert len(relays) == 2
        assert r.requests == 2 and r.connections == 1  # the replica's connection was reused


# --- backpressure: a client that does not read ----------------------------------------------

BULK = 48 * 1024 * 1024
PIECE = 64 * 1024


def pattern(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest() * (PIECE // 32)


async def bulk_chunked(r: Replica, s: trio.SocketStream) -> None:
    await s.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(BULK // PIECE):
        await s.send_all(chunk(pattern(i)))
        r.sent += PIECE
    await s.send_all(b"0\r\n\r\n")


async def stalled(r: Replica) -> int:
    """Wait until the replica's sends stop moving for 0.5 s; the bytes it got out."""
    with trio.fail_after(WAIT * 2):
        last = -1
        while r.sent != last:
            last = r.sent
            await trio.sleep(0.5)
    return last


async def test_a_slow_client_stops_the_replica_reads_and_gets_every_byte(
    relays: list[StreamRelay],
) -> None:
    async with setup(bulk_chunked) as (r, ep):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        await stream.socket.connect(ep.address)
        await stream.send_all(b"GET /bulk HTTP/1.1\r\nHost: t\r\n\r\n")
        client = Reader(stream)
        async with stream:
            await client.until(b"\r\n\r\n")
            got = await stalled(r)
            # The replica stopped: what it sent is held by the kernel's buffers on the way
            # and at most one read's worth in the relay, far from the whole body.
            assert 0 < got < BULK // 2, got
            assert relays and len(relays[0].pending) <= PIECE + 32
            poller = ep._balancer.poller
            assert relays[0].rconn not in poller._callbacks  # the replica is not read
            assert relays[0].client in poller._wcallbacks  # the client is watched instead
            body, was_reset = await client.end_of_chunked()
        assert not was_reset
        assert len(body) == BULK
        for i in (0, 1, BULK // PIECE // 2, BULK // PIECE - 1):
            assert body[i * PIECE : (i + 1) * PIECE] == pattern(i)


# --- the client hangs up, the replica goes silent --------------------------------------------


async def one_event_then_hold(r: Replica, s: trio.SocketStream) -> None:
    await s.send_all(SSE_HEAD + chunk(event(0)))
    with trio.fail_after(WAIT):
        await r.wait_closed(s)


async def test_a_client_that_hangs_up_mid_stream_cuts_the_replica(
    relays: list[StreamRelay],
) -> None:
    async with setup(one_event_then_hold) as (r, ep):
        client = await open_get(ep)
        async with client.stream:
            await client.until(chunk(event(0)))
        with trio.fail_after(WAIT):
            await r.closed.wait()  # the proxy closed the replica's connection
        assert relays and relays[0].rconn.closed
        assert not ep._balancer.pool._idle.get(r.upstream)  # not pooled
        await settled(lambda: ep.statistics().in_flight == 0)


async def test_a_replica_silent_past_read_timeout_mid_stream_is_cut(
    relays: list[StreamRelay],
) -> None:
    timeouts = EndpointTimeouts(read_idle=0.3)
    async with setup(one_event_then_hold, timeouts) as (r, ep):
        client = await open_get(ep)
        async with client.stream:
            await client.until(chunk(event(0)))
            started = trio.current_time()
            rest, was_reset = await client.end()
            took = trio.current_time() - started
        assert was_reset, "a cut stream ended cleanly"
        assert rest == b""
        assert 0.2 <= took < 3.0, took
        with trio.fail_after(WAIT):
            await r.closed.wait()
        assert relays
        await settled(lambda: ep.statistics().status.s5xx == 1)
        assert ep.statistics().status.s2xx == 0  # never counted as the replica's 200


# --- other framings -------------------------------------------------------------------------


async def close_delimited(r: Replica, s: trio.SocketStream) -> None:
    await s.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    for i in range(5):
        await s.send_all(event(i))
        with trio.fail_after(WAIT):
            await r.step[i].wait()
    await s.aclose()


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_a_close_delimited_body_is_relayed_piece_by_piece_to_its_end(
    relays: list[StreamRelay], version: bytes
) -> None:
    async with setup(close_delimited) as (r, ep):
        r.step = [trio.Event() for _ in range(5)]
        client = await open_get(ep, version=version)
        async with client.stream:
            head = await client.until(b"\r\n\r\n")
            for i in range(5):
                await client.until(event(i))
                r.step[i].set()
            if version == b"1.1":
                # Re-framed chunked: a clean end the client can tell, and it is kept alive.
                assert b"transfer-encoding: chunked" in head.lower()
                await client.until(b"0\r\n\r\n")
            else:  # HTTP/1.0: close-delimited as it came, and the connection ends
                assert b"chunked" not in head.lower()
                rest, was_reset = await client.end()
                assert rest == b"" and not was_reset
        assert relays
        assert ep.statistics().status.s2xx == 1


LARGE = 8 * 1024 * 1024 + 123


def large_body() -> bytes:
    return bytes(range(256)) * (LARGE // 256) + b"x" * (LARGE % 256)


async def large_length(r: Replica, s: trio.SocketStream) -> None:
    body = large_body()
    await s.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % LARGE)
    for i in range(0, LARGE, 100_000):
        await s.send_all(body[i : i + 100_000])


async def test_a_large_content_length_body_arrives_whole_and_the_connection_is_reused(
    relays: list[StreamRelay],
) -> None:
    async with setup(large_length) as (r, ep):
        client = await open_get(ep, b"/big")
        async with client.stream:
            for request in range(2):
                if request:
                    await client.stream.send_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
                head = await client.until(b"\r\n\r\n")
                assert b"content-length: %d" % LARGE in head.lower()
                body = bytearray(client.buf)
                with trio.fail_after(WAIT):
                    while len(body) < LARGE:
                        data = await client.stream.receive_some(1 << 20)
                        assert data
                        body += data
                client.buf = bytes(body[LARGE:])
                assert bytes(body[:LARGE]) == large_body()
        assert len(relays) == 2
        assert r.connections == 1  # pooled after a complete body, reused
