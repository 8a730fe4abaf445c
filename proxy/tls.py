"""TLS on the client side of an endpoint: `TlsConn`, a `Conn` whose bytes are TLS records.

The proxy's sockets are its own (`proxy.sockets`, woken by `proxy.poller`), not trio
streams, so TLS is OpenSSL over memory BIOs (`ssl.SSLObject`): raw bytes read from the
socket go into the incoming BIO and come out of `read()` as plaintext; `write()` puts
records into the outgoing BIO, which is sent on the socket. Only client connections are
wrapped; replicas are spoken to in plain HTTP on loopback.

Invariants:
- `TlsConn` has `Conn`'s interface, so the session, relay, reader and tunnel code needs
  no change; the pool's peeks (`check_idle`, `is_idle_and_open`) are for upstream
  connections, never a `TlsConn`.
- The handshake happens on the first `recv` (or `send_all`), within that call's timeout:
  for a new connection, what is left of `header_read` since accept, so the handshake and
  the first head share that bound. A failed handshake (a plain-HTTP client, TLS < 1.2, no
  shared cipher) raises `ssl.SSLError` (an `OSError`: the session ends quietly, as for a
  reset), after a best-effort send of OpenSSL's alert.
- Every `recv` and `send_all` bounds its whole operation by its timeout (a record split
  over several segments waits at most that in all).
- Ciphertext leaves in the order OpenSSL made it. The writer task sends under `_sending`;
  bytes made on the reading side (a TLS 1.3 key update's answer) are appended behind
  what the writer is sending, or, when nobody sends, sent at once without waiting (what
  the kernel does not take waits for the next send).
- A close_notify from the client is end-of-stream (b""), as is a TCP end without one (a
  ragged end: for a server reading requests it is the same). `shutdown_write` and
  `close` send our close_notify first (best effort, never waiting); `abort` does not (a
  reset says the message was cut). A close_notify arrives as data, so, as with any byte
  from a client while its response is under way, it does not interrupt the wait on the
  replica; the TCP end that follows it does (`hangup_watcher`, EPOLLRDHUP).
- The context is the endpoint's at accept: a new one (`Endpoint.set_tls`, a certificate
  reloaded) applies to connections accepted from then on; open ones keep theirs.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import ClassVar, Final

import trio

from proxy.poller import Poller
from proxy.sockets import RECV_SIZE, Conn

# h2 first, HTTP/1.1 for the rest: a client that picks h2 sends the preface first, which
# the session (proxy/forward.py) hands over to `proxy.h2.server.serve_h2`.
ALPN_H2: Final = ("h2", "http/1.1")
ALPN: tuple[str, ...] = ALPN_H2
_YIELD_EVERY: Final = 16  # as `proxy.sockets`


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context: TLS 1.2+, ALPN (`ALPN`: http/1.1, and h2 with HTTP/2), the
    certificate chain and key given (PEM).

    Raises ssl.SSLError when they cannot be loaded or the key is not the certificate's.
    The PEM bytes are loaded through anonymous in-memory files, never a path on disk.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN))
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    cert_fd = _memory_file("berth-tls-cert", cert_pem)
    try:
        key_fd = _memory_file("berth-tls-key", key_pem)
        try:
            # An encrypted key fails (bad decrypt) instead of OpenSSL asking for a passphrase
            # on berthd's terminal, which would hold the thread (and the apply lock) for ever.
            context.load_cert_chain(
                f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}", password=_no_passphrase
            )
        finally:
            os.close(key_fd)
    finally:
        os.close(cert_fd)
    return context


def _no_passphrase() -> bytes:
    return b""  # no passphrase: an encrypted key fails to decrypt (OpenSSL's "bad decrypt")


def _memory_file(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


class TlsConn(Conn):
    """A client connection spoken over TLS (see the module docstring)."""

    secure: ClassVar[bool] = True

    __slots__ = ("_tls", "_incoming", "_outgoing", "_unsent", "_sending", "_shaken")

    def __init__(
        self, sock: socket.socket, peer: str, poller: Poller, context: ssl.SSLContext
    ) -> None:
        super().__init__(sock, peer, poller)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._unsent = bytearray()  # ciphertext made but not yet taken by the kernel
        self._sending = False  # the writer task is in `_flush`
        self._shaken = False  # the handshake is done

    @property
    def tls_version(self) -> str | None:
        return self._tls.version()

    @property
    def alpn_protocol(self) -> str | None:
        """What ALPN chose ("h2", "http/1.1"), once the handshake is done; else None."""
        return self._tls.selected_alpn_protocol()

    async def _handshake(self, deadline: float) -> None:
        tls = self._tls
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush(deadline)
                if not await self._fill(deadline):
                    raise ConnectionResetError("the client left during the TLS handshake") from None
            except ssl.SSLError:
                self._send_now()  # OpenSSL's alert, if the kernel takes it
                raise
        await self._flush(deadline)  # the last flight, TLS 1.3 session tickets
        self._shaken = True

    async def _fill(self, deadline: float) -> bool:
        """Raw bytes from the socket into the incoming BIO; False at end of stream."""
        sock = self.sock
        data: bytes | None = None
        if self.maybe_readable:
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                self.maybe_readable = False
        while data is None:
            await self.wait_readable(max(deadline - trio.current_time(), 0.0))
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue  # a late edge for bytes already read
        n = len(data)
        self.maybe_readable = n == RECV_SIZE or n == 0 or self.peer_closed
        if not n:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def recv(self, timeout: float) -> bytes:  # noqa: ASYNC109 - see proxy.sockets
        """Up to RECV_SIZE bytes of plaintext; b"" at end of stream. Raises OSError
        (ssl.SSLError included), Timeout."""
        deadline = trio.current_time() + timeout
        if not self._shaken:
            await self._handshake(deadline)
        tls = self._tls
        incoming = self._incoming
        # Nothing held (no record in the BIO, no plaintext in OpenSSL): fill first, rather
        # than let read() fail (an exception per request costs more than the check).
        if not incoming.pending and not tls.pending():
            await self._fill(deadline)
        while True:
            try:
                data = tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                await self._fill(deadline)  # at the end, the next read() says how it ended
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            if self._outgoing.pending:
                self._send_now()
            if not data:
                return b""
            self._streak += 1
            if self._streak >= _YIELD_EVERY:  # as `Conn.recv`: a fast client starves nobody
                self._streak = 0
                await trio.lowlevel.checkpoint()
            return data

    async def recv_wait_first(self, timeout: float) -> bytes:  # noqa: ASYNC109
        # `recv` reads what OpenSSL holds first and waits only when it holds nothing and
        # the socket was drained (`maybe_readable`): the same saving.
        return await self.recv(timeout)

    async def send_all(self, data: bytes, timeout: float) -> None:  # noqa: ASYNC109
        """Send every byte as TLS records. Raises OSError (peer gone), Timeout."""
        deadline = trio.current_time() + timeout
        if not self._shaken:
            await self._handshake(deadline)
        view = memoryview(data)
        while view:
            view = view[self._tls.write(view) :]
        await self._flush(deadline)

    async def _flush(self, deadline: float) -> None:
        """Send every byte of ciphertext made so far (the writer's side)."""
        self._sending = True
        try:
            while True:
                out = self._outgoing.read()
                if self._unsent:
                    out = bytes(self._unsent) + out
                    self._unsent.clear()
                if not out:
                    return
                await Conn.send_all(self, out, max(deadline - trio.current_time(), 0.0))
        finally:
            self._sending = False

    def _send_now(self) -> None:
        """Queue the ciphertext made so far; send it now unless the writer is sending."""
        self._unsent += self._outgoing.read()
        if self._sending or not self._unsent or self.closed:
            return
        try:
            sent = self.sock.send(self._unsent)
        except BlockingIOError:
            return
        except OSError:
            self._unsent.clear()  # the connection is gone; the next operation says so
            return
        del self._unsent[:sent]

    def _close_notify(self) -> None:
        if self._shaken and not self.closed and not self._sending:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass  # SSLWantReadError: ours is written, theirs not read (not waited for)
            self._send_now()

    def shutdown_write(self) -> None:
        self._close_notify()
        super().shutdown_write()

    def shutdown(self) -> None:
        self._close_notify()
        super().shutdown()

    def close(self) -> None:
        self._close_notify()
        super().close()

    def abort(self) -> None:
        self._shaken = False  # no close_notify: the reset says the message was cut
        super().abort()

    def __repr__(self) -> str:
        return "<Tls" + super().__repr__()[1:]
