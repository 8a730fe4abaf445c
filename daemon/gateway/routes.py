"""Which deployment serves which model: the route table, and the apply-time uniqueness check.

Both read the same input, the `[gateway]` sections of the active specs by deployment name,
so what an apply allows is what the table can hold. Invariants:
- A model name or alias is served by one deployment on the box. `claim_problems` refuses a
  spec naming one another deployment's spec already names (as `gateway.models[i]`, with the
  other deployment); a spec may always claim its own names again (an update).
- `build_routes` maps every name and alias to the one `Route` of its deployment (the same
  object, `canonical` its first name), only for deployments whose endpoint exists (one not
  bound yet, or disabled, has no route: its models are unknown to the gateway until then).
  Should two stored specs still claim one name (applied before the check existed), the
  deployment first by name keeps it, and `conflicts` says so; nothing is ever routed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from config.spec import Gateway
from proxy.endpoint import Endpoint
from proxy.gateway.routes import Route


@dataclass(frozen=True)
class RouteTable:
    routes: dict[str, Route]  # model name or alias -> its deployment's route
    # (name, the deployment that kept it, the one left without it): see the module doc
    conflicts: tuple[tuple[str, str, str], ...] = ()


def claims(sections: Mapping[str, Gateway]) -> dict[str, str]:
    """Model name or alias -> the deployment that claims it, first deployment by name."""
    owner: dict[str, str] = {}
    for deployment in sorted(sections):
        for name in sections[deployment].models:
            owner.setdefault(name, deployment)
    return owner


def claim_problems(
    deployment: str, section: Gateway | None, others: Mapping[str, Gateway]
) -> list[str]:
    """Why `deployment`'s `[gateway]` cannot be applied next to the `others` (deployment ->
    section, its own entry ignored): each name another deployment serves."""
    if section is None:
        return []
    owner = claims({d: g for d, g in others.items() if d != deployment})
    problems = []
    for i, name in enumerate(section.models):
        other = owner.get(name)
        if other is not None:
            problems.append(
                f'gateway.models[{i}]: "{name}" is served by deployment "{other}" (its '
                "[gateway] models names it; a model name or alias is unique on the box)"
            )
    return problems


def build_routes(
    sections: Mapping[str, Gateway], endpoint_of: Callable[[str], Endpoint | None]
) -> RouteTable:
    """The gateway's route table for these sections (deployment -> `[gateway]`)."""
    routes: dict[str, Route] = {}
    conflicts: list[tuple[str, str, str]] = []
    owner: dict[str, str] = {}
    for deployment in sorted(sections):
        section = sections[deployment]
        endpoint = endpoint_of(deployment)
        if endpoint is None:
            continue
        route = Route(
            deployment=deployment,
            endpoint=endpoint,
            rewrite_model=section.rewrite_model,
            canonical=section.models[0],
        )
        for name in section.models:
            kept = owner.get(name)
            if kept is not None:
                conflicts.append((name, kept, deployment))
                continue
            owner[name] = deployment
            routes[name] = route
    return RouteTable(routes, tuple(conflicts))
