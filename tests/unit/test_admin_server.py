"""The HTTP server core on the admin Unix socket, with stub handlers standing in for berthd's
routes: the socket file's modes and ownership, and the connection handling every listener
shares (keep-alive, timeouts, 400/413/500, streamed bodies)."""

from __future__ import annotations

import logging
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from daemon.http.listeners import SocketFileError, UnixSocketListener
from daemon.http.server import Handler, HttpServer, Request, Response, text_error


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        yield Path(d)


def admin_server(path: Path, handler: Handler, **kwargs: Any) -> HttpServer[Path]:
    return HttpServer(UnixSocketListener(path), handler, name="admin", **kwargs)


@asynccontextmanager
async def serving(path: Path, handler: Handler, **kwargs: Any) -> AsyncIterator[HttpServer[Path]]:
    server = admin_server(path, handler, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://berth") as c:
        yield c


async def raw_exchange(path: Path, data: bytes) -> bytes:
    """Send `data`, then read until the server closes the connection."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


async def echo_handler(request: Request) -> Response:
    return Response(
        json={
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "content_type": request.headers.get("content-type"),
            "body": request.body.decode(),
        }
    )


async def test_json_answer_carries_the_request(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    async with serving(path, echo_handler), client(path) as c:
        response = await c.post(
            "/v1/deployments/a%20b?source=echo.toml&flag",
            content=b'name = "echo"',
            headers={"Content-Type": "application/toml"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "method": "POST",
        "path": "/v1/deployments/a b",
        "query": {"source": "echo.toml", "flag": ""},
        "content_type": "application/toml",
        "body": 'name = "echo"',
    }


async def test_text_answer_and_status(short_dir: Path) -> None:
    async def handler(request: Request) -> Response:
        return Response(status=404, text="no such thing\n")

    path = short_dir / "berth.sock"
    async with serving(path, handler), client(path) as c:
        response = await c.get("/nope")
    assert response.status_code == 404
    assert response.reason_phrase == "Not Found"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "no such thing\n"


async def test_streamed_chunks_arrive_before_the_stream_ends(short_dir: Path) -> None:
    step = trio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first\n"
        await step.wait()  # only the client's having seen "first" lets the stream go on
        yield b"second\n"

    async def handler(request: Request) -> Response:
        return Response(stream=chunks(), content_type="application/x-ndjson")

    path = short_dir / "berth.sock"
    received = []
    async with serving(path, handler), client(path) as c:
        with trio.fail_after(5):
            async with c.stream("GET", "/v1/events") as response:
                assert response.headers["content-type"] == "application/x-ndjson"
                assert response.headers["transfer-encoding"] == "chunked"
                async for chunk in response.aiter_raw():
                    received.append(chunk)
                    step.set()
    assert b"".join(received) == b"first\nsecond\n"
    assert received[0] == b"first\n"


async def test_stream_is_closed_when_the_client_goes_away(short_dir: Path) -> None:
    closed = trio.Event()

    async def forever() -> AsyncIterator[bytes]:
        try:
            yield b"line\n"
            await trio.sleep_forever()
            yield b"never\n"
        finally:
            closed.set()

    async def handler(request: Request) -> Response:
        return Response(stream=forever())

    path = short_dir / "berth.sock"
    async with serving(path, handler):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(b"GET /logs HTTP/1.1\r\nhost: berth\r\n\r\n")
            with trio.fail_after(5):
                head = b""
                while b"line" not in head:
                    head += await stream.receive_some(65536)
        with trio.fail_after(5):
            await closed.wait()


async def test_failing_stream_cuts_the_body_and_the_server_goes_on(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial\n"
        raise RuntimeError("podman went away")

    async def handler(request: Request) -> Response:
        if request.path == "/broken":
            return Response(stream=broken())
        return Response(json={"ok": True})

    path = short_dir / "berth.sock"
    async with serving(path, handler), client(path) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            async with c.stream("GET", "/broken") as response:
                async for _ in response.aiter_raw():
                    pass
        assert (await c.get("/ok")).json() == {"ok": True}
    assert "admin response stream failed" in caplog.text


async def test_socket_is_0660_and_a_new_directory_0750(short_dir: Path) -> None:
    path = short_dir / "run" / "berth" / "berth.sock"
    old_umask = os.umask(0o022)
    try:
        async with serving(path, echo_handler):
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    finally:
        os.umask(old_umask)
    assert not path.exists()


async def test_an_existing_directory_keeps_its_mode(short_dir: Path) -> None:
    directory = short_dir / "run"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    async with serving(directory / "berth.sock", echo_handler):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_a_stale_socket_file_is_replaced(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a file nobody listens on: what a killed berthd leaves
    dead.close()
    assert path.exists()
    async with serving(path, echo_handler), client(path) as c:
        assert (await c.get("/v1/status")).status_code == 200
    assert not path.exists()


async def test_another_live_server_is_not_displaced(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    async with serving(path, echo_handler), client(path) as c:
        second = admin_server(path, echo_handler)
        with pytest.raises(SocketFileError, match=f"another berthd is serving {path}"):
            await second.run()
        # The first one still owns the file and still answers.
        assert (await c.get("/v1/status")).status_code == 200


async def test_a_regular_file_in_the_way_is_not_removed(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    path.write_text("precious")
    with pytest.raises(SocketFileError, match="exists and is not a socket"):
        await admin_server(path, echo_handler).run()
    assert path.read_text() == "precious"


async def test_handler_exception_gives_500_and_the_server_goes_on(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("deployment\nvanished")
        return Response(json={"ok": True})

    path = short_dir / "berth.sock"
    with caplog.at_level(logging.ERROR, logger="berthd.http"):
        async with serving(path, handler), client(path) as c:
            response = await c.get("/boom")
            assert response.status_code == 500
            assert response.json() == {"error": "internal error: RuntimeError: deployment vanished"}
            assert (await c.get("/fine")).json() == {"ok": True}
    assert "admin handler failed on GET /boom" in caplog.text
    assert "RuntimeError" in caplog.text


async def test_unserialisable_json_gives_500(short_dir: Path) -> None:
    async def handler(request: Request) -> Response:
        return Response(json={"when": object()})

    path = short_dir / "berth.sock"
    async with serving(path, handler), client(path) as c:
        response = await c.get("/v1/status")
    assert response.status_code == 500
    assert response.json()["error"].startswith("internal error: TypeError")


async def test_garbage_gets_400(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    async with serving(path, echo_handler):
        answer = await raw_exchange(path, b"HELLO THERE\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b'"error": "bad request' in answer
        # ...and the server still serves well-formed requests.
        answer = await raw_exchange(
            path, b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_body_over_the_limit_gets_413(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    async with serving(path, echo_handler, max_body=1000), client(path) as c:
        response = await c.post("/v1/deployments", content=b"x" * 300_000)
        assert response.status_code == 413
        assert "over 1000 bytes" in response.json()["error"]
        # Chunked, without a length up front: refused once the limit is passed.
        response = await c.post("/v1/deployments", content=_chunks(b"y" * 600, 3))
        assert response.status_code == 413
        assert (await c.post("/v1/deployments", content=b"small")).json()["body"] == "small"


async def _chunks(piece: bytes, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield piece


async def test_keep_alive_serves_several_requests_on_one_connection(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    async with serving(path, echo_handler):
        answer = await raw_exchange(
            path,
            b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n"
            b"GET /two HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b'"/one"' in answer and b'"/two"' in answer


async def test_expect_100_continue(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    async with serving(path, echo_handler):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(
                b"POST /v1/deployments HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
                b"expect: 100-continue\r\nconnection: close\r\n\r\n"
            )
            with trio.fail_after(5):
                interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"hello")
            answer = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(65536):
                    answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b'"body": "hello"' in answer


async def test_response_takes_one_body_kind_only() -> None:
    with pytest.raises(ValueError, match="at most one"):
        Response(json={}, text="")


async def test_bytes_body_extra_headers_and_head(short_dir: Path) -> None:
    async def handler(request: Request) -> Response:
        return Response(
            body=b"\x00raw", content_type="application/x-raw", headers=(("Allow", "GET"),)
        )

    path = short_dir / "berth.sock"
    async with serving(path, handler), client(path) as c:
        got = await c.get("/raw")
        head = await c.head("/raw")
    assert got.content == b"\x00raw" and got.headers["content-type"] == "application/x-raw"
    assert got.headers["allow"] == "GET"
    assert head.content == b"" and head.headers["content-length"] == "4"


async def test_idle_and_slow_requests_are_closed_unanswered(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    async with serving(path, echo_handler, idle_timeout=0.05, request_timeout=0.05):
        for sent in (b"", b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc"):
            assert await raw_exchange(path, sent) == b""


async def test_refusals_can_be_plain_text(short_dir: Path) -> None:
    path = short_dir / "berth.sock"
    async with serving(path, echo_handler, errors=text_error):
        answer = await raw_exchange(path, b"HELLO THERE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"content-type: text/plain; charset=utf-8" in answer
    assert b"\r\n\r\nbad request: illegal request line" in answer and answer.endswith(b"\n")


async def test_a_response_that_cannot_be_sent_ends_only_its_connection(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/bad":  # a header h11 refuses to send: an error past the handler
            return Response(json={}, headers=(("x-note", "two\r\nlines"),))
        return Response(json={"ok": True})

    path = short_dir / "berth.sock"
    async with serving(path, handler):
        with trio.fail_after(5):
            async with client(path) as c, client(path) as other:
                assert (await other.get("/ok")).json() == {"ok": True}
                with pytest.raises(httpx.RemoteProtocolError):
                    await c.get("/bad")
                assert (await other.get("/ok")).json() == {"ok": True}  # kept alive
            async with client(path) as c:
                assert (await c.get("/ok")).json() == {"ok": True}
    assert "admin connection failed answering GET /bad; closed it" in caplog.text
    assert "LocalProtocolError" in caplog.text


async def test_a_producer_feeds_the_stream_beside_it(short_dir: Path) -> None:
    send, receive = trio.open_memory_channel[bytes](0)

    async def produce() -> None:
        async with send:
            for i in range(3):
                await send.send(f"line {i}\n".encode())

    async def handler(request: Request) -> Response:
        return Response(stream=receive, producer=produce, content_type="text/plain")

    path = short_dir / "berth.sock"
    async with serving(path, handler), client(path) as c:
        with trio.fail_after(5):
            response = await c.get("/logs")
    assert response.text == "line 0\nline 1\nline 2\n"


async def test_a_failing_producer_cuts_the_body_and_the_server_goes_on(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/ok":
            return Response(json={"ok": True})
        send, receive = trio.open_memory_channel[bytes](1)

        async def produce() -> None:
            await send.send(b"partial\n")
            raise RuntimeError("the producer broke")  # its channel is never closed

        return Response(stream=receive, producer=produce)

    path = short_dir / "berth.sock"
    async with serving(path, handler), client(path) as c:
        with trio.fail_after(5):
            with pytest.raises(httpx.RemoteProtocolError):
                async with c.stream("GET", "/broken") as response:
                    async for _ in response.aiter_raw():
                        pass
            assert (await c.get("/ok")).json() == {"ok": True}
    assert "admin response stream's producer failed" in caplog.text
    assert "the producer broke" in caplog.text


async def test_the_producer_is_cancelled_when_the_client_goes_away(short_dir: Path) -> None:
    ended = trio.Event()

    async def handler(request: Request) -> Response:
        send, receive = trio.open_memory_channel[bytes](0)

        async def produce() -> None:
            try:
                async with send:
                    while True:
                        await send.send(b"line\n")
            finally:
                ended.set()

        return Response(stream=receive, producer=produce)

    path = short_dir / "berth.sock"
    async with serving(path, handler):
        with trio.fail_after(5):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(b"GET /logs HTTP/1.1\r\nhost: berth\r\n\r\n")
                received = b""
                while b"line" not in received:
                    received += await stream.receive_some(65536)
            await ended.wait()


async def test_a_producer_needs_a_stream() -> None:
    async def produce() -> None:
        pass

    with pytest.raises(ValueError, match="producer only with a stream"):
        Response(producer=produce)
