"""The only module that touches sockets: non-blocking stdlib sockets driven by trio.

Why not `trio.SocketStream`: each of its operations costs two scheduler round trips even
when the kernel is ready; on a proxy's hot path (four socket operations per request) that
was the largest cost. Here an operation first tries the syscall and parks the task
(`trio.lowlevel.wait_readable` / `wait_writable`) only when the kernel says it would block.

Invariants:
- A `Conn` is used by one task at a time per direction (one reader, one writer).
- Every wait is bounded by the timeout given, and raises `Timeout` when it passes. The
  timeout is a parameter (not a caller's `trio.fail_after`) and is enforced by the
  endpoint's `Watchdog`, so that the hot path makes no cancel scope at all.
- A task that never has to wait still yields every `_YIELD_EVERY` operations, so a fast
  peer cannot starve the others or delay cancellation.
- `close` wakes any task parked on the socket (`notify_closing`) before closing it.
"""

from __future__ import annotations

import errno
import ipaddress
import math
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


class Watchdog:
    """Enforces the timeouts of every `Conn` of an endpoint with one periodic task.

    A cancel scope per wait cost more than parsing a request; instead a waiting `Conn`
    records its deadline on a coarse clock and joins `waiting`; every `tick` seconds `run`
    wakes the overdue ones (`notify_closing`), whose wait then raises `Timeout`. A timeout
    fires between `timeout - tick` and `timeout + tick` after the wait began.
    """

    __slots__ = ("now", "tick", "waiting")

    def __init__(self, tick: float) -> None:
        self.now = 0.0
        self.tick = tick
        self.waiting: set[Conn] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.now = trio.current_time()
        task_status.started()
        while True:
            await trio.sleep(self.tick)
            now = self.now = trio.current_time()
            overdue = [c for c in self.waiting if c.deadline <= now]
            for conn in overdue:
                conn.expire()


class Conn:
    """One TCP connection (to a client or to a replica)."""

    __slots__ = ("sock", "fd", "peer", "watchdog", "deadline", "expired", "_streak", "closed")

    def __init__(self, sock: socket.socket, peer: str, watchdog: Watchdog) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.watchdog = watchdog
        self.deadline = math.inf
        self.expired = False
        self._streak = 0
        self.closed = False

    async def _wait(self, writable: bool, timeout: float) -> None:  # noqa: ASYNC109
        wd = self.watchdog
        self.deadline = wd.now + timeout
        self.expired = False
        wd.waiting.add(self)
        try:
            if writable:
                await trio.lowlevel.wait_writable(self.fd)
            else:
                await trio.lowlevel.wait_readable(self.fd)
        except trio.ClosedResourceError:
            if self.expired and not self.closed:
                raise Timeout from None
            raise
        finally:
            wd.waiting.discard(self)

    def expire(self) -> None:
        """Called by the watchdog: end this connection's overdue wait with `Timeout`."""
        self.expired = True
        if not self.closed:
            trio.lowlevel.notify_closing(self.fd)

    async def recv(self, timeout: float) -> bytes:  # noqa: ASYNC109 - see module doc
        """Up to RECV_SIZE bytes; b"" at end of stream. Raises OSError, Timeout."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            pass
        else:
            self._streak += 1
            if self._streak >= _YIELD_EVERY:
                self._streak = 0
                await trio.lowlevel.checkpoint()
            return data
        return await self.recv_wait_first(timeout)

    async def recv_wait_first(self, timeout: float) -> bytes:  # noqa: ASYNC109
        """As `recv`, for when data is unlikely to be there yet: saves a failing syscall."""
        self._streak = 0
        sock = self.sock
        while True:
            await self._wait(False, timeout)
            try:
                return sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue

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
        while view:
            await self._wait(True, timeout)
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            view = view[sent:]

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
            trio.lowlevel.notify_closing(self.fd)
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


async def connect(host: str, port: int, timeout: float, watchdog: Watchdog) -> Conn:  # noqa: ASYNC109
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
                return Conn(sock, f"{host}:{port}", watchdog)
            raise Timeout
        if err:
            raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err)}")
        return Conn(sock, f"{host}:{port}", watchdog)
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
