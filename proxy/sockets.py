"""The only module that touches sockets: non-blocking stdlib sockets driven by trio.

Why not `trio.SocketStream`: each of its operations costs two scheduler round trips even
when the kernel is ready; on a proxy's hot path (four socket operations per request) that
was the largest cost. Here an operation first tries the syscall and parks the task
(`trio.lowlevel.wait_readable` / `wait_writable`) only when the kernel says it would block.

Invariants:
- A `Conn` is used by one task at a time per direction (one reader, one writer).
- Every wait is bounded by the timeout given, and raises `Timeout` when it passes. The
  timeout is a parameter (not a caller's `trio.fail_after`) so that a cancel scope is made
  only when the operation really has to wait: the common case makes none.
- A task that never has to wait still yields every `_YIELD_EVERY` operations, so a fast
  peer cannot starve the others or delay cancellation.
- `close` wakes any task parked on the socket (`notify_closing`) before closing it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Final

import trio

RECV_SIZE: Final = 65536
_YIELD_EVERY: Final = 16
_ACCEPT_RESOURCE_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)


class Timeout(Exception):
    """A socket operation waited longer than its timeout."""


class Conn:
    """One TCP connection (to a client or to a replica)."""

    __slots__ = ("sock", "peer", "_streak", "closed")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.peer = peer
        self._streak = 0
        self.closed = False

    async def recv(self, timeout: float) -> bytes:  # noqa: ASYNC109 - see module doc
        """Up to RECV_SIZE bytes; b"" at end of stream. Raises OSError, Timeout."""
        sock = self.sock
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            pass
        else:
            self._streak += 1
            if self._streak >= _YIELD_EVERY:
                self._streak = 0
                await trio.lowlevel.checkpoint()
            return data
        self._streak = 0
        with trio.move_on_after(timeout):
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    return sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
        raise Timeout

    async def send_all(self, data: bytes, timeout: float) -> None:  # noqa: ASYNC109
        """Send every byte. Raises OSError (peer gone), Timeout (peer not reading)."""
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            self._streak += 1
            if self._streak >= _YIELD_EVERY:
                self._streak = 0
                await trio.lowlevel.checkpoint()
            return
        self._streak = 0
        view = memoryview(data)[sent:]
        with trio.move_on_after(timeout):
            while view:
                await trio.lowlevel.wait_writable(sock)
                try:
                    sent = sock.send(view)
                except BlockingIOError:
                    continue
                view = view[sent:]
            return
        raise Timeout

    def is_idle_and_open(self) -> bool:
        """For a pooled connection: True when the peer has neither closed nor sent anything."""
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        # b"": the replica closed it; bytes: it sent something unasked for. Both unusable.
        del data
        return False

    def shutdown_write(self) -> None:
        """Half-close: the peer reads end-of-stream; reading goes on."""
        if not self.closed:
            self.sock.shutdown(socket.SHUT_WR)

    def shutdown(self) -> None:
        """Both directions: wakes a task waiting to read here, which then sees end-of-stream."""
        if not self.closed:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already disconnected

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def abort(self) -> None:
        """Close with a reset, so the peer sees that the message was cut short."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            except OSError:
                pass
            self.close()

    def __repr__(self) -> str:
        return f"<Conn {self.peer} fd={-1 if self.closed else self.sock.fileno()}>"


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking socket. Raises OSError naming the address."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


async def accept(listener: socket.socket) -> tuple[socket.socket, str]:
    """The next client connection and its peer address; waits on resource exhaustion."""
    while True:
        try:
            sock, addr = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                await trio.sleep(0.1)  # out of file descriptors: let connections finish
                continue
            if exc.errno == errno.ECONNABORTED:
                continue
            raise
        return sock, str(addr[0])


def close_listener(listener: socket.socket) -> None:
    trio.lowlevel.notify_closing(listener)
    listener.close()


async def connect(host: str, port: int, timeout: float) -> Conn:  # noqa: ASYNC109
    """A connection to host:port. Raises OSError (refused, unreachable) or Timeout."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name: resolve it (off the event loop)
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        host = str(sockaddr[0])
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if err == errno.EINPROGRESS:
            with trio.move_on_after(timeout):
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err)}")
                return Conn(sock, f"{host}:{port}")
            raise Timeout
        if err:
            raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err)}")
        return Conn(sock, f"{host}:{port}")
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
