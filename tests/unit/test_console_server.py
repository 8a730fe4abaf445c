"""The console's listener and server over real sockets, in-process: TLS from
`[console.tls]` (trustme's certificates) with a `Secure` cookie, the listener kept in the fd
store as `console` and taken back, the server's own refusals with the console's headers,
and TLS files that do not load named as `console.tls.*`."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from config.parse_console import ConsoleSettings
from config.spec import EndpointTls
from daemon.api.control_plane import ControlPlane
from daemon.console.server import FD_NAME, ConsoleServer
from daemon.reconcile.endpoint_tls import TlsFileError
from daemon.secrets.passwords import hash_password
from daemon.store.access import StoreAccess
from daemon.store.console_users import set_console_user
from daemon.store.database import Store
from daemon.store.events import EventLog
from tests.conftest import free_port
from tests.unit.test_console import Box


class Keeper:
    """The fd store's side, recorded: what was kept, and what a restart passes back."""

    def __init__(self) -> None:
        self.kept: dict[str, socket.socket] = {}
        self.passed: dict[str, socket.socket] = {}
        self.forgotten: list[str] = []

    def take(self, name: str) -> socket.socket | None:
        return self.passed.pop(name, None)

    def keep(self, name: str, fileno: int) -> bool:
        self.kept[name] = socket.socket(fileno=socket.dup(fileno))
        return True

    def forget(self, name: str) -> bool:
        self.forgotten.append(name)
        return True


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ControlPlane]:
    store = Store(tmp_path / "berth.db")
    access = StoreAccess(store)
    try:
        yield Box(access, EventLog(access))  # type: ignore[misc]
    finally:
        store.close()


def install(root: Path, ca: trustme.CA) -> EndpointTls:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    for name, pem in (("c.crt", cert.cert_chain_pems[0]), ("c.key", cert.private_key_pem)):
        (root / name).write_bytes(pem.bytes())
        (root / name).chmod(0o600)
    return EndpointTls(str(root / "c.crt"), str(root / "c.key"))


async def test_tls_console_sets_a_secure_cookie(tmp_path: Path, daemon: ControlPlane) -> None:
    root = tmp_path / "credentials"
    root.mkdir(mode=0o700)
    ca = trustme.CA()
    port = free_port()
    settings = ConsoleSettings("127.0.0.1", port, tls=install(root, ca))
    server = ConsoleServer(settings, daemon, tls_roots=(root,))
    await daemon.store.call(set_console_user, "alice", hash_password("pw"))
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        assert address == ("127.0.0.1", port)
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=trusted) as c:
            with trio.fail_after(10):
                form = await c.get("/console/signin")
                assert form.status_code == 200
                assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
                signed = await c.post("/console/signin", data={"name": "alice", "password": "pw"})
                assert signed.status_code == 303
                assert signed.headers["set-cookie"].endswith("; Secure")
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served there
            async with httpx.AsyncClient() as plain:
                with trio.fail_after(10):
                    await plain.get(f"http://127.0.0.1:{port}/console/signin")
        nursery.cancel_scope.cancel()


async def test_tls_files_that_do_not_load_are_named_as_console_tls(
    tmp_path: Path, daemon: ControlPlane
) -> None:
    root = tmp_path / "credentials"
    root.mkdir(mode=0o700)
    tls = install(root, trustme.CA())
    await trio.Path(tls.key).write_bytes(b"not a key")
    server = ConsoleServer(
        ConsoleSettings("127.0.0.1", free_port(), tls=tls), daemon, tls_roots=(root,)
    )
    async with trio.open_nursery() as nursery:
        with pytest.raises(TlsFileError, match=r"^console\.tls\.key: is not a PEM private key"):
            await nursery.start(server.run)


async def test_listener_kept_in_the_fd_store_and_taken_back(daemon: ControlPlane) -> None:
    keeper = Keeper()
    port = free_port()
    settings = ConsoleSettings("127.0.0.1", port)
    async with trio.open_nursery() as nursery:
        await nursery.start(ConsoleServer(settings, daemon, keeper=keeper).run)
        nursery.cancel_scope.cancel()
    kept = keeper.kept.pop(FD_NAME)
    assert kept.getsockname() == ("127.0.0.1", port)
    # The next berthd is passed the kept copy: it serves from it, binding nothing.
    keeper.passed[FD_NAME] = kept
    async with trio.open_nursery() as nursery:
        await nursery.start(ConsoleServer(settings, daemon, keeper=keeper).run)
        assert keeper.kept == {} and keeper.forgotten == []
        async with httpx.AsyncClient() as c:
            with trio.fail_after(10):
                answer = await c.get(f"http://127.0.0.1:{port}/console/signin")
        assert answer.status_code == 200
        nursery.cancel_scope.cancel()
    # A copy of another address (the listen changed) is closed and forgotten; a new bind.
    keeper.passed[FD_NAME] = socket.create_server(("127.0.0.1", 0))
    async with trio.open_nursery() as nursery:
        await nursery.start(ConsoleServer(settings, daemon, keeper=keeper).run)
        assert keeper.forgotten == [FD_NAME] and FD_NAME in keeper.kept
        nursery.cancel_scope.cancel()
    keeper.kept[FD_NAME].close()


async def test_the_servers_own_refusals_carry_the_headers(daemon: ControlPlane) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(ConsoleServer(ConsoleSettings("127.0.0.1", port), daemon).run)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET /console/ HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n")
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive_some(4096)
        head = answer.decode().lower()
        assert head.startswith("http/1.1 400")
        assert "content-security-policy: default-src 'self'" in head
        assert "x-frame-options: deny" in head
        nursery.cancel_scope.cancel()
