"""`proxy.tls.TlsConn` over a real loopback TCP pair with trustme certificates.

The server side is a `TlsConn` in a real poller; the client side is the test's own
`ssl.SSLObject` on a blocking socket (in a thread), so that the test decides exactly
which bytes cross: a record cut in two, a close_notify, plain HTTP. Every wait is bounded.
"""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme

from proxy.poller import Poller
from proxy.sockets import Timeout
from proxy.tls import TlsConn, server_context
from tests.unit.test_proxy_poller import tcp_pair

WAIT = 10.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def context_for(ca: trustme.CA) -> ssl.SSLContext:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    return server_context(cert.private_key_and_cert_chain_pem.bytes(), cert.private_key_pem.bytes())


class TlsClient:
    """A sans-I/O TLS client on a blocking socket: the test controls every byte sent."""

    def __init__(self, sock: socket.socket, ca: trustme.CA) -> None:
        sock.settimeout(WAIT)
        self.sock = sock
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.set_alpn_protocols(["http/1.1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
        self.sock.sendall(self.outgoing.read())
        self.sock.sendall(self.records(b"x"))  # a first record, so the server's recv returns

    def records(self, data: bytes) -> bytes:
        self.tls.write(data)
        return self.outgoing.read()

    def read_until_end(self) -> tuple[bytes, str]:
        """Plaintext until the server ends; how it ended ("close_notify" or "eof")."""
        got = bytearray()
        while True:
            try:
                piece = self.tls.read(65536)
                if not piece:  # SSLObject.read's answer to a close_notify
                    return bytes(got), "close_notify"
                got += piece
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return bytes(got), "close_notify"
            raw = self.sock.recv(65536)
            if not raw:
                return bytes(got), "eof"
            self.incoming.write(raw)


async def shake(conn: TlsConn, client: TlsClient) -> bytes:
    """Both sides of the handshake at once; the server's first recv (the client's b"x")."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, client.handshake)
        return await conn.recv(WAIT)


@asynccontextmanager
async def tls_pair(ctx: ssl.SSLContext) -> AsyncIterator[tuple[TlsConn, socket.socket]]:
    poller = Poller(tick=0.05)
    ours, theirs = tcp_pair()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            conn = TlsConn(ours, "test", poller, ctx)
            with trio.fail_after(WAIT):
                yield conn, theirs
            nursery.cancel_scope.cancel()
    finally:
        theirs.close()


async def test_handshake_then_a_record_cut_in_two_and_a_large_body(ca: trustme.CA) -> None:
    async with tls_pair(context_for(ca)) as (conn, theirs):
        client = TlsClient(theirs, ca)
        assert await shake(conn, client) == b"x"  # the handshake, then the first record
        assert conn.tls_version in ("TLSv1.2", "TLSv1.3")
        assert client.tls.selected_alpn_protocol() == "http/1.1"

        # One record sent in two halves: recv waits for the second, returns it whole.
        record = client.records(b"hello, world")
        theirs.sendall(record[:7])
        async with trio.open_nursery() as nursery:

            async def rest() -> None:
                await trio.sleep(0.05)
                theirs.sendall(record[7:])

            nursery.start_soon(rest)
            assert await conn.recv(WAIT) == b"hello, world"

        # 300 KB in many records, all in one send: read back in pieces of at most 64 KiB.
        body = bytes(range(256)) * 1200
        theirs.sendall(client.records(body))
        got = bytearray()
        while len(got) < len(body):
            piece = await conn.recv(WAIT)
            assert piece and len(piece) <= 65536
            got += piece
        assert bytes(got) == body

        # The other way: a large answer, then close() sends close_notify.
        answer = b"y" * 200_000
        await conn.send_all(answer, WAIT)
        conn.close()
        data, how = await trio.to_thread.run_sync(client.read_until_end)
        assert data == answer and how == "close_notify"


async def test_a_close_notify_is_end_of_stream(ca: trustme.CA) -> None:
    async with tls_pair(context_for(ca)) as (conn, theirs):
        client = TlsClient(theirs, ca)
        assert await shake(conn, client) == b"x"
        with pytest.raises(ssl.SSLWantReadError):
            client.tls.unwrap()  # writes our close_notify; theirs is not read here
        theirs.sendall(client.outgoing.read())
        assert await conn.recv(WAIT) == b""


async def test_a_tcp_end_without_close_notify_is_end_of_stream_too(ca: trustme.CA) -> None:
    async with tls_pair(context_for(ca)) as (conn, theirs):
        client = TlsClient(theirs, ca)
        assert await shake(conn, client) == b"x"
        theirs.shutdown(socket.SHUT_WR)
        assert await conn.recv(WAIT) == b""


async def test_plain_http_fails_the_handshake_with_an_ssl_error(ca: trustme.CA) -> None:
    async with tls_pair(context_for(ca)) as (conn, theirs):
        theirs.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ssl.SSLError):
            await conn.recv(WAIT)


async def test_a_silent_client_times_the_handshake_out(ca: trustme.CA) -> None:
    async with tls_pair(context_for(ca)) as (conn, _theirs):
        started = trio.current_time()
        with pytest.raises(Timeout):
            await conn.recv(0.3)
        assert trio.current_time() - started < 2.0


async def test_a_tls_1_1_client_is_refused(ca: trustme.CA) -> None:
    async with tls_pair(context_for(ca)) as (conn, theirs):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(ctx)
        try:
            with warnings.catch_warnings():  # deprecated, which is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot even offer TLS 1.1")
        client = TlsClient(theirs, ca)
        client.tls = ctx.wrap_bio(client.incoming, client.outgoing, server_hostname="localhost")

        def hello() -> None:
            try:
                client.tls.do_handshake()
            except ssl.SSLWantReadError:
                theirs.sendall(client.outgoing.read())

        await trio.to_thread.run_sync(hello)
        with pytest.raises(ssl.SSLError):
            await conn.recv(WAIT)


def test_a_key_that_is_not_the_certificates_is_refused(ca: trustme.CA) -> None:
    one, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    with pytest.raises(ssl.SSLError):
        server_context(one.cert_chain_pems[0].bytes(), other.private_key_pem.bytes())
