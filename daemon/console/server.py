"""The console's listener and server in berthd: `ConsoleServer.run`, started in berthd's
control nursery when berthd.toml has `[console]`; without it berthd makes none of this.

Invariants:
- The listener is kept across restarts as the gateway's is, under the fd store name
  `console`: taken back at start if it still listens at `listen`, else bound and a copy
  kept (a copy of another address is closed and forgotten). A console that cannot listen,
  or whose `[console.tls]` files do not load, stops berthd's start (as a bad
  `[metrics] listen`): raised through `nursery.start`.
- With `[console.tls]` every connection is TLS (trio's SSLListener over the socket; the
  files are read, under `credentials_roots`, as an endpoint's `[endpoint.tls]`) and the
  session cookie is `Secure`.
- Served by berthd's one HTTP server core (`daemon.http.server`) with the console's
  handler (`daemon.console.app`); the server's own refusals carry the console's headers.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from config.parse_console import ConsoleSettings
from daemon.api.control_plane import ControlPlane
from daemon.console.app import ConsoleApp, console_error
from daemon.http.listeners import AnyListener, SocketKeeper
from daemon.http.server import HttpServer
from daemon.reconcile.endpoint_tls import TlsFileError, load_tls
from proxy import sockets

log = logging.getLogger("berthd")

FD_NAME = "console"  # the fd store's name of the console's listener
MAX_BODY = 2 * 1024 * 1024  # a pasted or uploaded spec, with the form around it


class ConsoleListener:
    """TCP at the console's address, from the fd store or bound (module docstring), TLS
    when `context` is given."""

    def __init__(
        self,
        settings: ConsoleSettings,
        keeper: SocketKeeper | None,
        context: ssl.SSLContext | None,
    ) -> None:
        self.settings = settings
        self._keeper = keeper
        self._context = context

    def __repr__(self) -> str:
        return f"<ConsoleListener {self.settings.listen}{' tls' if self._context else ''}>"

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[tuple[Sequence[AnyListener], tuple[str, int]]]:
        sock = self._socket()
        try:
            plain = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            listener: AnyListener = plain
            if self._context is not None:
                listener = trio.SSLListener(plain, self._context, https_compatible=True)
            host, port = sock.getsockname()[:2]
            yield [listener], (str(host), int(port))
        finally:
            sock.close()

    def _socket(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        keeper = self._keeper
        passed = keeper.take(FD_NAME) if keeper is not None else None
        if keeper is not None and passed is not None:
            if sockets.is_listener_on(passed, host, port):
                log.info("console %s: listener taken back from the fd store", self.settings.listen)
                passed.setblocking(False)
                return passed
            log.warning(
                "console listen changed: the listener kept from before the restart is closed; "
                "binding %s",
                self.settings.listen,
            )
            passed.close()
            keeper.forget(FD_NAME)
        listener = sockets.listen(host, port, backlog=128)
        if keeper is not None:
            keeper.keep(FD_NAME, listener.fileno())
        return listener


class ConsoleServer:
    def __init__(
        self,
        settings: ConsoleSettings,
        daemon: ControlPlane,
        *,
        keeper: SocketKeeper | None = None,
        tls_roots: Sequence[Path] = (),
    ) -> None:
        self.settings = settings
        self.app = ConsoleApp(daemon, secure=settings.tls is not None)
        self._keeper = keeper
        self._tls_roots = tuple(tls_roots)

    def __repr__(self) -> str:
        return f"<ConsoleServer {self.settings.url}>"

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen (raises OSError or TlsFileError through `nursery.start`), then serve."""
        context = None
        if self.settings.tls is not None:
            try:
                context = await trio.to_thread.run_sync(
                    load_tls, self.settings.tls, self._tls_roots
                )
            except TlsFileError as exc:
                raise TlsFileError(str(exc).replace("endpoint.tls.", "console.tls.")) from None
        server = HttpServer(
            ConsoleListener(self.settings, self._keeper, context),
            self.app.handle,
            name="console",
            max_body=MAX_BODY,
            errors=console_error,
        )
        log.info("console on %s", self.settings.url)
        await server.run(task_status=task_status)
