"""Probes against real listeners on 127.0.0.1: HTTP status, headers sent, timeouts, refusals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from config.spec import Probe
from daemon.health.probes import run_probe

Reply = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def serve(nursery: trio.Nursery, reply: Reply) -> int:
    listeners = await nursery.start(
        partial(trio.serve_tcp, lambda s: handle(s, reply), 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def handle(stream: trio.SocketStream, reply: Reply) -> None:
    async with stream:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            request += chunk
        await reply(stream, request)


def http(status: int, seen: list[bytes] | None = None) -> Reply:
    async def reply(stream: trio.SocketStream, request: bytes) -> None:
        if seen is not None:
            seen.append(request)
        await stream.send_all(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())

    return reply


def probe(**kw: object) -> Probe:
    return Probe(**{"port": 0, "path": "/health", "timeout": 1.0, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (404, False), (503, False)])
async def test_http_status_decides(status: int, ok: bool) -> None:
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, http(status))
        result = await run_probe(probe(), "127.0.0.1", port)
        assert (result.ok, result.detail) == (ok, f"HTTP {status}")
        nursery.cancel_scope.cancel()


async def test_path_and_headers_are_sent() -> None:
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, http(200, seen))
        await run_probe(
            probe(path="/ready?deep=1", headers={"X-Probe": "berth"}), "127.0.0.1", port
        )
        nursery.cancel_scope.cancel()
    assert seen[0].startswith(b"GET /ready?deep=1 HTTP/1.1\r\n")
    assert b"\r\nX-Probe: berth\r\n" in seen[0]


async def test_a_silent_replica_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def silent(stream: trio.SocketStream, request: bytes) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, silent)
        result = await run_probe(probe(timeout=2.0), "127.0.0.1", port)
        nursery.cancel_scope.cancel()
    assert (result.ok, result.detail) == (False, "timeout after 2s")


async def test_refused_connections_fail_http_and_tcp_probes() -> None:
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, http(200))
        nursery.cancel_scope.cancel()
    await trio.sleep(0.05)
    for p in (probe(), probe(path=None, tcp=True)):
        result = await run_probe(p, "127.0.0.1", port)
        assert not result.ok and result.detail.startswith("connect failed")


async def test_tcp_probe_passes_on_connect() -> None:
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, http(200))
        result = await run_probe(probe(path=None, tcp=True), "127.0.0.1", port)
        nursery.cancel_scope.cancel()
    assert result.ok


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        (b"", "nothing"),
        (b"garbage\r\n", "garbage"),
        (b"HTTP/2 200\r\n", "HTTP/2 200"),
        (b"HTTP/1.1 abc\r\n", "HTTP/1.1 abc"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "HTTP/2.0 200 OK"),
    ],
)
async def test_what_is_not_an_http_status_line_fails(reply: bytes, shown: str) -> None:
    async def answer(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(reply)  # and close

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, answer)
        result = await run_probe(probe(), "127.0.0.1", port)
        nursery.cancel_scope.cancel()
    assert (result.ok, result.detail) == (False, f"not an HTTP response ({shown!r})")


async def test_only_the_head_is_read() -> None:
    async def endless(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:  # a body that never ends does not hold the probe
            await stream.send_all(b"5\r\nhello\r\n")
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        port = await serve(nursery, endless)
        with trio.fail_after(5):
            result = await run_probe(probe(), "127.0.0.1", port)
        nursery.cancel_scope.cancel()
    assert (result.ok, result.detail) == (True, "HTTP 200")


async def test_a_host_header_of_the_spec_replaces_berths() -> None:
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, http(204, seen))
        result = await run_probe(probe(headers={"Host": "model.local"}), "127.0.0.1", port)
        nursery.cancel_scope.cancel()
    assert result.ok
    assert seen[0].lower().count(b"\r\nhost: ") == 1 and b"\r\nHost: model.local\r\n" in seen[0]
