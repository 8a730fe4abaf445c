"""berthd's HTTP client helper against real listeners: Unix socket and TCP, bodies as they
arrive, cancellation, and its failures by kind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import trio

from daemon.http import client
from daemon.http.listeners import UnixSocketListener
from daemon.http.server import HttpServer, Request, Response
from tests.unit.test_probes import Reply, serve


async def tcp_server(nursery: trio.Nursery, reply: Reply) -> client.TcpAddress:
    return client.TcpAddress("127.0.0.1", await serve(nursery, reply))


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("unix:///run/podman/podman.sock", client.UnixAddress("/run/podman/podman.sock")),
        ("http+unix:///x.sock", client.UnixAddress("/x.sock")),
        ("tcp://127.0.0.1:8888", client.TcpAddress("127.0.0.1", 8888)),
        ("http://[::1]:8888", client.TcpAddress("::1", 8888)),
        ("ssh://host/x", None),
        ("tcp://host", None),
    ],
)
def test_address_of_url(url: str, address: client.Address | None) -> None:
    assert client.address_of_url(url) == address


async def test_a_streamed_body_arrives_as_it_is_sent() -> None:
    send, receive = trio.open_memory_channel[bytes](0)

    async def handler(request: Request) -> Response:
        assert request.headers["host"] == "podman"
        return Response(stream=receive, content_type="text/plain")

    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        path = Path(d) / "s.sock"
        async with trio.open_nursery() as nursery:
            await nursery.start(HttpServer(UnixSocketListener(path), handler).run)
            with trio.fail_after(5):
                async with client.request(
                    client.UnixAddress(str(path)), "GET", "/logs", [("Host", "podman")]
                ) as response:
                    assert response.status == 200
                    assert response.headers["content-type"] == "text/plain"
                    for line in (b"one\n", b"two\n"):  # each one before the next is sent
                        await send.send(line)
                        assert await anext(response) == line
                    await send.aclose()
                    assert await response.read() == b""
            nursery.cancel_scope.cancel()


async def test_error_status_is_a_status_and_read_is_bounded() -> None:
    async def reply(stream: trio.SocketStream, request: bytes) -> None:
        body = b'{"message": "no such container"}'
        head = f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(body)}\r\n\r\n"
        await stream.send_all(head.encode() + body)

    async with trio.open_nursery() as nursery:
        address = await tcp_server(nursery, reply)
        async with client.request(address, "GET", "/x", [("Host", "x")]) as response:
            assert response.status == 404
            assert await response.read(limit=12) == b'{"message": '
        nursery.cancel_scope.cancel()


async def test_cancelling_a_quiet_stream_closes_it() -> None:
    closed = trio.Event()

    async def reply(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert await stream.receive_some(10) == b""  # the client hung up
        closed.set()

    async with trio.open_nursery() as nursery:
        address = await tcp_server(nursery, reply)
        with trio.move_on_after(0.2) as scope:
            async with client.request(address, "GET", "/events", [("Host", "x")]) as response:
                async for _ in response:
                    pass
        assert scope.cancelled_caught
        with trio.fail_after(5):
            await closed.wait()
        nursery.cancel_scope.cancel()


async def test_failures_by_kind() -> None:
    async def hang_up(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async with trio.open_nursery() as nursery:
        address = await tcp_server(nursery, hang_up)
        async with client.request(address, "GET", "/", [("Host", "x")]) as response:
            with pytest.raises(client.BadResponse):  # the body was cut short
                await response.read()
        with pytest.raises(client.HttpClientError, match="cannot send GET"):
            async with client.request(address, "GET", "/"):  # HTTP/1.1 wants a Host
                pass
        nursery.cancel_scope.cancel()
    with pytest.raises(client.ConnectFailed, match="Connection refused"):
        async with client.request(address, "GET", "/", [("Host", "x")]):
            pass
    with pytest.raises(client.ConnectFailed):
        async with client.request(
            client.UnixAddress("/nonexistent/s.sock"), "GET", "/", [("Host", "x")]
        ):
            pass
