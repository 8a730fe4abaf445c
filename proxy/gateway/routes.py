"""Which deployment serves which model: the gateway's route table and its /v1/models listing.

A `Route` is one deployment as the gateway sees it; the table maps every name and alias to
its deployment's Route (the same object for all names of one deployment). The canonical
name of a route is its `canonical`, or, when that is empty, the first name that maps to it
in the table's order.

Invariants:
- The table is immutable; `Gateway.set_routes` swaps it whole, and the next request (on
  every connection, kept-alive ones included) is routed by the new one.
- Close names (`close_names`) are `difflib.get_close_matches` over every name and alias:
  a bounded answer (at most `CLOSE_NAMES`) that never lists the whole table.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from proxy.endpoint import Endpoint

CLOSE_NAMES: Final = 3
MAX_NAME: Final = 256  # longer asked-for names get no close names
OWNED_BY: Final = "berth"


@dataclass(frozen=True)
class Route:
    deployment: str  # the deployment's name (owned_by in /v1/models is "berth")
    endpoint: Endpoint  # proxy.endpoint.Endpoint of that deployment (its balancer)
    rewrite_model: str | None = None  # the name its server expects, sent instead
    canonical: str = ""  # the first name in the spec's models (aliases map to the same Route)


class RouteTable:
    """Model name or alias -> Route, with each route's canonical name (immutable)."""

    __slots__ = ("_routes", "_canonical")

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._routes: dict[str, Route] = dict(routes)
        canonical: dict[str, str] = {}  # deployment -> canonical model name
        for name, route in self._routes.items():
            if route.deployment not in canonical:
                canonical[route.deployment] = route.canonical or name
        self._canonical = canonical

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def get(self, model: str) -> Route | None:
        return self._routes.get(model)

    def canonical(self, route: Route) -> str:
        """The name statistics are kept under: the route's canonical model name."""
        return self._canonical.get(route.deployment, route.canonical or route.deployment)

    def routes(self) -> list[Route]:
        """One Route per deployment, in the table's order."""
        seen: dict[str, Route] = {}
        for route in self._routes.values():
            seen.setdefault(route.deployment, route)
        return list(seen.values())

    def close_names(self, model: str) -> list[str]:
        """Up to CLOSE_NAMES served names like `model`, compared without case: one that
        differs only in case (`Model-A` for `model-a`) first, then difflib's closest."""
        if len(model) > MAX_NAME:  # no name is close to it, and difflib is quadratic
            return []
        folded: dict[str, list[str]] = {}
        for name in self._routes:
            folded.setdefault(name.casefold(), []).append(name)
        wanted = model.casefold()
        found = list(folded.get(wanted, []))
        for near in difflib.get_close_matches(wanted, list(folded), n=CLOSE_NAMES, cutoff=0.5):
            found.extend(name for name in folded[near] if name not in found)
        return found[:CLOSE_NAMES]

    def model_object(self, name: str, loaded: Callable[[str], bool]) -> dict[str, object]:
        """One entry of the listing (OpenAI's model object, with berth's fields)."""
        route = self._routes[name]
        return {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": OWNED_BY,
            "deployment": route.deployment,
            "canonical": self.canonical(route),
            "loaded": bool(loaded(route.deployment)),
        }

    def listing(self, loaded: Callable[[str], bool]) -> bytes:
        """GET /v1/models: every name and alias, in the table's order."""
        data = [self.model_object(name, loaded) for name in self._routes]
        return json.dumps({"object": "list", "data": data}).encode() + b"\n"


def has_replica(route: Route) -> bool:
    """The default `loaded`: the deployment's endpoint has an upstream (a ready replica)."""
    return bool(route.endpoint.upstreams())
