"""Listening sockets that outlive their owner (issue 15): EndpointManager and the admin
socket with a socket keeper, as under systemd's fd store. The keeper here holds real copies
of the descriptors (os.dup: what SCM_RIGHTS gives systemd), so the kernel's side is real:
a copy keeps the socket listening and its backlog accepting after the owner closed its own.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from config.spec import Endpoint as EndpointSpec
from daemon.http.listeners import UnixSocketListener
from daemon.http.server import HttpServer, Request, Response
from daemon.reconcile.endpoints import EndpointManager, endpoint_fd_name
from tests.conftest import free_port


class Keeper:
    """What systemd does with FDSTORE=1 / FDSTOREREMOVE=1, in-process."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []

    def take(self, name: str) -> socket.socket | None:
        fd = self.fds.get(name)
        self.calls.append(("take", name))
        return None if fd is None else socket.socket(fileno=os.dup(fd))

    def keep(self, name: str, fileno: int) -> bool:
        self.calls.append(("keep", name))
        old = self.fds.pop(name, None)
        if old is not None:
            os.close(old)
        self.fds[name] = os.dup(fileno)
        return True

    def forget(self, name: str) -> bool:
        self.calls.append(("forget", name))
        fd = self.fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        return True

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


@pytest.fixture
def keeper() -> Iterator[Keeper]:
    k = Keeper()
    try:
        yield k
    finally:
        k.close()


def spec_on(port: int) -> EndpointSpec:
    return EndpointSpec(port=port, bind="127.0.0.1")


def send_request(port: int) -> socket.socket:
    """A client that connects and sends its request now, and reads the answer later."""
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return client


def read_status(client: socket.socket) -> bytes:
    with client:
        return client.recv(64).split(b"\r\n", 1)[0]


async def test_a_connection_made_while_no_endpoint_runs_is_served_by_the_next(
    keeper: Keeper,
) -> None:
    port = free_port()
    name = endpoint_fd_name("127.0.0.1", port)
    first = EndpointManager(drain_timeout=0.5)
    first.sockets = keeper
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await first.ensure("a", spec_on(port))
        assert ("keep", name) in keeper.calls
        await first.drain_all()  # a stop (or a restart): the kept copy stays
        nursery.cancel_scope.cancel()
    assert ("forget", name) not in keeper.calls and name in keeper.fds
    # Nobody serves now: the connection waits in the backlog (refused without the copy).
    waiting = await trio.to_thread.run_sync(send_request, port)
    second = EndpointManager(drain_timeout=0.5)
    second.sockets = keeper
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        with trio.fail_after(10):
            endpoint = await second.ensure("a", spec_on(port))
            assert endpoint.address == ("127.0.0.1", port)
            # No replica: the new endpoint's own answer, so it accepted the waiting one.
            assert (
                await trio.to_thread.run_sync(read_status, waiting)
                == b"HTTP/1.1 503 Service Unavailable"
            )
        nursery.cancel_scope.cancel()


async def test_without_the_copy_the_same_connection_is_refused() -> None:
    port = free_port()
    manager = EndpointManager(drain_timeout=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await manager.ensure("a", spec_on(port))
        await manager.drain_all()
        nursery.cancel_scope.cancel()
    with pytest.raises(ConnectionRefusedError):
        await trio.to_thread.run_sync(send_request, port)


async def test_gone_for_good_is_forgotten_and_a_move_keeps_the_new_address(
    keeper: Keeper,
) -> None:
    old_port, new_port = free_port(), free_port()
    manager = EndpointManager(drain_timeout=0.5)
    manager.sockets = keeper
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with trio.fail_after(10):
            await manager.ensure("a", spec_on(old_port))
            await manager.ensure("a", spec_on(new_port))  # moved
            old, new = (endpoint_fd_name("127.0.0.1", p) for p in (old_port, new_port))
            assert keeper.calls.index(("keep", new)) < keeper.calls.index(("forget", old))
            assert set(keeper.fds) == {new}
            with pytest.raises(ConnectionRefusedError):  # nobody holds the old one
                socket.create_connection(("127.0.0.1", old_port), timeout=5).close()
            await manager.close("a")  # the deployment removed
            assert keeper.fds == {} and ("forget", new) in keeper.calls
        nursery.cancel_scope.cancel()


async def test_a_passed_socket_on_another_address_is_closed_and_bound_anew(
    keeper: Keeper,
) -> None:
    port = free_port()
    name = endpoint_fd_name("127.0.0.1", port)
    with socket.create_server(("127.0.0.1", 0)) as wrong:
        keeper.keep(name, wrong.fileno())
    manager = EndpointManager(drain_timeout=0.5)
    manager.sockets = keeper
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        endpoint = await manager.ensure("a", spec_on(port))
        assert endpoint.address == ("127.0.0.1", port)
        assert keeper.calls[-3:] == [("take", name), ("forget", name), ("keep", name)]
        nursery.cancel_scope.cancel()


async def test_the_admin_socket_is_taken_back_with_no_stale_check(keeper: Keeper) -> None:
    async def hello(request: Request) -> Response:
        return Response(200, {"hello": 1})

    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        path = Path(d) / "berth.sock"
        for _ in range(2):  # bound and kept, then taken back (the copy answers: ours)
            server = HttpServer(UnixSocketListener(path, keeper), hello, name="admin")
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                transport = httpx.AsyncHTTPTransport(uds=str(path))
                async with httpx.AsyncClient(transport=transport) as client:
                    assert (await client.get("http://berth/")).json() == {"hello": 1}
                nursery.cancel_scope.cancel()
            assert path.exists()  # the kept socket's file stays for the next one
        assert [c for c in keeper.calls if c[0] != "take"] == [("keep", "admin")]
        # Without the copy the file is a dead one's leftover: replaced, and removed at exit.
        keeper.forget("admin")
        server = HttpServer(UnixSocketListener(path), hello, name="admin")
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            nursery.cancel_scope.cancel()
        assert not path.exists()


async def test_a_drain_answers_a_connection_accepted_before_it() -> None:
    """A planned restart cuts nothing accepted: the old process's drain answers a
    connection it accepted whose request had not arrived yet (not idle: new)."""
    from proxy.endpoint import Endpoint

    endpoint = Endpoint("a", bind="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(10):
            client = trio.socket.socket()
            await client.connect(endpoint.address)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert endpoint.connections() == 1  # accepted; its session waits for a request
            endpoint.begin_shutdown(5.0)
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await client.recv(64)
            client.close()
        assert answer.startswith(b"HTTP/1.1 503 ")  # answered (nothing to forward to), not cut
        nursery.cancel_scope.cancel()


async def test_a_failed_listener_is_forgotten_so_the_next_round_binds_again(
    keeper: Keeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy import endpoint as proxy_endpoint

    real_accept = proxy_endpoint.sockets.accept
    broken = [True]

    async def accept(listener: socket.socket) -> tuple[socket.socket, str]:
        if broken:
            broken.clear()
            raise RuntimeError("a bug in the accept loop")
        return await real_accept(listener)

    monkeypatch.setattr(proxy_endpoint.sockets, "accept", accept)
    port = free_port()
    name = endpoint_fd_name("127.0.0.1", port)
    manager = EndpointManager(drain_timeout=0.5)
    manager.sockets = keeper
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with trio.fail_after(10):
            await manager.ensure("a", spec_on(port))
            await trio.testing.wait_all_tasks_blocked()  # its accept loop has failed
            assert manager.get("a") is None and name not in keeper.fds  # no copy holds it
            again = await manager.ensure("a", spec_on(port))  # bound anew, and kept
            assert again.address == ("127.0.0.1", port) and name in keeper.fds
        nursery.cancel_scope.cancel()
