"""The gateway's listener: one OpenAI-compatible address for every deployment that opts in.

Invariants (as `proxy.endpoint`'s, whose pieces it uses):
- `run` owns every client connection in one nursery; `begin_shutdown(t)` stops accepting,
  closes the listener and the idle kept-alive connections, and gives requests under way
  until now + t; `run` returns when the last connection ends. A connection accepted before
  the drain that has not been answered yet gets its answer (within `header_read`).
- A fault in one client connection stays in it: each runs behind a barrier that logs any
  `Exception` once and closes that connection; the listener and the others go on.
- At most `max_connections` client connections at once (None: the process's budget,
  shared with every endpoint, `proxy.admission`); over it new ones wait in the backlog.
- Credentials (`set_credentials`), TLS (`set_tls`), routes (`set_routes`), `max_body` and
  timeouts apply in place, with no rebind: credentials, routes, limits to the next request
  on every connection, TLS to the connections accepted from then on.
- The gateway holds no request queue of its own: a routed request waits in its
  deployment's endpoint's queue (`Endpoint.waiting()` counts it), under that endpoint's
  rules and its drain.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from functools import partial

import trio

from proxy import sockets
from proxy.admission import ConnectionBudget, Gate, process_budget
from proxy.auth import Credentials, Guard
from proxy.balancer import STATS_WINDOW_S, EndpointTimeouts, poller_tick
from proxy.gateway.connection import ClientConn, GatewayConnection, TimedConn, TimedTlsConn
from proxy.gateway.routes import Route, RouteTable
from proxy.gateway.state import GatewayState
from proxy.gateway.stats import ModelStats, clamp_window
from proxy.serving import accept_under, serve_guarded

log = logging.getLogger("proxy")


class Gateway:
    """The model gateway's listener and its client connections (see the module docstring)."""

    def __init__(
        self,
        *,
        max_body: int,
        timeouts: EndpointTimeouts,
        listen: tuple[str, int],
        max_connections: int | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self.listen = listen
        self._state = GatewayState(max_body, timeouts)
        self._gate = Gate(budget or process_budget(), max_connections)
        self._connections: set[GatewayConnection] = set()
        self._tls: ssl.SSLContext | None = None
        self._given_listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._handlers_scope: trio.CancelScope | None = None
        self._drain_deadline: float | None = None
        self._listener_closed = trio.Event()

    # --- configuration (in place) -------------------------------------------------------

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        """Model name or alias -> Route, for the next request on every connection."""
        self._state.set_routes(RouteTable(routes))

    def set_loaded(self, loaded: Callable[[str], bool]) -> None:
        """deployment -> whether it has a ready replica (`loaded` in /v1/models)."""
        self._state.loaded = loaded

    def set_credentials(self, credentials: Credentials | None) -> None:
        """As `Endpoint.set_credentials`: the next request on every connection."""
        state = self._state
        if credentials is None:
            state.guard = None
        elif state.guard is None:
            state.guard = Guard(credentials)
        else:
            state.guard.set_credentials(credentials)

    def set_tls(self, context: ssl.SSLContext | None) -> None:
        """As `Endpoint.set_tls`: the connections accepted from now on."""
        self._tls = context

    def set_max_body(self, max_body: int) -> None:
        if max_body < 0:
            raise ValueError(f"max_body must be >= 0, got {max_body}")
        self._state.max_body = max_body

    def set_timeouts(self, timeouts: EndpointTimeouts) -> None:
        """For every wait that begins from now on (`header_read`, `client_idle`, the body
        pace); once routed, a request waits by its endpoint's timeouts."""
        state = self._state
        if timeouts != state.timeouts:
            state.timeouts = timeouts
            state.poller.retick(poller_tick(timeouts))

    def set_max_connections(self, max_connections: int | None) -> None:
        self._gate.set_max_connections(max_connections)

    def use_listener(self, listener: socket.socket) -> None:
        """Serve `listener` (listening on `listen` already: the fd store's "gateway")
        rather than bind one; before `run`, which then owns it."""
        self._given_listener = listener

    # --- reading ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), once `run` has started; port 0 asks for a free one."""
        if self._address is None:
            raise RuntimeError("the gateway is not listening")
        return self._address

    @property
    def max_body(self) -> int:
        return self._state.max_body

    @property
    def timeouts(self) -> EndpointTimeouts:
        return self._state.timeouts

    def connections(self) -> int:
        """Client connections open now."""
        return self._gate.open

    def unauthorized(self) -> int:
        """Requests refused with 401 since start (0 while open)."""
        guard = self._state.guard
        return guard.refused if guard is not None else 0

    def refused(self) -> dict[int, int]:
        """Errors the gateway answered itself since start, by status: a request it could
        not route (400 no model, 404 unknown model or path, 405, 408, 413, 501, ...) or
        refused (401). Those a routed request got are its model's (`statistics`)."""
        return dict(sorted(self._state.refused.items()))

    def statistics(
        self, window: float = STATS_WINDOW_S, *, histogram: bool = False
    ) -> dict[str, ModelStats]:
        """Per canonical model name of the current routes (`proxy.gateway.stats`); with
        `histogram`, TTFT's cumulative histogram since start (for Prometheus)."""
        window = clamp_window(window)
        state = self._state
        names = {state.table.canonical(r) for r in state.table.routes()}
        return {
            name: counters.summary(name, window, histogram=histogram)
            for name, counters in sorted(state.models.items())
            if name in names
        }

    async def wait_listener_closed(self) -> None:
        await self._listener_closed.wait()

    # --- serving ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind `listen` (or use the listener given), serve until the drain ends."""
        listener, self._given_listener = self._given_listener, None
        if listener is not None:
            listener.setblocking(False)
        else:
            try:
                listener = sockets.listen(*self.listen)
            except OSError:
                self._listener_closed.set()
                raise
        name = listener.getsockname()
        self._address = (str(name[0]), int(name[1]))
        state = self._state
        try:
            async with trio.open_nursery() as poller:
                await poller.start(state.poller.run)
                async with trio.open_nursery() as handlers:
                    self._handlers_scope = handlers.cancel_scope
                    with trio.CancelScope() as accept_scope:
                        self._accept_scope = accept_scope
                        task_status.started()
                        if state.draining:
                            accept_scope.cancel()
                            self._apply_drain_deadline()
                        await accept_under(self._gate, listener, handlers, self._serve)
                    sockets.close_listener(listener)
                    self._listener_closed.set()
                poller.cancel_scope.cancel()
        finally:
            sockets.close_listener(listener)
            self._listener_closed.set()
            self._address = None

    async def _serve(self, sock: socket.socket, peer: str) -> None:
        await serve_guarded(
            sock,
            peer,
            open_conn=self._open_conn,
            make_handler=partial(GatewayConnection, self._state),
            live=self._connections,
            gate=self._gate,
            what="gateway",
        )

    def _open_conn(self, sock: socket.socket, peer: str) -> ClientConn:
        tls = self._tls
        if tls is None:
            return TimedConn(sock, peer, self._state.poller)
        return TimedTlsConn(sock, peer, self._state.poller, tls)

    def begin_shutdown(self, drain_timeout: float) -> None:
        """Stop accepting; requests under way get `drain_timeout` seconds to finish."""
        self._state.draining = True
        self._drain_deadline = trio.current_time() + drain_timeout
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        self._apply_drain_deadline()

    def _apply_drain_deadline(self) -> None:
        if self._handlers_scope is not None and self._drain_deadline is not None:
            self._handlers_scope.deadline = min(self._handlers_scope.deadline, self._drain_deadline)
        for connection in list(self._connections):
            # Idle between requests: its wait for the next one ends with end-of-stream. One
            # that has had no answer yet is new: its first request is answered. One whose
            # request an endpoint serves says Connection: close in its response (unless
            # its head went out already); the connection ends after it.
            if connection.idle and connection.answered:
                connection.conn.shutdown()
            elif connection.session is not None:
                connection.session.exchange.close_after = True

    def __repr__(self) -> str:
        state = "draining" if self._state.draining else "serving"
        return (
            f"<Gateway {self.listen[0]}:{self.listen[1]} {state} "
            f"models={len(self._state.table)} connections={len(self._connections)}>"
        )
