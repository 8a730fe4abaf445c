"""What `GET /v1/gateway` (and so `berth gateway`) shows: the gateway's address and, per model,
where it is served and how it is doing.

One entry per deployment with a `[gateway]` section in its active spec (its first name is
the model's `name`, the rest its `aliases`), routed or not: a deployment whose endpoint is
not listening yet is shown with `routed: false` (the gateway answers 404 for it meanwhile).
Times are wall-clock ISO 8601 (UTC); `idle_s` is seconds since its last request ended (at
its endpoint, through the gateway or not); `requests`, `status` and `ttft` are the
gateway's own figures for it (`proxy.gateway.stats`).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import trio

from daemon.gateway.event_counts import ModelCounts
from daemon.gateway.manager import GatewayManager
from proxy.gateway.stats import ModelStats


def gateway_status(manager: GatewayManager) -> dict[str, Any]:
    settings = manager.settings
    stats = manager.gateway.statistics() if manager.gateway is not None else {}
    models = [
        _model(manager, d, stats.get(manager.known[d].models[0])) for d in sorted(manager.known)
    ]
    return {
        "listen": settings.listen if settings is not None else None,
        "tls": settings is not None and settings.tls is not None,
        "auth": settings is not None and settings.auth is not None,
        "max_body": settings.max_body if settings is not None else None,
        "models": models,
    }


def _model(manager: GatewayManager, deployment: str, served: ModelStats | None) -> dict[str, Any]:
    section = manager.known[deployment]
    name = section.models[0]
    route = manager.table.routes.get(name)
    routed = route is not None and route.deployment == deployment
    endpoint = route.endpoint if route is not None and routed else manager.endpoint_of(deployment)
    placed = manager.replicas(deployment)
    counts = manager.counts.get(deployment, ModelCounts())
    last_request = endpoint.last_request_at() if endpoint is not None else None
    idle = None if last_request is None else max(0.0, trio.current_time() - last_request)
    return {
        "name": name,
        "aliases": list(section.models[1:]),
        "deployment": deployment,
        "rewrite_model": section.rewrite_model,
        "priority": section.priority,
        "group": section.group,
        "routed": routed,
        "loaded": placed.ready > 0,
        "ready": placed.ready,
        "starting": placed.starting,
        "gpus": list(placed.gpus),
        "waiting": endpoint.waiting() if endpoint is not None else 0,
        "in_flight": endpoint.requests_in_flight() if endpoint is not None else 0,
        "last_request_at": None if idle is None else _iso(time.time() - idle),
        "idle_s": None if idle is None else round(idle, 1),
        "swaps": counts.swaps,
        "cold_starts": counts.cold_starts,
        "last_swap": counts.last_swap,
        # Through the gateway, since it started (the window's for ttft): None before any.
        "requests": served.requests_total if served is not None else 0,
        "status": dataclasses.asdict(served.status) if served is not None else None,
        "ttft": dataclasses.asdict(served.ttft) if served is not None else None,
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
