"""The daemon's side of the data plane: one proxy `Endpoint` per deployment, owned here.

Endpoints live in their own nursery, apart from the reconcile workers, so that on SIGTERM
berthd can stop accepting and drain in-flight requests (hypercorn's graceful drain) while the
workers are simply cancelled, leaving every container running.

An endpoint is keyed by deployment name. `ensure` (re)binds it when its address or timeouts
change; `close` drains it away when the deployment goes. A replica set is pushed with
`set_upstreams`: the proxy applies it to the next request, no listener restart.

A fault stays with its endpoint: one whose listener fails after it started (an unexpected
error in its accept loop or poller) is logged and dropped, and the next `ensure` from its
worker binds it again; the other endpoints, and berthd, go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from config.spec import Endpoint as EndpointSpec
from proxy.endpoint import Endpoint, EndpointTimeouts

log = logging.getLogger("berthd")


class _Started:
    """A task status that tells `_serve` its endpoint started (then faults are its own)."""

    def __init__(self, started: Callable[[], None]) -> None:
        self._started = started

    def started(self, value: None = None) -> None:
        self._started()


@dataclass
class _Slot:
    spec: EndpointSpec
    endpoint: Endpoint
    drain_timeout: float  # the deployment's `[update] drain_timeout`
    on_lost: Callable[[], None]  # its listener failed: the worker binds it again
    done: trio.Event = field(default_factory=trio.Event)


def _listening(spec: EndpointSpec) -> tuple[object, ...]:
    """What the listener is made of: a change of anything else applies without a rebind."""
    return (spec.bind, spec.port, spec.connect_timeout, spec.read_timeout, spec.client_idle_timeout)


def timeouts_of(spec: EndpointSpec) -> EndpointTimeouts:
    return EndpointTimeouts(
        connect=spec.connect_timeout,
        read_idle=spec.read_timeout,
        client_idle=spec.client_idle_timeout,
    )


class EndpointManager:
    def __init__(self, drain_timeout: float = 30.0) -> None:
        self._slots: dict[str, _Slot] = {}
        self._nursery: trio.Nursery | None = None
        self._drain_timeout = drain_timeout

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
        """The deployment's endpoint, listening per `spec`; raises OSError if it cannot bind.
        `drain_timeout`: how long its in-flight requests get when it closes (the manager's
        default when None)."""
        drain = self._drain_timeout if drain_timeout is None else drain_timeout
        slot = self._slots.get(name)
        if slot is not None and _listening(slot.spec) == _listening(spec):
            slot.spec, slot.drain_timeout = spec, drain
            return slot.endpoint
        if slot is not None:
            await self.close(name)
        assert self._nursery is not None, "EndpointManager.run has not started"
        endpoint = Endpoint(
            name,
            bind=spec.bind,
            port=spec.port,
            timeouts=timeouts_of(spec),
            on_suspect=on_suspect,
        )
        new = _Slot(spec, endpoint, drain, on_lost)
        await self._nursery.start(self._serve, new)
        self._slots[name] = new
        return endpoint

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
            log.exception("endpoint %s failed; bound again by its next round", slot.endpoint.name)
            for name, held in list(self._slots.items()):
                if held is slot:
                    del self._slots[name]
            slot.on_lost()
        finally:
            slot.done.set()

    async def close(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is None:
            return
        slot.endpoint.begin_shutdown(slot.drain_timeout)
        with trio.move_on_after(slot.drain_timeout + 1):
            await slot.done.wait()

    async def drain_all(self) -> None:
        """SIGTERM: stop accepting everywhere, let in-flight requests finish (bounded)."""
        slots = list(self._slots.values())
        for slot in slots:
            slot.endpoint.begin_shutdown(slot.drain_timeout)
        longest = max((slot.drain_timeout for slot in slots), default=0.0)
        with trio.move_on_after(longest + 1):
            for slot in slots:
                await slot.done.wait()
