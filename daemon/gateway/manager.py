"""The model gateway in berthd: the proxy's `Gateway`, its listener, and its route table.

With berthd.toml's `[gateway] listen`, `run` makes the proxy `Gateway` (proxy/gateway) and
serves it in berthd's root nursery, beside the endpoints, so that it drains with them at a
stop; without it, there is no listener, but the table is still kept (`GET /v1/gateway` shows
which deployment serves which model).

Invariants:
- The table follows the active specs and the endpoints: `sync` reads every active spec's
  `[gateway]` (the store: what the last apply or delete left) and each deployment's current
  `Endpoint` (`EndpointManager.get`: a moved endpoint is a new object) and replaces the whole
  table at once (`Gateway.set_routes`; a request in flight keeps the route it found). The
  admin API syncs after an apply and a delete before it answers; `nudge` (sync soon, from
  synchronous code) is what the endpoint manager calls when an endpoint comes or goes.
  Syncs are serialised; one nudged while another runs runs again after it.
- The listener is kept across restarts as the endpoints' are, under the fd store name
  `gateway`: taken back at start if it still listens at `listen`, else bound and a copy
  kept. A stop never forgets the copy (the next berthd serves from its backlog); a gateway
  that fails to bind is a start error, as a bad `[metrics] listen` is. It is bound (or
  taken back) early, before the unclaimed passed sockets are let go, but serves only from
  `open`, once the endpoints exist: until then connections wait in the backlog rather than
  find an empty table (a 404 for every model during a restart).
- Credentials (`[gateway.auth]`'s secrets, as an endpoint's, built by the endpoint
  manager's `EndpointCredentials` under the name `:gateway`, which no deployment can have)
  and the TLS context (`[gateway.tls]`) are set before the first connection, and again by
  `reload` (SIGHUP): a reload that fails keeps what there was, and says why.
- `loaded(deployment)`: whether it has a ready replica (the `Gateway` asks it for
  `/v1/models`), from `replicas`, the workers' view that the root passes in.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from config.parse_gateway import GatewaySettings
from config.spec import DeploymentSpec
from config.spec import Gateway as GatewaySection
from daemon.gateway.event_counts import ModelCounts
from daemon.gateway.routes import RouteTable, build_routes
from daemon.reconcile.endpoint_auth import EndpointCredentials
from daemon.reconcile.endpoint_tls import TlsFileError, load_tls
from daemon.reconcile.endpoints import SocketKeeper
from proxy import sockets
from proxy.balancer import EndpointTimeouts
from proxy.endpoint import Endpoint
from proxy.gateway.server import Gateway

log = logging.getLogger("berthd")

FD_NAME = "gateway"  # the fd store's name of the gateway's listener (DESIGN.md)
CREDENTIALS_NAME = ":gateway"  # EndpointCredentials' key: no deployment name has a colon
DEFAULT_DRAIN = 30.0  # `[update] drain_timeout`'s default, while no spec says more

# deployment -> its active spec, for every one that has a `[gateway]` section
Sections = Callable[[], Awaitable[Mapping[str, DeploymentSpec]]]


@dataclass(frozen=True)
class Placed:
    """A deployment's replicas as its worker last saw them: how many are ready, how many
    are starting (or loading), and the GPUs (CDI names) those hold: where it is loaded."""

    ready: int = 0
    starting: int = 0
    gpus: tuple[str, ...] = ()


@dataclass
class GatewayManager:
    settings: GatewaySettings | None
    sections: Sections
    endpoint_of: Callable[[str], Endpoint | None]
    # deployment -> its ready and starting replicas: the workers' view, passed by the root
    replicas: Callable[[str], Placed]
    sockets: SocketKeeper | None = None
    credentials: EndpointCredentials | None = None
    tls_roots: Sequence[Path] = ()
    gateway: Gateway | None = None
    table: RouteTable = field(default_factory=lambda: RouteTable({}))
    # deployment -> its section, as of the last sync (GET /gateway, the metrics)
    known: dict[str, GatewaySection] = field(default_factory=dict)
    counts: dict[str, ModelCounts] = field(default_factory=dict)
    drain_timeout: float = DEFAULT_DRAIN  # the routed specs' longest, as of the last sync

    def __post_init__(self) -> None:
        self._lock = trio.Lock()
        self._wanted = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._served = trio.Event()  # the gateway's run has returned
        self._opened = False  # `open` has been called: the gateway serves (or has)
        self._listener: socket.socket | None = None
        self._warned: set[tuple[str, str, str]] = set()

    def loaded(self, deployment: str) -> bool:
        """Whether the deployment has a ready replica (what `/v1/models` says)."""
        return self.replicas(deployment).ready > 0

    # -- the table -------------------------------------------------------------------------

    async def sync(self) -> RouteTable:
        """Rebuild the table from the active specs and the endpoints now (module doc)."""
        async with self._lock:
            specs = await self.sections()
            sections = {d: s.gateway for d, s in specs.items() if s.gateway is not None}
            drains = [specs[d].update.drain_timeout for d in sections]
            self.drain_timeout = max(drains, default=DEFAULT_DRAIN)
            table = build_routes(sections, self.endpoint_of)
            for conflict in table.conflicts:
                if conflict not in self._warned:
                    self._warned.add(conflict)
                    name, kept, left = conflict
                    log.warning(
                        'gateway: model "%s" is claimed by %s and %s; %s keeps it',
                        name, kept, left, kept,
                    )  # fmt: skip
            self.known, self.table = sections, table
            if self.gateway is not None:
                self.gateway.set_routes(table.routes)
            return table

    def nudge(self) -> None:
        """Sync soon (from synchronous code: an endpoint came or went)."""
        self._wanted.set()

    async def _sync_when_nudged(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            try:
                await self.sync()
            except Exception:  # a store hiccup: the next nudge tries again
                log.exception("gateway: the route table could not be rebuilt")

    # -- the listener ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Make the gateway (when `[gateway] listen` is set: its listener bound or taken
        back, so connections wait in its backlog from now on) and keep the table in step;
        started in berthd's root nursery. It serves from `open`. Raises OSError /
        TlsFileError through `nursery.start` when the gateway cannot be made (before this
        task's nursery opens: not inside an exception group)."""
        settings = self.settings
        if settings is not None:
            self.gateway = await self._make(settings)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sync_when_nudged)
            await self.sync()
            task_status.started()

    async def open(self) -> None:
        """Start serving: berthd calls it once the first rounds have made the endpoints, so
        that a connection that waited in the backlog across a restart finds its model (the
        table is synced first). Once only; nothing without a gateway."""
        gateway, nursery, settings = self.gateway, self._nursery, self.settings
        if gateway is None or nursery is None or settings is None or self._opened:
            return
        self._opened = True
        await self.sync()
        await nursery.start(self._serve, gateway)
        log.info("gateway listening on %s", settings.listen)

    async def _serve(
        self, gateway: Gateway, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await gateway.run(task_status=task_status)
        finally:
            self._served.set()

    async def _make(self, settings: GatewaySettings) -> Gateway:
        gateway = Gateway(
            max_body=settings.max_body,
            timeouts=EndpointTimeouts(),
            listen=(settings.host, settings.port),
        )
        gateway.set_loaded(self.loaded)
        gateway.set_tls(await self._tls_context(settings))
        if self.credentials is not None:
            gateway.set_credentials(
                await self.credentials.credentials(CREDENTIALS_NAME, settings.auth)
            )
        self._listener = await trio.to_thread.run_sync(self._listen, settings)
        gateway.use_listener(self._listener)
        return gateway

    def _listen(self, settings: GatewaySettings) -> socket.socket:
        """The keeper's listener if it still listens at `listen`, else a new one (kept)."""
        host, port = settings.host, settings.port
        keeper = self.sockets
        passed = keeper.take(FD_NAME) if keeper is not None else None
        if keeper is not None and passed is not None:
            if sockets.is_listener_on(passed, host, port):
                log.info("gateway %s: listener taken back from the fd store", settings.listen)
                return passed
            was = _listening_at(passed)
            if was is not None:  # berthd.toml's listen changed across the restart
                log.warning(
                    "gateway listen changed (%s -> %s): the listener kept from before the "
                    "restart is closed; binding %s",
                    was,
                    settings.listen,
                    settings.listen,
                )
            else:
                log.warning(
                    "fd store: %s is not a listener on %s; binding", FD_NAME, settings.listen
                )
            passed.close()
            keeper.forget(FD_NAME)
        listener = sockets.listen(host, port)
        if keeper is not None:
            keeper.keep(FD_NAME, listener.fileno())
        return listener

    async def _tls_context(self, settings: GatewaySettings) -> ssl.SSLContext | None:
        if settings.tls is None:
            return None
        roots = tuple(self.tls_roots)
        try:
            return await trio.to_thread.run_sync(load_tls, settings.tls, roots)
        except TlsFileError as exc:  # named as berthd.toml's fields, not a spec's
            raise TlsFileError(str(exc).replace("endpoint.tls.", "gateway.tls.")) from None

    async def reload(self) -> list[str]:
        """SIGHUP: the TLS files and the credentials' secrets read again, in place; what
        failed (`gateway.tls...: reason`), keeping what there was."""
        settings, gateway = self.settings, self.gateway
        if settings is None or gateway is None:
            return []
        failed = []
        try:
            gateway.set_tls(await self._tls_context(settings))
        except TlsFileError as exc:
            failed.append(str(exc))
        if self.credentials is not None:
            gateway.set_credentials(
                await self.credentials.credentials(CREDENTIALS_NAME, settings.auth)
            )
        return failed

    async def drain(self, drain_timeout: float | None = None) -> None:
        """A stop: stop accepting, let the requests in flight finish, within the longest
        `[update] drain_timeout` of the routed deployments (a long generation through the
        gateway gets what it would at its own endpoint) or `drain_timeout`. The fd store's
        copy of the listener stays for the next berthd."""
        if drain_timeout is None:
            drain_timeout = self.drain_timeout
        if self.gateway is not None and self._opened:
            self.gateway.begin_shutdown(drain_timeout)
            with trio.move_on_after(drain_timeout + 1):
                await self._served.wait()
        elif self._listener is not None:  # made, never served: our copy only
            self._listener.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


def _listening_at(sock: socket.socket) -> str | None:
    """`IP:PORT` (`[IP]:PORT` for IPv6) where `sock` listens, None if it is no TCP listener."""
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return None
        host, port = sock.getsockname()[:2]
    except OSError:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
