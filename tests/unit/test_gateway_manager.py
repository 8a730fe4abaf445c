"""GatewayManager with a real proxy `Gateway` on 127.0.0.1 and an in-process socket keeper
(real descriptor copies, as systemd's fd store holds them): the listener is kept under
`gateway`, a stop leaves the copy, the next manager serves it (a connection made while none
ran is answered), the route table it was given is what `/v1/models` lists, and a bad
`[gateway.tls]` refuses the start."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from config.parse_gateway import GatewaySettings
from config.spec import EndpointTls, Gateway
from daemon.gateway.manager import FD_NAME, GatewayManager
from daemon.reconcile.endpoint_tls import TlsFileError
from proxy.balancer import EndpointTimeouts
from proxy.endpoint import Endpoint
from tests.conftest import free_port
from tests.unit.test_endpoint_sockets import Keeper

SECTIONS = {"llama": Gateway(models=("llama-3.1-8b", "llama3.1"))}


@pytest.fixture
def keeper() -> Iterator[Keeper]:
    k = Keeper()
    try:
        yield k
    finally:
        k.close()


def manager(port: int, keeper: Keeper | None, endpoint: Endpoint, **kw: object) -> GatewayManager:
    async def sections() -> dict[str, Gateway]:
        return dict(SECTIONS)

    settings = GatewaySettings(host="127.0.0.1", port=port, **kw)  # type: ignore[arg-type]
    return GatewayManager(
        settings=settings,
        sections=sections,
        endpoint_of={"llama": endpoint}.get,
        replica_counts=lambda d: (1, 0) if d == "llama" else (0, 0),
        sockets=keeper,
    )


def send_models_request(port: int) -> socket.socket:
    """A client that connects and asks for /v1/models now, and reads the answer later."""
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return client


def read_answer(client: socket.socket) -> tuple[bytes, bytes]:
    chunks = []
    with client:
        while chunk := client.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


async def test_the_listener_is_kept_and_served_by_the_next_manager(keeper: Keeper) -> None:
    port = free_port()
    endpoint = Endpoint("llama", bind="127.0.0.1", port=free_port(), timeouts=EndpointTimeouts())
    first = manager(port, keeper, endpoint)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        assert ("keep", FD_NAME) in keeper.calls
        await first.open()
        status, body = await trio.to_thread.run_sync(
            read_answer, await trio.to_thread.run_sync(send_models_request, port)
        )
        assert status == b"HTTP/1.1 200 OK"
        listing = json.loads(body)
        assert [(m["id"], m["deployment"], m["loaded"]) for m in listing["data"]] == [
            ("llama-3.1-8b", "llama", True),
            ("llama3.1", "llama", True),
        ]
        with trio.fail_after(5):
            await first.drain(0.5)  # a stop: the kept copy stays
    assert ("forget", FD_NAME) not in keeper.calls and FD_NAME in keeper.fds
    # Nobody serves now: the connection waits in the kept copy's backlog.
    waiting = await trio.to_thread.run_sync(send_models_request, port)
    second = manager(port, keeper, endpoint)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert ("take", FD_NAME) in keeper.calls[-2:]
        await second.open()
        with trio.fail_after(10):
            status, _ = await trio.to_thread.run_sync(read_answer, waiting)
        assert status == b"HTTP/1.1 200 OK"
        await second.drain(0.5)


async def test_a_kept_socket_that_is_not_the_listener_is_replaced(keeper: Keeper) -> None:
    port, elsewhere = free_port(), free_port()
    stray = socket.socket()
    stray.bind(("127.0.0.1", elsewhere))
    stray.listen()
    keeper.keep(FD_NAME, stray.fileno())
    stray.close()
    endpoint = Endpoint("llama", bind="127.0.0.1", port=free_port(), timeouts=EndpointTimeouts())
    m = manager(port, keeper, endpoint)
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        assert keeper.calls[-3:] == [("take", FD_NAME), ("forget", FD_NAME), ("keep", FD_NAME)]
        await m.open()
        status, _ = await trio.to_thread.run_sync(
            read_answer, await trio.to_thread.run_sync(send_models_request, port)
        )
        assert status == b"HTTP/1.1 200 OK"
        await m.drain(0.5)


async def test_a_bad_tls_file_refuses_the_start(tmp_path: Path) -> None:
    endpoint = Endpoint("llama", bind="127.0.0.1", port=free_port(), timeouts=EndpointTimeouts())
    tls = EndpointTls(cert=str(tmp_path / "missing.crt"), key=str(tmp_path / "missing.key"))
    m = manager(free_port(), None, endpoint, tls=tls)
    m.tls_roots = (tmp_path,)
    async with trio.open_nursery() as nursery:
        with pytest.raises(TlsFileError) as info:  # not in an exception group: berthd names it
            await nursery.start(m.run)
    assert str(info.value).startswith("gateway.tls.cert: "), info.value
