"""What every connection of the gateway shares: routes, limits, credentials, counters.

The `Gateway` (`proxy.gateway.server`) owns one `GatewayState`; each client connection
(`proxy.gateway.connection`) reads it per request, so a change (routes, credentials,
timeouts, `max_body`) applies to the next request on every connection.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.auth import Guard
from proxy.balancer import EndpointTimeouts, poller_tick
from proxy.gateway.routes import Route, RouteTable, has_replica
from proxy.gateway.stats import ModelCounters
from proxy.poller import Poller


class GatewayState:
    __slots__ = (
        "max_body",
        "timeouts",
        "poller",
        "table",
        "loaded",
        "guard",
        "draining",
        "models",
        "refused",
    )

    def __init__(self, max_body: int, timeouts: EndpointTimeouts) -> None:
        if max_body < 0:
            raise ValueError(f"max_body must be >= 0, got {max_body}")
        self.max_body = max_body
        self.timeouts = timeouts
        self.poller = Poller(tick=poller_tick(timeouts))
        self.table = RouteTable({})
        self.loaded: Callable[[str], bool] | None = None  # deployment -> has a ready replica
        self.guard: Guard | None = None
        self.draining = False
        self.models: dict[str, ModelCounters] = {}  # canonical name -> its counters
        self.refused: dict[int, int] = {}  # status -> errors the gateway answered itself

    def set_routes(self, table: RouteTable) -> None:
        self.table = table
        wanted = {table.canonical(r): r.deployment for r in table.routes()}
        for name, counters in list(self.models.items()):
            if name not in wanted and not counters.counters.in_flight:
                del self.models[name]
        for name, deployment in wanted.items():
            known = self.models.get(name)
            if known is None:
                self.models[name] = ModelCounters(deployment)
            else:
                known.deployment = deployment

    def counters_for(self, route: Route) -> ModelCounters:
        name = self.table.canonical(route)
        counters = self.models.get(name)
        if counters is None:
            counters = self.models[name] = ModelCounters(route.deployment)
        return counters

    def is_loaded(self, deployment: str) -> bool:
        """`set_loaded`'s callback, or else: its endpoint has an upstream."""
        if self.loaded is not None:
            return self.loaded(deployment)
        return any(has_replica(r) for r in self.table.routes() if r.deployment == deployment)
