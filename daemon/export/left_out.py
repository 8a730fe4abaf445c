"""What no export target has: berth's own endpoint (the load balancer in front of the
replicas) and its model gateway. Each target module adds its own misses to these.

`endpoint_features(spec, carried=...)` names every such field the spec sets to something
other than its default (a default needs no word: the target's own default behaves alike,
or the README's general note covers it), minus the fields the target does express
(`carried`, e.g. KServe's `containerConcurrency` for `endpoint.max_concurrency`). The order
is the spec's own (docs/spec.md), so the README and comments list them alike every time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from config.spec import (
    ENDPOINT_CLIENT_IDLE_TIMEOUT,
    ENDPOINT_CONNECT_TIMEOUT,
    ENDPOINT_READ_TIMEOUT,
    MAX_QUEUE_DEFAULT,
    QUEUE_TIMEOUT_DEFAULT,
    Balance,
    DeploymentSpec,
    Endpoint,
    Outlier,
    RetryPolicy,
)
from daemon.export.bundle import LeftOut

# config.spec names no constant for it: the field's own default (600 s)
COLD_START_TIMEOUT_DEFAULT: float = next(
    f.default for f in dataclasses.fields(Endpoint) if f.name == "cold_start_timeout"
)  # type: ignore[assignment]
_FRONT = "set it on the proxy, ingress or gateway you put in front"


def endpoint_features(
    spec: DeploymentSpec, *, carried: Collection[str] = (), cold_start_reason: str | None = None
) -> list[LeftOut]:
    """The `[endpoint]`, `[gateway]` and VRAM-packing fields the spec uses that a target
    without berth's proxy cannot express, less those in `carried`. (The gpu_memory reason
    speaks of a cluster's whole GPUs: Quadlet carries the field with a reason of its own.)"""
    e = spec.endpoint
    found: list[LeftOut] = []

    def miss(field: str, reason: str) -> None:
        if field not in carried:
            found.append(LeftOut(field, reason))

    if e.auth is not None:
        miss(
            "endpoint.auth",
            "berth's endpoint answers 401 to every request without a key (from `berth keys "
            "create`, or the api_keys / basic users listed); nothing here checks any: every "
            f"request reaches the replica ({_FRONT})",
        )
        if e.auth.api_keys:
            miss(
                "endpoint.auth.api_keys",
                "berth's endpoint checks bearer keys; nothing here does: put an "
                "authenticating proxy, ingress or gateway in front",
            )
        if e.auth.basic:
            miss(
                "endpoint.auth.basic",
                f"berth's endpoint checks basic auth; nothing here does ({_FRONT})",
            )
        if e.auth.forward_auth:
            miss(
                "endpoint.auth.forward_auth",
                "the replica gets the client's Authorization / x-api-key headers here as "
                "berth forwards them, but nothing checked them first",
            )
    if e.tls is not None:
        miss("endpoint.tls", f"berth's endpoint serves HTTPS; nothing here does ({_FRONT})")
    if e.cold_start_timeout != COLD_START_TIMEOUT_DEFAULT:
        miss("endpoint.cold_start_timeout", cold_start_reason or _cold_start_reason(e))
    if e.max_concurrency is not None:
        miss(
            "endpoint.max_concurrency",
            f"no per-replica cap on requests in flight at {e.max_concurrency}: the replica "
            "takes all it is sent",
        )
    if e.max_queue != MAX_QUEUE_DEFAULT or e.queue_timeout != QUEUE_TIMEOUT_DEFAULT:
        miss(
            "endpoint.max_queue",
            "no admission queue (max_queue, queue_timeout): an excess request reaches a "
            "replica instead of waiting or getting 429",
        )
    if e.balance != Balance.ROUND_ROBIN:
        miss(
            "endpoint.balance",
            f"{e.balance.value}: nothing here picks a replica by its requests in flight (a "
            "Kubernetes Service spreads connections; one host has no balancer at all)",
        )
    if e.retry != RetryPolicy.IDEMPOTENT:
        miss("endpoint.retry", "no retry of a request whose replica failed before answering")
    if e.outlier != Outlier():
        miss(
            "endpoint.outlier",
            "no passive health (ejection of a replica answering 5xx); the readiness probe "
            "alone takes a replica out",
        )
    if _timeouts_set(e):
        miss(
            "endpoint.read_timeout",
            f"connect_timeout / read_timeout / client_idle_timeout are berth's proxy's; {_FRONT}",
        )
    if e.max_connections is not None:
        miss("endpoint.max_connections", "no cap on client connections held open")
    if e.trusted_proxies:
        miss(
            "endpoint.trusted_proxies",
            "berth's proxy rewrites forwarding headers; nothing here does",
        )
    if spec.gateway is not None:
        miss(
            "gateway",
            "berth's model gateway (routing by the request's model, cold starts, swaps) has "
            "no equivalent here; a client calls this deployment's address directly",
        )
    if spec.resources.gpu_memory is not None:
        miss(
            "resources.gpu_memory",
            "VRAM packing (several replicas sharing a GPU by memory) is not expressed: "
            "each replica takes one whole GPU (nvidia.com/gpu: 1); to share GPUs, use "
            "time-slicing, MIG or DRA on the cluster",
        )
    return found


def _cold_start_reason(e: Endpoint) -> str:
    return (
        f"berth holds a request up to {_seconds(e.cold_start_timeout)} while a replica starts "
        "(first load, scale from zero, restart); nothing here holds one: with no ready "
        "replica a request fails at once"
    )


def _seconds(s: float) -> str:
    return f"{s:g}s"


def _timeouts_set(e: Endpoint) -> bool:
    return (
        e.connect_timeout != ENDPOINT_CONNECT_TIMEOUT
        or e.read_timeout != ENDPOINT_READ_TIMEOUT
        or e.client_idle_timeout != ENDPOINT_CLIENT_IDLE_TIMEOUT
    )
