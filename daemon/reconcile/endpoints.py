"""The daemon's side of the data plane: one proxy `Endpoint` per deployment, owned here.

Endpoints live in their own nursery, apart from the reconcile workers, so that on SIGTERM
berthd can stop accepting and drain in-flight requests (hypercorn's graceful drain) while the
workers are simply cancelled, leaving every container running.

An endpoint is keyed by deployment name. `ensure` applies a spec to it: everything but the
address applies in place (the timeouts through `Endpoint.set_timeouts`, `max_connections`
and `trusted_proxies` through `Endpoint.set_limits`, admission, balancing, retries and
passive health through `Endpoint.set_admission` (`set_traffic`), the drain timeout
kept here, the cold-start hold set by the worker), with no rebind; only a new `bind` or
`port` makes a new listener, and that one is bound before the old one closes, so there is
no moment with nobody listening. The old endpoint then stops accepting at once and drains
its in-flight requests in the background (bounded by its drain timeout); `ensure` returns
once its listening socket is closed. The new endpoint counts into the old one's counters,
so statistics go on and a replica's in-flight count (what a replica's drain waits on)
includes the requests the old one still serves. The one case that cannot be bound first is the same
port on an address that overlaps the old one (`0.0.0.0` <-> `127.0.0.1`, `::` <-> `::1`:
the kernel refuses a second listener there without SO_REUSEPORT, which would let another
program share the port unseen): there the old listener closes first and the new one binds
right after, a refused window of one bind. `close` drains an endpoint away when the
deployment goes. A replica set is pushed with `set_upstreams`: the proxy applies it to
the next request, no listener restart.

A protected deployment's endpoint gets its credential set from `credentials`
(`daemon.reconcile.endpoint_auth`) on every `ensure`, in place (the set is kept between
rounds, so that costs a comparison); `refresh_credentials` applies a change of its keys at
once (the admin API's `berth keys create|revoke`), with no rebind: the next request on
every open connection is judged by the new set.

A TLS endpoint (`[endpoint.tls]`) gets its context from `daemon.reconcile.endpoint_tls`
when it is made and when its `[endpoint.tls]` changes; `reload_tls` reads the files again
(SIGHUP, `berth apply`) and swaps the context in place (`Endpoint.set_tls`): new
connections get the new certificate, open ones keep theirs, the listener stays. A reload
that fails keeps the context there was, and says why.

Listening sockets outlive berthd when a socket keeper is set (`sockets`: systemd's file
descriptor store, or `berthd --supervise`; `daemon.system.fdstore` speaks the protocol):
a new listener is first looked for among the sockets passed at start, by its address's
name (`endpoint_fd_name`), and used if it really listens there (`proxy.sockets.is_listener_on`);
otherwise it is bound here and a copy handed to the keeper. The copy is forgotten
(FDSTOREREMOVE) only when the listener is gone for good: `close` (the deployment removed
or disabled), a move to a new address (after the old listener closed), a listener that
failed; never by `drain_all`, which is a stop or a restart, so the kept copy stays
listening and connections that arrive meanwhile wait in its backlog for the next berthd.
A bind right after a forget retries EADDRINUSE for a moment: the keeper closes its copy
when it reads the message.

A fault stays with its endpoint: one whose listener fails after it started (an unexpected
error in its accept loop or poller) is logged and dropped, and the next `ensure` from its
worker binds it again; the other endpoints, and berthd, go on.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from config.credentials import DEFAULT_CREDENTIALS_ROOTS
from config.spec import Balance, EndpointTls, RetryPolicy
from config.spec import Endpoint as EndpointSpec
from daemon.reconcile.endpoint_auth import EndpointCredentials
from daemon.reconcile.endpoint_tls import TlsFileError, load_tls
from proxy import sockets
from proxy.endpoint import Endpoint, EndpointTimeouts

log = logging.getLogger("berthd")

# How long a moved endpoint's old listener may take to close (its accept loop ends at its
# next checkpoint: in practice at once; the bound is for a wedged one).
LISTENER_CLOSE_WAIT = 5.0
# A bind of an address whose kept copy was just forgotten: the keeper closes it when it
# reads the message, so EADDRINUSE is retried this long.
REBIND_WAIT = 2.0
_REBIND_STEP = 0.02


class SocketKeeper(Protocol):
    """Holds listening sockets across berthd's restarts (`daemon.system.fdstore.FdStore`)."""

    def take(self, name: str) -> socket.socket | None: ...
    def keep(self, name: str, fileno: int) -> bool: ...
    def forget(self, name: str) -> bool: ...


def endpoint_fd_name(bind: str, port: int) -> str:
    """The keeper's name for a listener on bind:port (FDNAME=: no ':', printable ASCII)."""
    return f"ep-{bind.replace(':', '_')}-{port}"


class _Started:
    """A task status that tells `_serve` its endpoint started (then faults are its own)."""

    def __init__(self, started: Callable[[], None]) -> None:
        self._started = started

    def started(self, value: None = None) -> None:
        self._started()


@dataclass(eq=False)  # held in a set, by identity
class _Slot:
    spec: EndpointSpec
    endpoint: Endpoint
    drain_timeout: float  # the deployment's `[update] drain_timeout`
    on_lost: Callable[[], None]  # its listener failed: the worker binds it again
    done: trio.Event = field(default_factory=trio.Event)
    tls: EndpointTls | None = None  # what the endpoint's TLS context was loaded from


def _address(spec: EndpointSpec) -> tuple[str, int]:
    """What the listener is made of: a change of anything else applies without a rebind."""
    return (spec.bind, spec.port)


def timeouts_of(spec: EndpointSpec) -> EndpointTimeouts:
    return EndpointTimeouts(
        connect=spec.connect_timeout,
        read_idle=spec.read_timeout,
        client_idle=spec.client_idle_timeout,
    )


class EndpointManager:
    def __init__(self, drain_timeout: float = 30.0) -> None:
        self._slots: dict[str, _Slot] = {}
        self._retiring: set[_Slot] = set()  # moved away: not accepting, draining
        self._nursery: trio.Nursery | None = None
        self._drain_timeout = drain_timeout
        # Set by the composition root once the store is open; None: every endpoint is open.
        self.credentials: EndpointCredentials | None = None
        # Where `[endpoint.tls]` files must lie: berthd.toml's credentials_roots.
        self.tls_roots: Sequence[Path] = DEFAULT_CREDENTIALS_ROOTS
        # Set by the composition root: keeps the listeners across restarts (module doc).
        self.sockets: SocketKeeper | None = None
        self._forgotten: dict[str, float] = {}  # name -> when its kept copy was forgotten
        # Called when a deployment's endpoint comes, is replaced or goes (the model
        # gateway's route table holds the endpoints: `daemon.gateway.manager`).
        self.on_change: Callable[[], None] = lambda: None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def get(self, name: str) -> Endpoint | None:
        slot = self._slots.get(name)
        return slot.endpoint if slot else None

    async def ensure(
        self,
        name: str,
        spec: EndpointSpec,
        on_suspect: Callable[[str], None] | None = None,
        *,
        drain_timeout: float | None = None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> Endpoint:
        """The deployment's endpoint, listening per `spec`; raises OSError if it cannot bind,
        TlsFileError if its `[endpoint.tls]` cannot be loaded. `drain_timeout`: how long
        its in-flight requests get when it closes (the manager's default when None)."""
        drain = self._drain_timeout if drain_timeout is None else drain_timeout
        slot = self._slots.get(name)
        if slot is not None and _address(slot.spec) == _address(spec):
            slot.endpoint.set_timeouts(timeouts_of(spec))
            slot.endpoint.set_limits(spec.max_connections, spec.trusted_proxies)
            if spec != slot.spec:
                set_traffic(slot.endpoint, spec)
            if spec.tls != slot.tls:
                slot.endpoint.set_tls(await self._context(spec.tls))
                slot.tls = spec.tls
            slot.spec, slot.drain_timeout, slot.on_lost = spec, drain, on_lost
            await self._protect(name, spec, slot.endpoint)
            return slot.endpoint
        assert self._nursery is not None, "EndpointManager.run has not started"
        context = await self._context(spec.tls)
        new = _Slot(spec, self._endpoint(name, spec, on_suspect), drain, on_lost, tls=spec.tls)
        endpoint = new.endpoint
        endpoint.set_tls(context)  # before its first connection
        set_traffic(endpoint, spec)
        if slot is not None:
            endpoint.continue_from(slot.endpoint)  # statistics and in-flight counts go on
        await self._protect(name, spec, endpoint)  # before it accepts its first connection
        if slot is None:
            await self._start(new)
        else:
            await self._move(name, slot, new)
        self._slots[name] = new
        self.on_change()
        return endpoint

    def _endpoint(
        self, name: str, spec: EndpointSpec, on_suspect: Callable[[str], None] | None
    ) -> Endpoint:
        return Endpoint(
            name,
            bind=spec.bind,
            port=spec.port,
            timeouts=timeouts_of(spec),
            on_suspect=on_suspect,
            max_connections=spec.max_connections,
            trusted_proxies=spec.trusted_proxies,
        )

    async def _start(self, slot: _Slot, *, rebind: bool = False) -> None:
        """Give `slot` its listener (passed at start, or bound and kept) and start it.
        `rebind`: `slot`'s address was just released here (see `_listener`)."""
        assert self._nursery is not None
        spec = slot.spec
        if self.sockets is not None:
            slot.endpoint.use_listener(await self._listener(spec, rebind))
        try:
            await self._nursery.start(self._serve, slot)
        except Exception:
            # It never served: no copy may keep the port. (A cancellation, berthd stopping
            # meanwhile, leaves the copy to the next berthd.)
            self._forget(spec)
            raise

    async def _listener(self, spec: EndpointSpec, rebind: bool) -> socket.socket:
        """The listening socket for `spec`'s address: the keeper's, or a new one (kept)."""
        assert self.sockets is not None
        name = endpoint_fd_name(spec.bind, spec.port)
        passed = self.sockets.take(name)
        if passed is not None:
            if sockets.is_listener_on(passed, spec.bind, spec.port):
                log.info("endpoint %s:%d: listener taken back from the fd store", *_address(spec))
                return passed
            log.warning("fd store: %s is not a listener on %s:%d; binding", name, *_address(spec))
            passed.close()
            self.sockets.forget(name)
            rebind = True
        forgotten = self._forgotten.pop(name, None)
        patience = REBIND_WAIT if rebind or forgotten is not None else 0.0
        deadline = trio.current_time() + patience
        while True:
            try:
                listener = sockets.listen(spec.bind, spec.port)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or trio.current_time() >= deadline:
                    raise
            await trio.sleep(_REBIND_STEP)
        self.sockets.keep(name, listener.fileno())
        return listener

    def _forget(self, spec: EndpointSpec) -> None:
        """The listener on `spec`'s address is gone for good: the keeper drops its copy."""
        if self.sockets is not None:
            name = endpoint_fd_name(spec.bind, spec.port)
            if self.sockets.forget(name):
                self._forgotten[name] = trio.current_time()

    async def _protect(self, name: str, spec: EndpointSpec, endpoint: Endpoint) -> None:
        if self.credentials is not None:
            endpoint.set_credentials(await self.credentials.credentials(name, spec.auth))

    async def _context(self, tls: EndpointTls | None) -> ssl.SSLContext | None:
        if tls is None:
            return None
        return await trio.to_thread.run_sync(load_tls, tls, tuple(self.tls_roots))

    async def reload_tls(self, name: str | None = None) -> list[tuple[str, str]]:
        """Read the TLS files again for `name`'s endpoint (None: every endpoint) and swap
        the context in place; what failed, as (deployment, `field: reason`), keeping the
        context there was."""
        failed: list[tuple[str, str]] = []
        for slot_name, slot in list(self._slots.items()):
            if (name is not None and slot_name != name) or slot.tls is None:
                continue
            try:
                context = await self._context(slot.tls)
            except TlsFileError as exc:
                failed.append((slot_name, str(exc)))
                continue
            slot.endpoint.set_tls(context)
        return failed

    async def refresh_credentials(self, name: str) -> None:
        """The deployment's keys changed: its endpoint takes the new set now."""
        if self.credentials is None:
            return
        self.credentials.forget_keys(name)
        slot = self._slots.get(name)
        if slot is not None:
            await self._protect(name, slot.spec, slot.endpoint)

    async def _move(self, name: str, old: _Slot, new: _Slot) -> None:
        """A new address: bind `new` first, then retire `old` (see the module docstring).
        A bind that fails leaves `old` serving, and raises."""
        try:
            await self._start(new)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or old.spec.port != new.spec.port:
                raise
            # The same port on an overlapping address: one listener at a time.
            await self._retire(name, old)
            await self._start(new, rebind=True)
        else:
            await self._retire(name, old)

    async def _retire(self, name: str, slot: _Slot) -> None:
        """Stop `slot` accepting and wait for its listener to close; its in-flight requests
        drain in the background, within its drain timeout."""
        if self._slots.get(name) is slot:
            del self._slots[name]
        self._retiring.add(slot)
        slot.endpoint.begin_shutdown(slot.drain_timeout)
        with trio.move_on_after(LISTENER_CLOSE_WAIT):
            await slot.endpoint.wait_listener_closed()
        self._forget(slot.spec)

    async def _serve(
        self, slot: _Slot, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False

        def report_started() -> None:
            nonlocal started
            started = True
            task_status.started()

        try:
            await slot.endpoint.run(task_status=_Started(report_started))
        except Exception:
            if not started:
                raise  # a bind that fails is the caller's to report (endpoint-failed)
            if slot in self._retiring:
                log.exception("endpoint %s failed while draining", slot.endpoint.name)
                return
            log.exception("endpoint %s failed; bound again by its next round", slot.endpoint.name)
            for name, held in list(self._slots.items()):
                if held is slot:
                    del self._slots[name]
            self.on_change()
            self._forget(slot.spec)  # the next bind makes a new socket (and keeps that)
            slot.on_lost()
        finally:
            self._retiring.discard(slot)
            slot.done.set()

    async def close(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is None:
            return
        self.on_change()
        slot.endpoint.begin_shutdown(slot.drain_timeout)
        with trio.move_on_after(LISTENER_CLOSE_WAIT):
            await slot.endpoint.wait_listener_closed()
        self._forget(slot.spec)  # gone for good: no copy keeps the port
        with trio.move_on_after(slot.drain_timeout + 1):
            await slot.done.wait()

    async def drain_all(self) -> None:
        """SIGTERM: stop accepting everywhere, let in-flight requests finish (bounded). The
        kept copies of the listeners stay with their keeper: the next berthd serves them."""
        slots = [*self._slots.values(), *self._retiring]
        for slot in slots:
            slot.endpoint.begin_shutdown(slot.drain_timeout)
        longest = max((slot.drain_timeout for slot in slots), default=0.0)
        with trio.move_on_after(longest + 1):
            for slot in slots:
                await slot.done.wait()


def set_traffic(endpoint: Endpoint, spec: EndpointSpec) -> None:
    """The spec's admission, balancing, retry and passive-health rules, in place."""
    endpoint.set_admission(
        max_concurrency=spec.max_concurrency,
        max_queue=spec.max_queue,
        queue_timeout=spec.queue_timeout,
        least_request=spec.balance is Balance.LEAST_REQUEST,
        retry_all=spec.retry is RetryPolicy.ALL,
        outlier=spec.outlier,
    )
    endpoint.set_upstream_protocol(spec.upstream_protocol.value)
