"""The module that touches sockets (with `proxy.tls` for TLS clients): non-blocking stdlib
sockets woken by `proxy.poller`.

Why not `trio.SocketStream`: each of its operations costs two scheduler round trips even
when the kernel is ready. Here an operation first tries the syscall and parks the task
only when the kernel says it would block; the endpoint's `Poller` (one edge-triggered
epoll set) wakes it, or, when no other task waits on that set, the task waits on the set
itself (`Poller.lead`).

Invariants:
- A `Conn` is used by one task at a time per direction (one reader, one writer).
- A task parks only right after its syscall said EAGAIN, with no checkpoint between, or
  when `maybe_readable` says no byte can have arrived unseen; so every edge it needs is
  reported after it parked. A spurious wake-up (a late edge) costs one EAGAIN and a wait.
  A short read drains the data but not a FIN queued behind it, so once the peer's hang-up
  has been reported (`peer_closed`), `maybe_readable` stays True: that edge is spent.
- Every wait is bounded by the timeout given, and raises `Timeout` when it passes. The
  timeout is a parameter (not a caller's `trio.fail_after`) and is enforced by the
  poller's watchdog, so that the hot path makes no cancel scope at all.
- A task that never has to wait still yields every `_YIELD_EVERY` operations, so a fast
  peer cannot starve the others or delay cancellation.
- `close` wakes any task parked on the connection (it raises `trio.ClosedResourceError`).
- `hangup_watcher`: a client that hangs up while its task waits on the replica's
  connection interrupts that wait (`PeerHangup`), at no cost per request.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import socket
from typing import TYPE_CHECKING, ClassVar, Final

import trio
from trio.lowlevel import Abort, Task, current_task, wait_task_rescheduled

from proxy.poller import Poller

if TYPE_CHECKING:
    from proxy.protocol import ResponseParser

RECV_SIZE: Final = 65536
_YIELD_EVERY: Final = 16
_ACCEPT_RESOURCE_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)

# Why a parked task was woken (besides readiness).
_READY: Final = 0
_EXPIRED: Final = 1
_CLOSED: Final = 2
_INTERRUPTED: Final = 3


class Timeout(Exception):
    """A socket operation waited longer than its timeout."""


class PeerHangup(Exception):
    """A wait was interrupted because the watched connection's peer hung up."""


class Conn:
    """One TCP connection (to a client or to a replica)."""

    secure: ClassVar[bool] = False  # TLS to the peer (`proxy.tls.TlsConn`)

    __slots__ = (
        "sock",
        "fd",
        "peer",
        "poller",
        "deadline",
        "reader",
        "writer",
        "_rwhy",
        "_wwhy",
        "_streak",
        "closed",
        "peer_closed",
        "maybe_readable",
        "pooled",
        "pooled_at",
        "stale",
        "hangup_watcher",
        "response_parser",
    )

    def __init__(self, sock: socket.socket, peer: str, poller: Poller) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.poller = poller
        self.deadline = math.inf
        self.reader: Task | None = None
        self.writer: Task | None = None
        self._rwhy = _READY
        self._wwhy = _READY
        self._streak = 0
        self.closed = False
        self.peer_closed = False  # the peer's FIN or reset has been reported
        self.maybe_readable = True  # see recv_wait_first
        self.pooled = False  # idle in the upstream pool (set by the pool)
        self.pooled_at = 0.0
        self.stale = False  # pooled, and the replica closed it or sent stray bytes
        # The connection whose wait to interrupt (`PeerHangup`) when this one's peer leaves.
        self.hangup_watcher: Conn | None = None
        # To a replica: the parser of its responses, one for the connection's life
        # (`proxy.relay`; `ResponseParser.next_response`).
        self.response_parser: ResponseParser | None = None
        poller.register(self)

    def _abort_read(self, _: object) -> Abort:
        self.reader = None
        return Abort.SUCCEEDED

    def _abort_write(self, _: object) -> Abort:
        self.writer = None
        return Abort.SUCCEEDED

    async def wait_readable(self, timeout: float) -> None:  # noqa: ASYNC109 - see module doc
        p = self.poller
        if p.watchdog_parked:
            p.rouse()
        self.deadline = p.now + timeout
        self._rwhy = _READY
        task = self.reader = current_task()
        p.waiting.add(self)
        try:
            if p.leader is None:
                await p.lead(self)
            else:
                await wait_task_rescheduled(self._abort_read)
        finally:
            if self.reader is task:  # cancelled while leading
                self.reader = None
            if self.writer is None:
                p.waiting.discard(self)
        why = self._rwhy
        if why:
            self._raise(why)

    async def wait_writable(self, timeout: float) -> None:  # noqa: ASYNC109
        p = self.poller
        if p.watchdog_parked:
            p.rouse()
        self.deadline = p.now + timeout
        self._wwhy = _READY
        task = self.writer = current_task()
        p.waiting.add(self)
        try:
            if p.leader is None:
                await p.lead(self)
            else:
                await wait_task_rescheduled(self._abort_write)
        finally:
            if self.writer is task:  # cancelled while leading
                self.writer = None
            if self.reader is None:
                p.waiting.discard(self)
        why = self._wwhy
        if why:
            self._raise(why)

    @staticmethod
    def _raise(why: int) -> None:
        if why == _EXPIRED:
            raise Timeout
        if why == _INTERRUPTED:
            raise PeerHangup
        raise trio.ClosedResourceError("connection closed while waiting")

    def _wake(self, why: int) -> None:
        task = self.reader
        if task is not None:
            self.reader = None
            self._rwhy = why
            self.poller.wake(task)
        task = self.writer
        if task is not None:
            self.writer = None
            self._wwhy = why
            self.poller.wake(task)

    def expire(self) -> None:
        """Called by the watchdog: end this connection's overdue waits with `Timeout`."""
        self._wake(_EXPIRED)

    def interrupt(self) -> None:
        """End a wait to read from this connection with `PeerHangup` (see `hangup_watcher`)."""
        task = self.reader
        if task is not None:
            self.reader = None
            self._rwhy = _INTERRUPTED
            self.poller.wake(task)

    def check_idle(self) -> None:
        """Something arrived on an idle pooled connection: FIN, reset or stray bytes?"""
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return  # an edge reported late: nothing there
        except OSError:
            pass
        self.stale = True

    async def recv(self, timeout: float) -> bytes:  # noqa: ASYNC109 - see module doc
        """Up to RECV_SIZE bytes; b"" at end of stream. Raises OSError, Timeout."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            self.maybe_readable = False
            return await Conn.recv_wait_first(self, timeout)
        n = len(data)
        # A short read drains the data, not a FIN behind it: once the peer's hang-up has
        # been reported (its edge is spent), end-of-stream stays readable.
        self.maybe_readable = n == RECV_SIZE or n == 0 or self.peer_closed
        self._streak += 1
        if self._streak >= _YIELD_EVERY:
            self._streak = 0
            await trio.lowlevel.checkpoint()
        return data

    async def recv_wait_first(self, timeout: float) -> bytes:  # noqa: ASYNC109
        """As `recv`, but parks first unless data may be there: saves a failing syscall.

        `maybe_readable` is False only when the last `recv` drained the socket and no
        edge has been reported since while nobody waited; any byte that arrives later
        brings an edge that wakes this wait.
        """
        if self.maybe_readable:
            return await self.recv(timeout)
        self._streak = 0
        sock = self.sock
        p = self.poller
        while True:
            # `wait_readable`, inlined: this is the wait of every request and response,
            # and each coroutine level costs on every suspension and resumption.
            if p.watchdog_parked:
                p.rouse()
            self.deadline = p.now + timeout
            self._rwhy = _READY
            task = self.reader = current_task()
            p.waiting.add(self)
            try:
                if p.leader is None:
                    await p.lead(self)
                else:
                    await wait_task_rescheduled(self._abort_read)
            finally:
                if self.reader is task:  # cancelled while leading
                    self.reader = None
                if self.writer is None:
                    p.waiting.discard(self)
            why = self._rwhy
            if why:
                self._raise(why)
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue  # a late edge for bytes already read
            n = len(data)
            self.maybe_readable = n == RECV_SIZE or n == 0 or self.peer_closed
            return data

    def send_now(self, data: bytes) -> int:
        """Send what the kernel takes at once, never waiting: how many bytes it took
        (the rest goes with `send_all`). Plain connections only (`secure` False): a TLS
        connection's bytes are records. Raises OSError (peer gone)."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

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
            await self.wait_writable(timeout)
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            view = view[sent:]

    def is_idle_and_open(self) -> bool:
        """For a pooled connection: True when the peer has neither closed nor sent anything."""
        if self.stale or self.peer_closed:
            return False
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        # b"": the replica closed it; bytes: it sent something unasked for. Both unusable.
        del data
        return False

    def move_to(self, poller: Poller) -> None:
        """Be watched by `poller` from now on (a gateway connection whose request another
        endpoint serves, `proxy.gateway`); only while no task waits on this connection.
        Its descriptor joins that epoll set, which reports what is ready at once."""
        if poller is not self.poller and not self.closed:
            poller.register(self)  # first: a poller that is not running raises, nothing moved
            self.poller.forget(self)
            self.poller = poller

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
            self.hangup_watcher = None
            self.poller.forget(self)
            self._wake(_CLOSED)
            self.sock.close()
            parser = self.response_parser
            if parser is not None:  # its cycle with llhttp, broken (`ResponseParser.close`)
                self.response_parser = None
                parser.close()

    def abort(self) -> None:
        """Close with a reset, so the peer sees that the message was cut short."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            except OSError:
                pass
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("pooled" if self.pooled else "open")
        return f"<Conn {self.peer} fd={self.fd} {state}>"


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


def is_listener_on(sock: socket.socket, host: str, port: int) -> bool:
    """Whether `sock` is a listening TCP socket bound to host:port: a socket passed from
    outside (systemd's fd store, `LISTEN_FDS`) is used instead of binding only if so."""
    try:
        if sock.type != socket.SOCK_STREAM or sock.family != _family(host):
            return False
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        bound_host, bound_port = sock.getsockname()[:2]
    except OSError:
        return False
    if bound_port != port:
        return False
    try:
        return ipaddress.ip_address(bound_host) == ipaddress.ip_address(host)
    except ValueError:
        return False  # `host` is a name: it cannot be compared, so bind it as before


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


async def start_connect(host: str, port: int, poller: Poller) -> tuple[Conn, bool]:
    """Begin a connection to host:port: the `Conn`, and whether it is connected already.

    When it is not, `finish_connect` waits for it. Raises OSError when refused at once.
    """
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
        if err and err != errno.EINPROGRESS:
            raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err)}")
        return Conn(sock, f"{host}:{port}", poller), not err
    except BaseException:
        sock.close()
        raise


async def finish_connect(conn: Conn, timeout: float, *, check: bool = False) -> None:  # noqa: ASYNC109
    """Wait for a connect begun by `start_connect`. Raises OSError (refused, unreachable)
    or Timeout, and leaves closing `conn` to the caller either way.

    `check`: look first whether it has completed already; needed when a checkpoint came
    between `start_connect` (or an earlier wait) and this call, as its edge may be spent.
    """
    sock = conn.sock
    if check:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {conn.peer}: {errno.errorcode.get(err)}")
        try:
            sock.getpeername()
        except OSError:
            pass  # still in progress
        else:
            return
    await conn.wait_writable(timeout)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"connect to {conn.peer}: {errno.errorcode.get(err)}")
