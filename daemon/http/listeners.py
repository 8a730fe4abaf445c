"""Where an `HttpServer` listens: a Unix socket file berthd owns, or a TCP "host:port".

A listener is an async context manager that yields the trio listeners to serve and the
address bound (the socket's path; the TCP (host, port), useful when the port was 0), and
undoes what it did on the way out. Bind errors surface from `__aenter__`, so through
`nursery.start(server.run)`.

Invariants of the Unix socket file (`UnixSocketListener`):
- The file exists only while the listener is entered, and is never more open than 0660: the
  socket inode is fchmod'ed before bind (so umask can only narrow it) and chmod'ed after.
  Members of the socket's group may drive berth; the directory gates the rest.
- The socket's directory is created 0750 when absent. An existing directory keeps its mode:
  it belongs to whoever made it (systemd's `RuntimeDirectory=` with `RuntimeDirectoryMode=`,
  or the admin), and the socket's own 0660 is the gate. A world-writable directory without
  the sticky bit only earns a warning in the log.
- A socket file left behind by a dead berthd is replaced; one that still answers is not:
  entering raises `SocketFileError("another berthd is serving SOCKET")`. On the way out only
  our own file (same inode) is removed: if someone replaced it, it is theirs.
- With a socket keeper (`keeper`: systemd's fd store, `daemon.system.fdstore`) the socket
  outlives berthd: a socket passed at start under `name` that listens on this path (and
  the file is there) is used as it is, with no stale check (it would answer: it is ours)
  and no bind; one that does not is closed and forgotten, and the file bound as above,
  then handed to the keeper. A kept socket's file stays on the way out (the socket still
  listens in the keeper, and the next berthd takes it back); a later berthd that is passed
  nothing finds it dead and replaces it.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import trio

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o660
DIRECTORY_MODE = 0o750
_BACKLOG = 64
# How long a probe connect to an existing socket file may take before we call it alive.
_PROBE_TIMEOUT = 2.0

AddressT_co = TypeVar("AddressT_co", covariant=True)
# What an `HttpServer` accepts from: TCP or Unix, or TLS over TCP (trio wraps each stream).
AnyListener = trio.SocketListener | trio.SSLListener[trio.SocketStream]


class Listener(Protocol[AddressT_co]):
    def listen(
        self,
    ) -> AbstractAsyncContextManager[tuple[Sequence[AnyListener], AddressT_co]]: ...


class SocketFileError(Exception):
    """The Unix socket cannot be set up; the message says why, naming the path."""


class SocketKeeper(Protocol):
    """Holds listening sockets across berthd's restarts (`daemon.system.fdstore.FdStore`)."""

    def take(self, name: str) -> socket.socket | None: ...
    def keep(self, name: str, fileno: int) -> bool: ...
    def forget(self, name: str) -> bool: ...


class UnixSocketListener:
    """A Unix socket file with the modes and the stale-file rule of the module docstring."""

    def __init__(
        self, path: Path | str, keeper: SocketKeeper | None = None, name: str = "admin"
    ) -> None:
        self.path = Path(path)
        self._inode: tuple[int, int] | None = None
        self._keeper = keeper
        self._name = name
        self._kept = False

    def __repr__(self) -> str:
        state = "bound" if self._inode is not None else "unbound"
        return f"<UnixSocketListener {str(self.path)!r} {state}>"

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[tuple[list[trio.SocketListener], Path]]:
        self._prepare_directory()
        sock = self._take_back()
        if sock is None:
            await self._clear_stale_socket()
            sock = await self._bind()
            if self._keeper is not None:
                self._kept = self._keeper.keep(self._name, sock.fileno())
        try:
            yield [trio.SocketListener(sock)], self.path
        finally:
            sock.close()
            if self._kept:
                self._inode = None  # the file goes on with the kept socket
            else:
                self._remove_socket_file()

    def _take_back(self) -> trio.socket.SocketType | None:
        """The socket passed at start for this path, if it is one (module docstring)."""
        if self._keeper is None:
            return None
        passed = self._keeper.take(self._name)
        if passed is None:
            return None
        try:
            listening = (
                passed.family == socket.AF_UNIX
                and passed.type == socket.SOCK_STREAM
                and passed.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0
                and passed.getsockname() == str(self.path)
            )
            st = self.path.lstat()
        except OSError:
            listening = False
        if not listening or not stat.S_ISSOCK(st.st_mode):
            logger.warning(
                "the passed %s socket does not listen on %s; binding", self._name, self.path
            )
            passed.close()
            self._keeper.forget(self._name)
            return None
        logger.info("admin socket %s taken back from the fd store", self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._kept = True
        passed.setblocking(False)
        return trio.socket.from_stdlib_socket(passed)

    def _prepare_directory(self) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=DIRECTORY_MODE, parents=True)
        except FileExistsError:
            mode = directory.stat().st_mode
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                logger.warning(
                    "%s is world-writable: anyone can replace berthd's socket there", directory
                )
            return
        except OSError as exc:
            raise SocketFileError(f"cannot create {directory}: {exc.strerror}") from exc
        # mkdir's mode went through the umask; say exactly what we mean.
        directory.chmod(DIRECTORY_MODE)

    async def _clear_stale_socket(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketFileError(f"{self.path} exists and is not a socket; not replacing it")
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                with trio.fail_after(_PROBE_TIMEOUT):
                    await probe.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # nobody listens: a dead berthd's leftover
            except PermissionError as exc:
                raise SocketFileError(f"cannot check {self.path}: permission denied") from exc
            except trio.TooSlowError as exc:
                # A full backlog: something is there, just busy.
                raise SocketFileError(f"another berthd is serving {self.path}") from exc
            else:
                raise SocketFileError(f"another berthd is serving {self.path}")
        logger.info("removing stale socket %s", self.path)
        self.path.unlink(missing_ok=True)

    async def _bind(self) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Linux creates the socket file with the inode's mode minus the umask: set the
            # inode's mode first so the file is never, even briefly, more open than 0660.
            os.fchmod(sock.fileno(), SOCKET_MODE)
            await sock.bind(str(self.path))
            self.path.chmod(SOCKET_MODE)
            sock.listen(_BACKLOG)
            st = self.path.stat()
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:  # someone bound it since our check
                raise SocketFileError(f"another berthd is serving {self.path}") from exc
            raise SocketFileError(f"cannot listen on {self.path}: {exc.strerror}") from exc
        self._inode = (st.st_dev, st.st_ino)
        return sock

    def _remove_socket_file(self) -> None:
        inode, self._inode = self._inode, None
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if inode == (st.st_dev, st.st_ino):
            self.path.unlink(missing_ok=True)


class TcpListener:
    """TCP on `listen` ("127.0.0.1:9464", "[::1]:9464", ":9464" for every address); a bind
    error is the OSError trio raises."""

    def __init__(self, listen: str) -> None:
        self.listen_on = listen

    def __repr__(self) -> str:
        return f"<TcpListener {self.listen_on}>"

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[tuple[list[trio.SocketListener], tuple[str, int]]]:
        host, port = parse_listen(self.listen_on)
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            bound = listeners[0].socket.getsockname()
            yield list(listeners), (bound[0], bound[1])
        finally:
            for listener in listeners:
                listener.socket.close()  # not aclose(): it checkpoints, and we may be cancelled


def parse_listen(listen: str) -> tuple[str | None, int]:
    """("127.0.0.1", 9464) from "127.0.0.1:9464"; "[::1]:9464" -> "::1"; ":9464" -> None
    (every address). The setting was validated by config/settings.py."""
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or None), int(port)
