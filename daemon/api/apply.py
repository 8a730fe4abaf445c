"""Applying a spec: parse, check against the host and the other deployments, record, nudge.

All checks run before anything is written: a refused spec leaves the store untouched. Applies
are serialised by the daemon's apply lock, so two applies cannot both claim one endpoint port.
"""

from __future__ import annotations

import errno
import json
import logging
import socket

import trio

from config.canonical import spec_id, spec_to_dict
from config.errors import SpecError
from config.parse import parse_spec
from config.spec import DeploymentSpec, Gateway, UpdateStrategy
from daemon.api.control_plane import ControlPlane
from daemon.gateway.routes import claim_problems
from daemon.gpu.placement import apply_problems, surge_warnings
from daemon.integrations.mount_checks import mount_problems, volume_problems
from daemon.reconcile.endpoint_tls import tls_problems
from daemon.runtime.interface import LABEL_INSTANCE
from daemon.secrets.references import reference_problems
from daemon.secrets.tokens import literal_token_warnings
from daemon.store.database import ApplyResult, Store


class ApplyRefused(Exception):
    def __init__(self, source: str, problems: list[str]) -> None:
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: spec refused, {len(problems)} {noun}")
        self.problems = problems


async def check_spec_text(daemon: ControlPlane, text: str, *, source: str) -> dict[str, object]:
    """`berth apply --dry-run`: every check an apply makes, nothing recorded or changed.
    What the apply would do: the spec's name and spec_id, and `outcome` ("created",
    "updated", "unchanged"); raises ApplyRefused with every problem as an apply would."""
    spec = _parsed(text, source)
    async with daemon.apply_lock:
        problems = await host_problems(daemon, spec)
        active = await daemon.store.call(Store.active_revision, spec.name)
        deployment = await daemon.store.call(Store.get_deployment, spec.name)
    if problems:
        raise ApplyRefused(source, problems)
    sid = spec_id(spec)
    if active is None or deployment is None or deployment.removed_at is not None:
        outcome = "created"
    else:
        outcome = "unchanged" if active.spec_id == sid else "updated"
    return {
        "name": spec.name,
        "spec_id": sid,
        "outcome": outcome,
        "dry_run": True,
        "warnings": apply_warnings(daemon, spec),
        "notes": apply_notes(spec),
    }


def apply_warnings(daemon: ControlPlane, spec: DeploymentSpec) -> list[str]:
    """What the spec may do that will not work as meant here, though it is no error."""
    warnings = literal_token_warnings(spec.env)  # a token kept in the history: use a secret
    if spec.update.strategy is UpdateStrategy.SURGE:
        warnings += surge_warnings(
            spec.resources, spec.replicas.min, spec.update.max_surge, daemon.gpus.gpus()
        )
    return warnings


def apply_notes(spec: DeploymentSpec) -> list[str]:
    """What the apply chose for the spec where it says nothing (no problem, just said)."""
    e = spec.endpoint
    if e.bind_given:
        return []
    if e.auth is not None:
        return [
            f"endpoint.bind not set: listening on {e.bind}:{e.port}, every address "
            "(the default with [endpoint.auth])"
        ]
    return [
        f"endpoint.bind not set: listening on {e.bind}:{e.port}, this host only (the default "
        'without [endpoint.auth]; bind = "0.0.0.0" serves the network, unprotected)'
    ]


def _parsed(text: str, source: str) -> DeploymentSpec:
    try:
        return parse_spec(text, source=source)
    except SpecError as exc:
        raise ApplyRefused(source, exc.messages()) from None


async def apply_spec_text(daemon: ControlPlane, text: str, *, source: str) -> ApplyResult:
    spec = _parsed(text, source)
    async with daemon.apply_lock:
        problems = await host_problems(daemon, spec)
        if problems:
            raise ApplyRefused(source, problems)
        result = await daemon.store.call(
            Store.apply, spec.name, spec_id(spec), text, json.dumps(spec_to_dict(spec))
        )
    if result.outcome != "unchanged":
        await daemon.events.emit(
            "applied",
            f"revision {result.revision} ({result.outcome}, spec {result.spec_id})",
            deployment=spec.name,
        )
    daemon.ensure_worker(spec.name)
    await daemon.gateway.sync()  # its models routed (once its endpoint listens), or no more
    # The TLS files are read again (a renewed certificate at the same paths), in place.
    for name, why in await daemon.endpoints.reload_tls(spec.name):
        await daemon.events.emit("tls-reload-failed", why, deployment=name, level=logging.ERROR)
    return result


async def host_problems(daemon: ControlPlane, spec: DeploymentSpec) -> list[str]:
    """What the spec asks of this host that it cannot have; every problem names its field."""
    problems: list[str] = []
    port = spec.endpoint.port
    served: dict[str, Gateway] = {}  # the other deployments' [gateway] sections
    for deployment in await daemon.store.call(Store.list_deployments):
        if deployment.name == spec.name:
            continue
        other = await daemon.active_spec(deployment.name)
        if other is not None and other.endpoint.port == port:
            problems.append(
                f'endpoint.port: already the endpoint of deployment "{deployment.name}" '
                f"(got {port})"
            )
        if other is not None and other.gateway is not None:
            served[deployment.name] = other.gateway
    problems.extend(claim_problems(spec.name, spec.gateway, served))  # model names unique
    own = daemon.endpoints.get(spec.name)
    if not problems and (own is None or own.port != port) and port_in_use(spec.endpoint.bind, port):
        problems.append(f"endpoint.port: in use by another program on this host (got {port})")
    problems.extend(apply_problems(spec.resources, daemon.gpus.gpus()))
    problems.extend(await trio.to_thread.run_sync(mount_problems, spec, daemon.settings))
    problems.extend(reference_problems(spec, daemon.secrets))  # each named secret exists
    roots = daemon.settings.credentials_roots
    problems.extend(await trio.to_thread.run_sync(tls_problems, spec.endpoint.tls, roots))
    berth_labels = {LABEL_INSTANCE: daemon.instance}
    problems.extend(await volume_problems(spec, daemon.runtime, berth_labels, daemon.settings))
    return problems


def port_in_use(bind: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
