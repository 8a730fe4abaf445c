"""GatewayManager with a real proxy `Gateway` on 127.0.0.1 and an in-process socket keeper
(real descriptor copies, as systemd's fd store holds them): the listener is kept under
`gateway`, a stop leaves the copy, the next manager serves it (a connection made while none
ran is answered), the route table it was given is what `/v1/models` lists, a bad
`[gateway.tls]` refuses the start, and `[gateway.auth]` protects it (again after a reload)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from config.parse_gateway import GatewaySettings
from config.secret_ref import SecretRef
from config.spec import DeploymentSpec, EndpointAuth, EndpointTls, Gateway
from config.spec import Endpoint as EndpointSpec
from daemon.gateway.manager import CREDENTIALS_NAME, FD_NAME, GatewayManager, Placed
from daemon.reconcile.endpoint_tls import TlsFileError
from proxy.auth import Credentials, hash_key
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
    async def sections() -> dict[str, DeploymentSpec]:
        return {
            d: DeploymentSpec(d, "localhost/x:1", 8080, EndpointSpec(port=18000), gateway=g)
            for d, g in SECTIONS.items()
        }

    settings = GatewaySettings(host="127.0.0.1", port=port, **kw)  # type: ignore[arg-type]
    return GatewayManager(
        settings=settings,
        sections=sections,
        endpoint_of={"llama": endpoint}.get,
        replicas=lambda d: Placed(ready=1) if d == "llama" else Placed(),
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


async def test_a_kept_socket_that_is_not_the_listener_is_replaced(
    keeper: Keeper, caplog: pytest.LogCaptureFixture
) -> None:
    """The kept listener is on another address: `[gateway] listen` changed across a restart,
    and the log says so, old -> new; the old address no longer listens."""
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
        assert (
            f"gateway listen changed (127.0.0.1:{elsewhere} -> 127.0.0.1:{port}): the listener "
            f"kept from before the restart is closed; binding 127.0.0.1:{port}"
        ) in caplog.messages
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", elsewhere), timeout=5).close()
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


class StubCredentials:
    """What GatewayManager asks of EndpointCredentials: the set for a name and an auth."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, EndpointAuth | None]] = []
        self.token = b"first"

    async def credentials(self, name: str, auth: EndpointAuth | None) -> Credentials | None:
        self.asked.append((name, auth))
        return Credentials(keys={"secret:gw": hash_key(self.token)})


def get_models(port: int, token: str | None) -> bytes:
    head = "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall((head + "\r\n").encode())
    return read_answer(client)[0]


async def test_gateway_auth_from_settings_and_again_on_reload() -> None:
    port = free_port()
    endpoint = Endpoint("llama", bind="127.0.0.1", port=free_port(), timeouts=EndpointTimeouts())
    auth = EndpointAuth(api_keys=(SecretRef("gw"),))
    m = manager(port, None, endpoint, auth=auth)
    stub = StubCredentials()
    m.credentials = stub  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        await m.open()
        assert stub.asked == [(CREDENTIALS_NAME, auth)]  # no deployment can be named so
        assert await trio.to_thread.run_sync(get_models, port, None) == b"HTTP/1.1 401 Unauthorized"
        assert await trio.to_thread.run_sync(get_models, port, "first") == b"HTTP/1.1 200 OK"
        stub.token = b"second"  # the secret has a new value: SIGHUP
        assert await m.reload() == []
        assert (
            await trio.to_thread.run_sync(get_models, port, "first") == b"HTTP/1.1 401 Unauthorized"
        )
        assert await trio.to_thread.run_sync(get_models, port, "second") == b"HTTP/1.1 200 OK"
        await m.drain(0.5)
