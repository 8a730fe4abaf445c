"""Protocol edges (issue 13, point 8) against the real proxy on 127.0.0.1.

Each replica here is a raw socket server with a scripted answer, so that the bytes it sends
(an HTTP/1.0 status line, a reset in mid-body, `gzip, chunked`) are exactly the case under
test. Every wait is bounded.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import trio

from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.forward import MAX_BUFFERED_BODY
from proxy.upstreams import Upstream
from tests.integration.test_proxy_endpoint import WAIT, Client, raw_exchange

Script = Callable[["RawReplica", trio.SocketStream, h11.Request, bytes], Awaitable[None]]


@dataclass
class RawReplica:
    """Reads one request per connection (h11), records it, and runs `script` to answer."""

    script: Script
    port: int = 0
    requests: list[tuple[h11.Request, bytes]] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)  # each request's head as received
    go: trio.Event = field(default_factory=trio.Event)  # the test lets a script go on

    @property
    def upstream(self) -> Upstream:
        return Upstream("raw", "127.0.0.1", self.port)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER)
            request: h11.Request | None = None
            body = b""
            raw = b""
            try:
                with trio.fail_after(WAIT):
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            data = await stream.receive_some(65536)
                            raw += data
                            conn.receive_data(data)
                            continue
                        if isinstance(ev, h11.Request):
                            request = ev
                        elif isinstance(ev, h11.Data):
                            body += ev.data
                        elif isinstance(ev, h11.EndOfMessage):
                            break
                        else:
                            return
            except (trio.BrokenResourceError, h11.RemoteProtocolError):
                return
            assert request is not None
            self.heads.append(raw.split(b"\r\n\r\n", 1)[0])
            self.requests.append((request, body))
            try:
                await self.script(self, stream, request, body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


@asynccontextmanager
async def replica(script: Script) -> AsyncIterator[RawReplica]:
    r = RawReplica(script)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
        r.port = listeners[0].socket.getsockname()[1]
        yield r
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def proxy(up: RawReplica, **kw: object) -> AsyncIterator[Endpoint]:
    ep = Endpoint("edges", bind="127.0.0.1", port=0, **kw)  # type: ignore[arg-type]
    ep.set_upstreams([up.upstream])
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        yield ep
        nursery.cancel_scope.cancel()


async def answer(body: bytes, *, version: bytes = b"1.1") -> bytes:
    return b"HTTP/%s 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (version, len(body), body)


async def ok(r: RawReplica, s: trio.SocketStream, req: h11.Request, body: bytes) -> None:
    await s.send_all(await answer(json.dumps([req.target.decode(), len(body)]).encode()))


def reset(s: trio.SocketStream) -> None:
    s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    s.socket.close()


async def read_until_end(stream: trio.SocketStream) -> tuple[bytes, bool]:
    """Everything the proxy sends, and whether it ended with a reset (not a clean FIN)."""
    out = b""
    with trio.fail_after(WAIT):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return out, True
            if not data:
                return out, False
            out += data


# --- a response cut short is never a clean end, never a 2xx --------------------------------


async def cut_mid_body(r: RawReplica, s: trio.SocketStream, req: h11.Request, _: bytes) -> None:
    # Close-delimited (no length, no chunking): only a reset tells that it was cut.
    await s.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe first half")
    with trio.fail_after(WAIT):
        await r.go.wait()
    reset(s)


async def test_close_delimited_response_cut_by_a_reset_aborts_the_client_http10() -> None:
    async with replica(cut_mid_body) as r, proxy(r) as ep:
        stream = await trio.open_tcp_stream(*ep.address)
        async with stream:
            await stream.send_all(b"GET /gen HTTP/1.0\r\nHost: a\r\n\r\n")
            with trio.fail_after(WAIT):
                got = await stream.receive_some(65536)
                while b"the first half" not in got:
                    got += await stream.receive_some(65536)
            r.go.set()
            rest, was_reset = await read_until_end(stream)
        assert got.startswith(b"HTTP/1.1 200 ")
        assert was_reset, "the client saw a clean end of a cut response"
        stats = ep.statistics()
        assert stats.status.s2xx == 0 and stats.status.s5xx == 1


async def test_close_delimited_response_cut_by_a_reset_is_never_complete_http11() -> None:
    async with replica(cut_mid_body) as r, proxy(r) as ep:
        stream = await trio.open_tcp_stream(*ep.address)
        async with stream:
            await stream.send_all(b"GET /gen HTTP/1.1\r\nHost: a\r\n\r\n")
            with trio.fail_after(WAIT):
                got = await stream.receive_some(65536)
                while b"the first half" not in got:
                    got += await stream.receive_some(65536)
            r.go.set()
            rest, was_reset = await read_until_end(stream)
        assert b"Transfer-Encoding: chunked" in got
        assert not (got + rest).endswith(b"0\r\n\r\n"), "a last chunk after a cut"
        assert was_reset
        assert ep.statistics().status.s2xx == 0


# --- transfer codings -------------------------------------------------------------------------


async def test_request_with_a_coding_before_chunked_is_501_and_not_forwarded() -> None:
    async with replica(ok) as r, proxy(r) as ep:
        for coding in (b"gzip, chunked", b"identity, chunked"):
            out = await raw_exchange(
                ep.address[1],
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                + coding
                + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            assert out.startswith(b"HTTP/1.1 501 Not Implemented\r\n"), out
        assert r.requests == []


PAYLOAD = b"a model's answer, compressed by the replica itself " * 50
GZIPPED = gzip.compress(PAYLOAD)


async def gzip_chunked(r: RawReplica, s: trio.SocketStream, req: h11.Request, _: bytes) -> None:
    half = len(GZIPPED) // 2
    chunks = [GZIPPED[:half], GZIPPED[half:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    await s.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + body)


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        line, _, body = body.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            assert body == b"\r\n"
            return out
        out, body = out + body[:size], body[size + 2 :]


async def test_response_gzip_chunked_reaches_the_client_as_sent() -> None:
    async with replica(gzip_chunked) as r, proxy(r) as ep:
        out = await raw_exchange(
            ep.address[1], b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in head + b"\r\n"
    assert head.count(b"Transfer-Encoding") == 1
    # Without the chunked framing, what is left is the replica's gzip stream, intact.
    assert gzip.decompress(dechunk(body)) == PAYLOAD


async def test_response_gzip_chunked_to_an_http10_client_is_502() -> None:
    async with replica(gzip_chunked) as r, proxy(r) as ep:
        out = await raw_exchange(ep.address[1], b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 502 ")


# --- targets, chunk extensions ----------------------------------------------------------------


async def test_absolute_form_target_is_rewritten_and_its_host_checked() -> None:
    async with replica(ok) as r, proxy(r) as ep:
        out = await raw_exchange(
            ep.address[1],
            b"GET http://test.local/x?y=1 HTTP/1.1\r\nHost: test.local\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b'["/x?y=1", 0]')
        assert r.heads[0].startswith(b"GET /x?y=1 HTTP/1.1\r\n")
        out = await raw_exchange(
            ep.address[1], b"GET http://evil.example/x HTTP/1.1\r\nHost: test.local\r\n\r\n"
        )
        assert out.startswith(b"HTTP/1.1 400 ")
        assert len(r.requests) == 1


async def test_a_200_kb_chunk_extension_is_400() -> None:
    async with replica(ok) as r, proxy(r) as ep:
        out = await raw_exchange(
            ep.address[1],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"3;ext="
            + b"x" * 200_000
            + b"\r\nabc\r\n0\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 400 "), out[:100]
        assert r.requests == []


# --- bodies for an HTTP/1.0 replica -----------------------------------------------------------


async def http10_echo(r: RawReplica, s: trio.SocketStream, req: h11.Request, body: bytes) -> None:
    # An HTTP/1.0 server reads a body by its Content-Length only: a chunked one is lost.
    await s.send_all(await answer(body, version=b"1.0"))


async def streamed_chunked_post(port: int, parts: list[bytes]) -> bytes:
    """A chunked POST whose chunks come one by one, so the body is still under way when
    the proxy forwards the head."""
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n"
            )
            for p in parts:
                await trio.sleep(0.05)
                await stream.send_all(b"%x\r\n%s\r\n" % (len(p), p))
            await stream.send_all(b"0\r\n\r\n")
            out = b""
            while data := await stream.receive_some(65536):
                out += data
            return out


async def test_a_streamed_chunked_body_reaches_an_http10_replica_with_a_length() -> None:
    async with replica(http10_echo) as r, proxy(r) as ep:
        for _ in range(2):  # before and after the proxy has heard the replica's version
            out = await streamed_chunked_post(ep.address[1], [b"hello ", b"world"])
            assert out.endswith(b"\r\n\r\nhello world"), out
        for head in r.heads:
            assert b"Content-Length: 11" in head and b"Transfer-Encoding" not in head


async def test_a_chunked_body_over_the_buffer_for_an_http10_replica_is_411() -> None:
    async with replica(http10_echo) as r, proxy(r) as ep:
        piece = b"x" * 65536
        n = MAX_BUFFERED_BODY // len(piece) + 1
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream(*ep.address)
            async with stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                try:
                    for _ in range(n):
                        await stream.send_all(b"10000\r\n" + piece + b"\r\n")
                except trio.BrokenResourceError:
                    pass  # the proxy answered and closed while the rest was on its way
                out, _ = await read_until_end(stream)
        assert out.startswith(b"HTTP/1.1 411 Length Required\r\n"), out[:80]
        assert r.requests == []


async def test_an_http11_replica_gets_a_streamed_body_chunked() -> None:
    async with replica(ok) as r, proxy(r) as ep:
        for _ in range(2):
            out = await streamed_chunked_post(ep.address[1], [b"hello ", b"world"])
            assert out.endswith(b'["/echo", 11]'), out
        # The first went buffered (version not known yet), the second streamed.
        assert b"Content-Length: 11" in r.heads[0]
        assert b"Transfer-Encoding: chunked" in r.heads[1]


# --- what the client says about itself --------------------------------------------------------


async def echo_headers(r: RawReplica, s: trio.SocketStream, req: h11.Request, _: bytes) -> None:
    pairs = [[n.decode(), v.decode()] for n, v in req.headers.raw_items()]
    await s.send_all(await answer(json.dumps(pairs).encode()))


SPOOFED = [
    ("Forwarded", "for=198.51.100.1;proto=https"),
    ("X-Real-IP", "198.51.100.1"),
    ("X-Forwarded-For", "198.51.100.1"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"),
]


async def sent_headers(ep: Endpoint) -> dict[str, str]:
    async with Client.open(ep.address[1]) as c:
        reply = await c.request("GET", "/", headers=SPOOFED)
    return {n.lower(): v for n, v in json.loads(reply.body)}


async def test_forwarded_headers_from_an_untrusted_client_are_replaced() -> None:
    async with replica(echo_headers) as r, proxy(r) as ep:
        got = await sent_headers(ep)
    assert got["forwarded"] == 'for=127.0.0.1;host="test.local";proto=http'
    assert got["x-real-ip"] == "127.0.0.1"
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert "x-forwarded-port" not in got


async def test_forwarded_headers_from_a_trusted_proxy_are_kept() -> None:
    async with replica(echo_headers) as r, proxy(r, trusted_proxies=["127.0.0.0/8"]) as ep:
        got = await sent_headers(ep)
        ep.set_limits(None, ["10.0.0.0/8"])  # in place: for connections from now on
        untrusted = await sent_headers(ep)
    assert got["forwarded"] == (
        'for=198.51.100.1;proto=https, for=127.0.0.1;host="test.local";proto=http'
    )
    assert got["x-real-ip"] == "198.51.100.1"
    assert got["x-forwarded-for"] == "198.51.100.1, 127.0.0.1"
    assert got["x-forwarded-proto"] == "https"
    assert got["x-forwarded-port"] == "443"
    assert untrusted["x-forwarded-for"] == "127.0.0.1"


# --- interim responses ------------------------------------------------------------------------


async def continue_then_ok(r: RawReplica, s: trio.SocketStream, req: h11.Request, _: bytes) -> None:
    await s.send_all(b"HTTP/1.1 100 Continue\r\n\r\n" + await answer(b"ok"))


async def test_no_interim_response_to_an_http10_client() -> None:
    async with replica(continue_then_ok) as r, proxy(r) as ep:
        out = await raw_exchange(ep.address[1], b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"ok")
        out = await raw_exchange(
            ep.address[1], b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


async def test_timeouts_default_keeps_the_endpoint_usable() -> None:
    """The new body-rate fields are optional: an endpoint made as before serves as before."""
    async with replica(ok) as r, proxy(r, timeouts=EndpointTimeouts()) as ep:
        async with Client.open(ep.address[1]) as c:
            assert (await c.request("POST", "/p", b"x" * 100_000)).status == 200
