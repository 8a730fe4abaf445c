"""The proxy's Endpoint with real sockets on 127.0.0.1, against small trio backends.

Every wait is bounded (`trio.fail_after`) and every loop has a fixed count.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import h11
import pytest
import trio
from trio.testing import MockClock

from config.spec import Outlier
from proxy import forward, sockets
from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.upstreams import Upstream

WAIT = 10.0  # the bound on any single test step


# --- a small HTTP/1.1 backend ----------------------------------------------------------------


@dataclass
class Backend:
    name: str
    port: int = 0
    requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    connections: int = 0
    release: trio.Event = field(default_factory=trio.Event)
    arrived: trio.Event = field(default_factory=trio.Event)  # a request reached respond()
    cut: trio.Event = field(default_factory=trio.Event)  # the proxy ended a /generate
    # Set: every request is read, answered with these bytes (maybe none) and the
    # connection closed, as by a replica killed mid-request.
    fault: bytes | None = None

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.name, "127.0.0.1", self.port)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            try:
                await self._serve(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the proxy cut the connection: part of some tests

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            got = await read_request(conn, stream)
            if got is None:
                return
            request, body = got
            path = request.target
            self.requests.append((request.method, path, list(request.headers.raw_items())))
            if not await self.respond(stream, conn, path, body, request):
                return
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def respond(
        self, stream: trio.SocketStream, conn: h11.Connection, path: bytes, body: bytes,
        request: h11.Request,
    ) -> bool:  # fmt: skip
        async def send(*events: h11.Event) -> None:
            for e in events:
                data = conn.send(e)
                if data:
                    await stream.send_all(data)

        self.arrived.set()
        if self.fault is not None:
            if self.fault:
                await stream.send_all(self.fault)
            return False

        if path == b"/sse":
            await send(
                h11.Response(status_code=200, headers=[("Content-Type", "text/event-stream")])
            )
            await send(h11.Data(data=b"data: first\n\n"))
            with trio.fail_after(WAIT):
                await self.release.wait()
            await send(h11.Data(data=b"data: second\n\n"), h11.EndOfMessage())
            return True
        if path == b"/hang":
            await trio.sleep(WAIT)
            return False
        if path == b"/generate":
            # A long generation: nothing to send yet; notice when the proxy gives up on it.
            with trio.move_on_after(WAIT):
                try:
                    while await stream.receive_some(65536):
                        pass
                except trio.BrokenResourceError:
                    pass
                self.cut.set()
            return False
        if path == b"/drop":  # read the request, then close without an answer
            return False
        if path == b"/close-after":  # answer, then close the keep-alive connection
            await send(
                h11.Response(status_code=200, headers=[("Content-Length", "2")]),
                h11.Data(data=b"ok"),
                h11.EndOfMessage(),
            )
            return False
        if path == b"/close-delimited":
            # No Content-Length: the body ends when the replica closes (a CGI). The head,
            # body and FIN go out in one step, with no checkpoint between them, so the
            # proxy sees the data and the hang-up in one readiness report.
            fd = stream.socket.fileno()
            os.write(fd, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + self.name.encode())
            stream.socket.shutdown(socket.SHUT_WR)
            return False
        if path == b"/slow":
            await trio.sleep(0.3)
        if path == b"/reset":
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            return False
        if path == b"/broken":
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
            )
            return False
        if path == b"/ws":
            await stream.send_all(
                b"HTTP/1.1 101 Switching Protocols\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            with trio.fail_after(WAIT):
                while data := await stream.receive_some(65536):
                    await stream.send_all(data.upper())
            return False
        if path == b"/headers":
            payload = json.dumps(
                [[n.decode(), v.decode()] for n, v in request.headers.raw_items()]
            ).encode()
        elif path == b"/echo":
            payload = body
        else:
            payload = self.name.encode()
        await send(
            h11.Response(status_code=200, headers=[("Content-Length", str(len(payload)))]),
            h11.Data(data=payload),
            h11.EndOfMessage(),
        )
        return True


async def read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[h11.Request, bytes] | None:
    """A test replica's next whole request (head and body); None once the client closed."""
    request: h11.Request | None = None
    body = b""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(ev, h11.Request):
            request = ev
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            assert request is not None
            return request, body
        else:  # ConnectionClosed
            return None


class Listening(Protocol):
    port: int

    async def handle(self, stream: trio.SocketStream) -> None: ...


L = TypeVar("L", bound=Listening)


@asynccontextmanager
async def listening(servers: list[L]) -> AsyncIterator[list[L]]:
    """Each test replica served on a port of 127.0.0.1 of its own (set as its `port`)."""
    async with trio.open_nursery() as nursery:
        for server in servers:
            start = partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
            listeners = await nursery.start(start)
            server.port = listeners[0].socket.getsockname()[1]
        yield servers
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    async with listening([Backend(name) for name in names]) as out:
        yield out


@asynccontextmanager
async def endpoint(
    upstreams: list[Upstream],
    timeouts: EndpointTimeouts | None = None,
    on_suspect: Callable[[str], None] | None = None,
) -> AsyncIterator[Endpoint]:
    ep = Endpoint(
        "test",
        bind="127.0.0.1",
        port=0,
        timeouts=timeouts or EndpointTimeouts(),
        on_suspect=on_suspect,
    )
    ep.set_upstreams(upstreams)
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        yield ep
        nursery.cancel_scope.cancel()


# --- a small client ---------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """One keep-alive client connection (h11), for exact control over what is sent."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    @asynccontextmanager
    async def open(cls, port: int) -> AsyncIterator[Client]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            yield cls(stream)

    async def _next(self) -> h11.Event:
        while True:
            ev = self.conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def send_request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        hs = [("Host", "test.local"), *(headers or [])]
        if body and not any(n.lower() == "transfer-encoding" for n, _ in hs):
            hs.append(("Content-Length", str(len(body))))
        await self.stream.send_all(
            self.conn.send(h11.Request(method=method, target=path, headers=hs))
        )
        if body:
            for i in range(0, len(body), 65536):
                await self.stream.send_all(self.conn.send(h11.Data(data=body[i : i + 65536])))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))

    async def read_head(self) -> h11.Response:
        ev = await self._next()
        assert isinstance(ev, h11.Response), ev
        return ev

    async def read_body(self) -> bytes:
        body = b""
        while True:
            ev = await self._next()
            if isinstance(ev, h11.Data):
                body += ev.data
            else:
                assert isinstance(ev, h11.EndOfMessage), ev
                break
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return body

    async def request(self, method: str, path: str, body: bytes = b"", **kw: object) -> Reply:
        with trio.fail_after(WAIT):
            await self.send_request(method, path, body, **kw)  # type: ignore[arg-type]
            head = await self.read_head()
            data = await self.read_body()
        hs = {n.decode().lower(): v.decode() for n, v in head.headers}
        return Reply(head.status_code, hs, data)


async def get(port: int, path: str, method: str = "GET", body: bytes = b"") -> Reply:
    async with Client.open(port) as c:
        return await c.request(method, path, body)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the proxy closes."""
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            out = b""
            while chunk := await stream.receive_some(65536):
                out += chunk
            return out


# --- behaviour --------------------------------------------------------------------------------


async def test_round_robin_per_request_on_one_connection() -> None:
    async with backends("a", "b", "c") as bs, endpoint([b.upstream for b in bs]) as ep:
        async with Client.open(ep.address[1]) as c:
            names = [(await c.request("GET", "/")).body for _ in range(6)]
        assert names == [b"a", b"b", b"c", b"a", b"b", b"c"]


async def test_set_upstreams_applies_to_next_request() -> None:
    async with backends("a", "b") as (a, b), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as c:
            assert (await c.request("GET", "/")).body == b"a"
            ep.set_upstreams([b.upstream])
            assert [(await c.request("GET", "/")).body for _ in range(3)] == [b"b"] * 3


async def test_upstream_connections_are_pooled() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        for _ in range(5):
            assert (await get(ep.address[1], "/")).status == 200
        assert a.connections == 1


async def test_1mib_post_echoes_intact() -> None:
    body = bytes(range(256)) * 4096
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as c:
            reply = await c.request("POST", "/echo", body)
            assert reply.status == 200 and reply.body == body
            chunked = await c.request(
                "POST", "/echo", body, headers=[("Transfer-Encoding", "chunked")]
            )
            assert chunked.status == 200 and chunked.body == body


async def test_sse_first_event_arrives_before_response_ends() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as c:
            with trio.fail_after(WAIT):
                await c.send_request("GET", "/sse")
                head = await c.read_head()
                assert head.status_code == 200
                first = await c._next()
            # The replica holds the rest back until we have seen the first event.
            assert isinstance(first, h11.Data) and first.data == b"data: first\n\n"
            a.release.set()
            with trio.fail_after(WAIT):
                assert await c.read_body() == b"data: second\n\n"


async def test_no_upstream_is_503_with_retry_after_at_once() -> None:
    async with endpoint([]) as ep:
        with trio.fail_after(1.0):
            reply = await get(ep.address[1], "/")
        assert reply.status == 503 and "retry-after" in reply.headers


async def test_dead_upstream_costs_nothing_and_is_suspect() -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    suspects: list[str] = []
    try:
        async with backends("a") as (a,):
            ups = [Upstream("dead", "127.0.0.1", dead.getsockname()[1]), a.upstream]
            async with endpoint(ups, on_suspect=suspects.append) as ep:
                async with Client.open(ep.address[1]) as c:
                    replies = [await c.request("GET", "/") for _ in range(10)]
        assert [r.status for r in replies] == [200] * 10
        assert suspects and set(suspects) == {"dead"}
    finally:
        dead.close()


async def test_reset_before_response_retries_idempotent_only() -> None:
    async with backends("a", "b") as (a, b):
        # Every request to "/reset" resets on both: the GET is tried on both, then 502.
        async with endpoint([a.upstream, b.upstream]) as ep:
            assert (await get(ep.address[1], "/reset")).status == 502
            assert len(a.requests) == 1 and len(b.requests) == 1
            assert (await get(ep.address[1], "/reset", method="POST", body=b"x")).status == 502
            assert len(a.requests) + len(b.requests) == 3  # POST not replayed


async def test_read_idle_timeout_is_504() -> None:
    async with backends("a") as (a,):
        async with endpoint([a.upstream], EndpointTimeouts(read_idle=0.2)) as ep:
            assert (await get(ep.address[1], "/hang")).status == 504


async def test_broken_response_is_502() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        assert (await get(ep.address[1], "/broken")).status == 502


# --- the proxy's own answers, as text or as JSON (`proxy.answers`) ---------------------------

ACCEPT_JSON = [("Accept", "application/json")]


def json_error(reply: Reply, status: int, kind: str) -> str:
    """The message of an OpenAI-style JSON error answer, after checking its form."""
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    assert int(reply.headers["content-length"]) == len(reply.body)
    error = json.loads(reply.body)["error"]
    assert error["type"] == kind and error["code"] == status and error["param"] is None
    message = error["message"]
    assert isinstance(message, str)
    return message


def text_error(reply: Reply, status: int) -> str:
    assert reply.status == status
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert reply.body.endswith(b"\n")
    return reply.body.decode()[:-1]


async def test_no_replica_503_is_json_for_a_json_client_and_text_otherwise() -> None:
    async with endpoint([]) as ep, Client.open(ep.address[1]) as c:
        as_json = await c.request("GET", "/v1/models", headers=ACCEPT_JSON)
        assert json_error(as_json, 503, "unavailable") == "no ready replica"
        text = await c.request("GET", "/v1/models", headers=[("Accept", "*/*")])
        assert text_error(text, 503) == "no ready replica"
        # Only the body differs: the same Retry-After, the connection kept in both.
        assert as_json.headers["retry-after"] == text.headers["retry-after"] == "1"
        assert "connection" not in as_json.headers and "connection" not in text.headers


async def test_no_replica_503_to_head_has_no_body_and_keeps_the_connection() -> None:
    async with endpoint([]) as ep, Client.open(ep.address[1]) as c:
        head = await c.request("HEAD", "/", headers=ACCEPT_JSON)
        assert head.status == 503 and head.body == b""
        assert head.headers["content-type"] == "application/json"
        # The next answer on the connection is read cleanly: no stray body before it.
        after = await c.request("GET", "/", headers=ACCEPT_JSON)
        assert int(head.headers["content-length"]) == len(after.body)
        assert json_error(after, 503, "unavailable") == "no ready replica"


async def test_replica_closing_at_once_502_is_json_for_a_json_client_and_text_otherwise() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        a.fault = b""  # reads each request, closes without a word
        async with Client.open(ep.address[1]) as c:
            reply = await c.request("GET", "/v1/models", headers=ACCEPT_JSON)
        assert "closed the connection" in json_error(reply, 502, "upstream_error")
        # A JSON body (an OpenAI SDK's POST) asks for JSON too, with no Accept at all.
        async with Client.open(ep.address[1]) as c:
            reply = await c.request(
                "POST", "/v1/completions", b"{}", headers=[("Content-Type", "application/json")]
            )
        assert "closed the connection" in json_error(reply, 502, "upstream_error")
        assert reply.headers["connection"] == "close"
        async with Client.open(ep.address[1]) as c:
            reply = await c.request("POST", "/v1/completions", b"x")
        assert "closed the connection" in text_error(reply, 502)
        assert reply.headers["connection"] == "close"


async def test_slow_replica_504_is_json_for_a_json_client_and_text_otherwise() -> None:
    async with backends("a") as (a,):
        async with endpoint([a.upstream], EndpointTimeouts(read_idle=0.2)) as ep:
            async with Client.open(ep.address[1]) as c:
                reply = await c.request("GET", "/hang", headers=ACCEPT_JSON)
            assert json_error(reply, 504, "timeout") == "the replica did not answer in time"
            async with Client.open(ep.address[1]) as c:
                reply = await c.request("GET", "/hang", headers=[("Accept", "text/html")])
            assert text_error(reply, 504) == "the replica did not answer in time"


async def test_hop_by_hop_stripped_and_forwarded_headers_set() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as c:
            reply = await c.request(
                "GET",
                "/headers",
                headers=[
                    ("Connection", "X-Secret"),
                    ("X-Secret", "s"),
                    ("Keep-Alive", "timeout=1"),
                    ("TE", "trailers"),
                    ("Upgrade", "h2c"),
                    ("X-Forwarded-For", "203.0.113.7"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-End", "kept"),
                ],
            )
    got = {n.lower(): v for n, v in json.loads(reply.body)}
    for gone in ("connection", "x-secret", "keep-alive", "te", "upgrade"):
        assert gone not in got
    assert got["x-end"] == "kept"
    # The peer is no trusted proxy: what it said of the client is replaced (issue 13).
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == "test.local"
    assert got["x-request-id"]


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 40\r\n\r\nx",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    ],
)
async def test_malformed_request_is_400_close_nothing_forwarded(raw: bytes) -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        out = await raw_exchange(ep.address[1], raw)
        assert out.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in out
        assert a.requests == []


async def test_header_section_over_64k_is_431() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n"
        out = await raw_exchange(ep.address[1], raw)
        assert out.startswith(b"HTTP/1.1 431 ") and a.requests == []


async def test_slow_header_connections_do_not_stop_normal_requests() -> None:
    timeouts = EndpointTimeouts(header_read=1.0)
    async with backends("a") as (a,), endpoint([a.upstream], timeouts) as ep:
        port = ep.address[1]
        slow: list[trio.SocketStream] = []
        try:
            with trio.fail_after(WAIT):
                for _ in range(200):
                    s = await trio.open_tcp_stream("127.0.0.1", port)
                    await s.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                    slow.append(s)
                start = trio.current_time()
                async with Client.open(port) as c:
                    for _ in range(20):
                        assert (await c.request("GET", "/")).status == 200
                assert trio.current_time() - start < 2.0
                # The header-read deadline closes every slow connection, with a 408.
                out = await slow[0].receive_some(4096)
                assert out.startswith(b"HTTP/1.1 408 ")
        finally:
            for s in slow:
                await s.aclose()


async def test_begin_shutdown_finishes_in_flight_requests() -> None:
    async with backends("a") as (a,):
        ep = Endpoint("drain", bind="127.0.0.1", port=0)
        ep.set_upstreams([a.upstream])
        result: list[Reply] = []
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(ep.run)
                port = ep.address[1]
                idle = await trio.open_tcp_stream("127.0.0.1", port)  # keep-alive, idle

                async def slow_request() -> None:
                    result.append(await get(port, "/slow"))

                nursery.start_soon(slow_request)
                await a.arrived.wait()
                assert ep.in_flight("a") == 1
                ep.begin_shutdown(5.0)
                # run() returns once the slow request is done: the nursery then exits.
            assert [r.status for r in result] == [200]
            assert result[0].headers.get("connection") == "close"
            assert await idle.receive_some(10) == b""  # the idle one was closed at once
            await idle.aclose()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)


async def test_shutdown_deadline_cuts_requests_that_overrun() -> None:
    async with backends("a") as (a,):
        ep = Endpoint("drain", bind="127.0.0.1", port=0)
        ep.set_upstreams([a.upstream])
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(ep.run)
                port = ep.address[1]
                nursery.start_soon(raw_exchange, port, b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
                await a.arrived.wait()
                start = trio.current_time()
                ep.begin_shutdown(0.3)
            assert trio.current_time() - start < 2.0


async def test_port_in_use_is_a_clear_oserror() -> None:
    async with endpoint([]) as ep:
        other = Endpoint("clash", bind="127.0.0.1", port=ep.address[1])
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
            await other.run()


async def test_websocket_upgrade_is_tunnelled() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", ep.address[1])
            async with stream:
                await stream.send_all(
                    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\nhello"
                )
                got = b""
                while b"HELLO" not in got:
                    got += await stream.receive_some(4096)
                assert got.startswith(b"HTTP/1.1 101 ")
                await stream.send_all(b" again")
                got = b""
                while b"AGAIN" not in got:
                    got += await stream.receive_some(4096)
        assert a.requests[0][2] and (b"Upgrade", b"websocket") in a.requests[0][2]


async def test_statistics_and_in_flight() -> None:
    async with backends("a", "b") as (a, b), endpoint([a.upstream, b.upstream]) as ep:
        async with Client.open(ep.address[1]) as c:
            for _ in range(4):
                await c.request("GET", "/")
            await c.request("GET", "/broken")
        stats = ep.statistics()
    assert stats.requests_total == 5 and stats.in_flight == 0
    assert stats.status.s2xx == 4 and stats.status.s5xx == 1
    assert stats.latency.count == 5 and stats.latency.p50 is not None
    per = {r.replica_id: r for r in stats.replicas}
    assert per["a"].requests_total + per["b"].requests_total == 5
    assert ep.in_flight("a") == 0


async def test_many_concurrent_clients() -> None:
    async with backends("a", "b") as bs, endpoint([b.upstream for b in bs]) as ep:
        statuses: list[int] = []

        async def client() -> None:
            async with Client.open(ep.address[1]) as c:
                for _ in range(20):
                    statuses.append((await c.request("GET", "/")).status)

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(client)
    assert statuses == [200] * 400
    assert sum(b.connections for b in bs) <= 40


async def test_idle_keep_alive_client_is_closed_after_client_idle() -> None:
    async with backends("a") as (a,):
        async with endpoint([a.upstream], EndpointTimeouts(client_idle=0.3)) as ep:
            async with Client.open(ep.address[1]) as c:
                assert (await c.request("GET", "/")).status == 200
                with trio.fail_after(WAIT):
                    assert await c.stream.receive_some(10) == b""


async def test_client_hangup_while_replica_works_cuts_the_replica_connection() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", ep.address[1])
            await stream.send_all(b"GET /generate HTTP/1.1\r\nHost: a\r\n\r\n")
            await a.arrived.wait()
            await stream.aclose()  # the client gives up while the replica "generates"
        with trio.fail_after(2.0):
            await a.cut.wait()  # the proxy cut the replica's connection at once
        stats = ep.statistics()
        assert stats.in_flight == 0 and stats.status.s4xx == 1  # recorded as 499
        assert ep._balancer.pool.take(a.upstream, trio.current_time(), trust_recent=True) is None


async def test_websocket_tunnel_ends_after_read_idle_in_both_directions() -> None:
    async with backends("a") as (a,):
        async with endpoint([a.upstream], EndpointTimeouts(read_idle=0.3)) as ep:
            with trio.fail_after(WAIT):
                stream = await trio.open_tcp_stream("127.0.0.1", ep.address[1])
                async with stream:
                    await stream.send_all(
                        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    )
                    got = b""
                    while b"\r\n\r\n" not in got:
                        got += await stream.receive_some(4096)
                    assert got.startswith(b"HTTP/1.1 101 ")
                    # Busy for longer than read_idle: the tunnel stays.
                    for _ in range(8):
                        await stream.send_all(b"ping")
                        assert await stream.receive_some(4096) == b"PING"
                        await trio.sleep(0.1)
                    # Silent in both directions: the proxy ends the tunnel.
                    start = trio.current_time()
                    try:
                        assert await stream.receive_some(4096) == b""
                    except trio.BrokenResourceError:
                        pass  # ended with a reset: as good
                    assert trio.current_time() - start < 2.0


def _hide_close_from_pool(ep: Endpoint, upstream: Upstream) -> int:
    """Make the pool trust its idle connections as if the replica's FIN were still on its way.

    This is the race the stale-connection rule exists for: the replica closes a keep-alive
    connection between the proxy's reuse check and its send.
    """
    b = ep._balancer
    conns = b.pool._idle[upstream]
    for conn in conns:
        conn.stale = False
        conn.peer_closed = False
        conn.pooled_at = b.poller.now
    return len(conns)


async def test_stale_pooled_connection_is_retried_fresh_even_for_post() -> None:
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as c:
            assert (await c.request("GET", "/close-after")).status == 200
            await trio.sleep(0.05)  # the replica has closed the pooled connection
            assert _hide_close_from_pool(ep, a.upstream) == 1
            reply = await c.request("POST", "/echo", b"once")
        assert reply.status == 200 and reply.body == b"once"
        assert [r[0] for r in a.requests] == [b"GET", b"POST"]  # the POST arrived once
        assert a.connections == 2


async def test_post_read_then_closed_by_replica_is_not_replayed() -> None:
    suspects: list[str] = []
    async with backends("a", "b") as (a, b):
        async with endpoint([a.upstream, b.upstream], on_suspect=suspects.append) as ep:
            async with Client.open(ep.address[1]) as c:
                assert (await c.request("GET", "/")).body == b"a"
                assert (await c.request("GET", "/")).body == b"b"
                # Reused connection to "a"; it reads the POST and closes without answering.
                assert (await c.request("POST", "/drop", b"x")).status == 502
            assert [r[1] for r in a.requests + b.requests].count(b"/drop") == 1
            assert suspects == []  # a reused connection says nothing of the replica
            # An idempotent request in the same situation goes to the next replica.
            assert (await get(ep.address[1], "/")).status == 200
            before = len(a.requests) + len(b.requests)
            assert (await get(ep.address[1], "/drop")).status == 502
            assert len(a.requests) + len(b.requests) == before + 2


async def test_close_delimited_response_after_a_keep_alive_one_ends() -> None:
    # Regression (4b5f4ab): on a pooled connection, a response whose data and FIN arrive
    # together never ended, because the short read of the data cleared the readiness hint
    # while the FIN's edge had already been spent.
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as c:
            for _ in range(2):
                assert (await c.request("GET", "/")).body == b"a"  # keep-alive, pooled
                reply = await c.request("GET", "/close-delimited")  # bounded by WAIT
                assert reply.status == 200 and reply.body == b"a"
        assert a.connections == 2


async def test_request_pipelined_while_replica_works_is_not_lost() -> None:
    # The second request arrives while the session waits on the replica, so its read edge
    # finds nobody parked on the client connection: it must still be served.
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", ep.address[1])
            async with stream:
                await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
                await a.arrived.wait()
                await stream.send_all(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
                got = b""
                while got.count(b"HTTP/1.1 200") < 2:
                    got += await stream.receive_some(4096)
        assert [r[1] for r in a.requests] == [b"/slow", b"/two"]


# --- a connect that hangs (issue 3: a replica killed a moment ago) -----------------------------


@asynccontextmanager
async def black_hole() -> AsyncIterator[Upstream]:
    """An upstream whose connects neither complete nor fail: a listener with backlog 0
    whose one queue slot is taken (the kernel then drops further SYNs)."""
    hole = socket.socket()
    filler = socket.socket()
    try:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        filler.connect(hole.getsockname())
        yield Upstream("black-hole", "127.0.0.1", hole.getsockname()[1])
    finally:
        filler.close()
        hole.close()


async def test_a_hanging_connect_is_raced_and_its_upstream_skipped_a_moment() -> None:
    async with black_hole() as hole, backends("a") as (a,), endpoint([hole, a.upstream]) as ep:
        took: list[float] = []
        for _ in range(6):  # a fresh client connection each: round robin starts anew
            start = trio.current_time()
            reply = await get(ep.address[1], "/")
            took.append(trio.current_time() - start)
            assert reply.status == 200 and reply.body == b"a"
        # The first request waited ~150 ms for the hanging connect, then raced "a"; the
        # black hole is then skipped for a moment, so the others go to "a" at once.
        assert 0.1 < took[0] < 1.0, took
        assert max(took[1:]) < 0.1, took
        assert len(a.requests) == 6


async def test_hanging_connects_on_every_upstream_end_with_the_connect_timeout() -> None:
    async with black_hole() as hole:
        async with endpoint([hole], EndpointTimeouts(connect=0.5)) as ep:
            start = trio.current_time()
            assert (await get(ep.address[1], "/")).status == 502
            assert trio.current_time() - start < 2.0


# --- a replica killed mid-request (issue 3) ----------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [b"", b"HTTP/1.1 200 OK\r\n"],
    ids=["closed-after-reading", "closed-inside-the-head"],
)
async def test_replica_closing_before_a_whole_head_costs_an_idempotent_request_nothing(
    fault: bytes,
) -> None:
    suspects: list[str] = []
    async with backends("a", "b") as (a, b):
        a.fault = fault
        async with endpoint([a.upstream, b.upstream], on_suspect=suspects.append) as ep:
            # Passive health off: it would take "a" out after 3 failures (tested apart).
            ep.set_admission(outlier=Outlier(consecutive_5xx=0, failures=0))
            for _ in range(4):  # fresh client connections: "a" is picked first each time
                reply = await get(ep.address[1], "/")
                assert (reply.status, reply.body) == (200, b"b")
            assert len(a.requests) == 4 and len(b.requests) == 4
            assert set(suspects) == {"a"}
            # A POST that reached "a" is never replayed: the replica may have acted on it.
            ep.set_upstreams([a.upstream, b.upstream])
            before = len(b.requests)
            reply = await get(ep.address[1], "/", method="POST", body=b"x")
            assert reply.status == 502
            assert len(b.requests) == before


# --- hold mode: scale from zero (issue 5) -------------------------------------------------------


async def until(predicate: Callable[[], bool]) -> None:
    """Poll (the endpoint has no event for these states), bounded by WAIT."""
    for _ in range(int(WAIT / 0.005)):
        if predicate():
            return
        await trio.sleep(0.005)
    raise AssertionError("not reached within WAIT")


async def test_held_request_is_served_once_a_replica_arrives() -> None:
    calls: list[int] = []
    body = bytes(range(256)) * 256  # 64 KiB: held unread, then streamed to the replica
    async with backends("a") as (a,), endpoint([]) as ep:
        ep.hold_when_empty(WAIT, on_wait=lambda: calls.append(ep.waiting()))
        replies: list[Reply] = []

        async def fetch(method: str, path: str, data: bytes) -> None:
            replies.append(await get(ep.address[1], path, method=method, body=data))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch, "GET", "/", b"")
            nursery.start_soon(fetch, "POST", "/echo", body)
            await until(lambda: ep.waiting() == 2)
            assert calls == [1, 2]  # at once, as each request starts waiting
            await trio.sleep(0.1)
            assert replies == [] and a.requests == []
            ep.set_upstreams([a.upstream])
        assert ep.waiting() == 0
        assert sorted((r.status, r.body) for r in replies) == sorted([(200, b"a"), (200, body)])
        assert ep.statistics().status.s2xx == 2


async def test_held_request_gets_503_after_max_wait(mock_clock: MockClock) -> None:
    mock_clock.rate = 1.0  # real time flows (sockets, fail_after); jumps come on top
    async with endpoint([]) as ep:
        ep.hold_when_empty(5.0)
        replies: list[Reply] = []
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:

                async def fetch() -> None:
                    replies.append(await get(ep.address[1], "/"))

                nursery.start_soon(fetch)
                await until(lambda: ep.waiting() == 1)
                mock_clock.jump(4.0)
                await trio.sleep(0.05)
                assert replies == [] and ep.waiting() == 1  # still within max_wait
                mock_clock.jump(1.5)
        assert replies[0].status == 503 and int(replies[0].headers["retry-after"]) >= 1
        assert ep.waiting() == 0


async def test_hold_queue_is_bounded() -> None:
    async with backends("a") as (a,), endpoint([]) as ep:
        ep.hold_when_empty(WAIT, max_queue=2)
        held: list[Reply] = []

        async def fetch() -> None:
            held.append(await get(ep.address[1], "/"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            nursery.start_soon(fetch)
            await until(lambda: ep.waiting() == 2)
            with trio.fail_after(1.0):
                over = await get(ep.address[1], "/")
            assert over.status == 503 and "retry-after" in over.headers
            assert ep.waiting() == 2
            ep.set_upstreams([a.upstream])
        assert [r.status for r in held] == [200, 200]


async def test_begin_shutdown_releases_held_requests_with_503() -> None:
    ep = Endpoint("hold", bind="127.0.0.1", port=0)
    ep.hold_when_empty(WAIT)
    replies: list[Reply] = []
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(ep.run)

            async def fetch() -> None:
                replies.append(await get(ep.address[1], "/"))

            nursery.start_soon(fetch)
            await until(lambda: ep.waiting() == 1)
            start = trio.current_time()
            ep.begin_shutdown(5.0)
        # run() returned (the nursery exited) well before the drain deadline.
        assert trio.current_time() - start < 2.0
    assert replies[0].status == 503 and replies[0].headers.get("connection") == "close"
    assert ep.waiting() == 0


async def test_hold_mode_off_releases_held_requests_and_answers_at_once() -> None:
    async with endpoint([]) as ep:
        ep.hold_when_empty(WAIT)
        replies: list[Reply] = []
        async with trio.open_nursery() as nursery:

            async def fetch() -> None:
                replies.append(await get(ep.address[1], "/"))

            nursery.start_soon(fetch)
            await until(lambda: ep.waiting() == 1)
            ep.hold_when_empty(None)
        with trio.fail_after(1.0):
            replies.append(await get(ep.address[1], "/"))
        assert [r.status for r in replies] == [503, 503]
        with pytest.raises(ValueError):
            ep.hold_when_empty(0.0)


# --- statistics over a shorter window (the autoscaler's) ----------------------------------------


async def test_statistics_over_a_shorter_window(mock_clock: MockClock) -> None:
    mock_clock.rate = 1.0
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as c:
            for _ in range(3):
                assert (await c.request("GET", "/")).status == 200
            mock_clock.jump(20.0)
            assert (await c.request("GET", "/")).status == 200
        default, recent = ep.statistics(), ep.statistics(window=10.0)
    assert default.window == 60.0 and default.latency.count == 4
    assert recent.window == 10.0 and recent.latency.count == 1
    assert recent.requests_total == 4  # counters are since start, whatever the window
    assert ep.statistics(window=600.0).window == 60.0  # no more than is kept
    with pytest.raises(ValueError):
        ep.statistics(window=0.0)


# --- a fault in one client connection stays in it (issue 11, point 6) ---------------------------


class _SocketWhoseOptionsFail(socket.socket):
    """An accepted client socket on which every setsockopt fails (a kernel that refuses)."""

    def setsockopt(self, *args: object) -> None:
        raise OSError(errno.EINVAL, "injected setsockopt failure")


async def test_an_unexpected_error_in_one_connection_closes_only_that_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = forward.request_head_bytes
    calls = 0

    def fails_on_the_second_request(*args: Any, **kwargs: Any) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("injected fault in one session")
        return real(*args, **kwargs)

    monkeypatch.setattr(forward, "request_head_bytes", fails_on_the_second_request)
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as other, Client.open(ep.address[1]) as faulty:
            assert (await other.request("GET", "/")).status == 200
            with trio.fail_after(WAIT):
                await faulty.send_request("GET", "/")
                assert await faulty.stream.receive_some(65536) == b""  # closed, unanswered
            for _ in range(3):  # the other keep-alive connection goes on
                assert (await other.request("GET", "/")).status == 200
        assert (await get(ep.address[1], "/")).status == 200  # and new clients are served
    failures = [r for r in caplog.records if r.name == "proxy" and r.exc_info]
    assert len(failures) == 1
    assert failures[0].getMessage() == "endpoint test: connection from 127.0.0.1 failed; closed it"
    assert "injected fault in one session" in caplog.text


async def test_a_setsockopt_error_on_accept_closes_only_that_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = sockets.accept
    accepted = 0

    async def accept(listener: socket.socket) -> tuple[socket.socket, str]:
        nonlocal accepted
        sock, peer = await real(listener)
        accepted += 1
        if accepted == 2:
            return _SocketWhoseOptionsFail(fileno=sock.detach()), peer
        return sock, peer

    monkeypatch.setattr(sockets, "accept", accept)
    async with backends("a") as (a,), endpoint([a.upstream]) as ep:
        async with Client.open(ep.address[1]) as other:
            assert (await other.request("GET", "/")).status == 200
            with trio.fail_after(WAIT):
                async with Client.open(ep.address[1]) as faulty:
                    await faulty.send_request("GET", "/")
                    assert await faulty.stream.receive_some(65536) == b""
            assert (await other.request("GET", "/")).status == 200
        assert (await get(ep.address[1], "/")).status == 200
    assert "injected setsockopt failure" in caplog.text
