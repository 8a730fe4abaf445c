"""The admin API's handlers (docs/admin-api.md): admin requests in, JSON out.

Routing is a match on path segments; each handler reads the store and the workers' snapshots
and never touches Podman on behalf of a read except for logs and status. berthd serves
`AdminApi.handle` with `daemon.http.server.HttpServer` on the admin Unix socket; the server
knows nothing of deployments, this module nothing of sockets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import trio

from config.parse import parse_spec
from config.parse_gateway import GatewaySettings
from config.spec import DeploymentSpec
from config.units import parse_duration
from daemon import __version__
from daemon.api import console_routes
from daemon.api.apply import (
    ApplyRefused,
    apply_notes,
    apply_spec_text,
    apply_warnings,
    check_spec_text,
)
from daemon.api.control_plane import ControlPlane
from daemon.api.key_routes import auth_metrics, create_key, keys_of, remove_key
from daemon.api.log_stream import follow_replica_logs, replica_logs
from daemon.api.pull_stream import follow_pull
from daemon.api.replies import error
from daemon.api.secret_routes import create_secret, list_secrets, remove_secret
from daemon.api.traffic_metrics import traffic_metrics
from daemon.gateway.status import gateway_status
from daemon.http.server import Request, Response
from daemon.integrations.registry import RegistryCredentialsError, registry_auth
from daemon.reconcile.worker import WorkerSnapshot
from daemon.runtime.interface import LABEL_DEPLOYMENT, LABEL_INSTANCE, RuntimeFailure
from daemon.secrets.references import SecretUnavailable, resolve_secret
from daemon.store.database import Deployment, Event, Store
from daemon.store.events import acting_as
from daemon.store.runs import last_unclean_stop

RM_WAIT = 120.0
FOLLOW_BUFFER = 64  # chunks of `berth logs -f` waiting for a slow reader


def endpoint_url(spec: DeploymentSpec) -> str:
    host = spec.endpoint.bind
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{spec.endpoint.port}"


def gateway_url(gateway: GatewaySettings | None) -> str | None:
    """The model gateway's base URL (`berth status`); None: no gateway."""
    if gateway is None:
        return None
    return f"{'https' if gateway.tls else 'http'}://{gateway.listen}/v1"


def event_json(e: Event) -> dict[str, Any]:
    return dataclasses.asdict(e)


class AdminApi:
    def __init__(self, daemon: ControlPlane) -> None:
        self.d = daemon

    async def handle(self, req: Request, *, console_user: str | None = None) -> Response:
        # The events this request causes record who asked (the socket peer's uid, or the
        # web console's user: daemon/console calls this in-process).
        with acting_as(req.peer_uid, console_user=console_user):
            return await self._route(req)

    async def _route(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        if not parts or parts[0] != "v1":
            return error(404, f"no such route: {req.path}")
        route = parts[1:]
        m = req.method
        match route:
            case ["status"] if m == "GET":
                return await self.status()
            case ["deployments"] if m == "GET":
                return Response(json=await self.list_deployments())
            case ["deployments"] if m == "POST":
                return await self.apply(req)
            case ["deployments", name] if m == "GET":
                return await self.get(name)
            case ["deployments", name] if m == "DELETE":
                return await self.remove(name)
            case ["deployments", name, "history"] if m == "GET":
                return await self.history(name)
            case ["deployments", name, "revisions", rev] if m == "GET":
                return await self.revision(name, rev)
            case ["deployments", name, "rollback"] if m == "POST":
                return await self.rollback(name, req)
            case ["deployments", name, "scale"] if m == "POST":
                return await self.scale(name, req)
            case ["deployments", name, "logs"] if m == "GET":
                return await self.logs(name, req)
            case ["deployments", name, "pull"] if m == "POST":
                return await self.pull(name)
            case ["deployments", name, "metrics"] if m == "GET":
                return await self.metrics(name, req)
            case ["deployments", name, "keys"] if m == "GET":
                return await keys_of(self.d, name)
            case ["deployments", name, "keys"] if m == "POST":
                return await create_key(self.d, name, req)
            case ["deployments", name, "keys", key_id] if m == "DELETE":
                return await remove_key(self.d, name, key_id)
            case ["deployments", name, "replicas", replica, "restart"] if m == "POST":
                return await console_routes.restart_replica(self.d, name, replica)
            case ["console", "users"] if m == "GET":
                return await console_routes.list_users(self.d)
            case ["console", "users", name] if m == "PUT":
                return await console_routes.set_user(self.d, name, req)
            case ["console", "users", name] if m == "DELETE":
                return await console_routes.remove_user(self.d, name)
            case ["events"] if m == "GET":
                return await self.event_list(req)
            case ["gateway"] if m == "GET":
                return Response(json=gateway_status(self.d.gateway))
            case ["secrets"] if m == "GET":
                return await list_secrets(self.d)
            case ["secrets", name] if m == "POST":
                return await create_secret(self.d, name, req)
            case ["secrets", name] if m == "DELETE":
                return await remove_secret(self.d, name)
        return error(
            404 if m in ("GET", "POST", "PUT", "DELETE") else 405, f"no such route: {m} {req.path}"
        )

    # -- helpers ---------------------------------------------------------------------------

    async def _deployment(self, name: str) -> Deployment | None:
        deployment = await self.d.store.call(Store.get_deployment, name)
        if deployment is None or deployment.removed_at is not None:
            return None
        return deployment

    def _snapshot(self, name: str) -> WorkerSnapshot | None:
        worker = self.d.workers.get(name)
        return worker.snapshot() if worker else None

    async def _summary(self, deployment: Deployment) -> dict[str, Any] | None:
        revision = await self.d.store.call(Store.active_revision, deployment.name)
        spec = await self.d.active_spec(deployment.name)
        if revision is None or spec is None:
            return None
        snap = self._snapshot(deployment.name)
        if snap is not None and snap.revision != revision.revision:
            # The worker has not acted on this revision yet: say so, not the old figures.
            snap = dataclasses.replace(snap, status="progressing", updated=0, ready=0, error=None)
        return {
            "name": deployment.name,
            "deployment_id": deployment.deployment_id,
            "revision": revision.revision,
            "spec_id": revision.spec_id,
            "desired": snap.desired if snap else 0,
            "ready": snap.ready if snap else 0,
            "endpoint": endpoint_url(spec),
            "status": snap.status if snap else "progressing",
            "updated": snap.updated if snap else 0,
            "reason": snap.error if snap else None,
            "unloaded_at": snap.unloaded_at if snap else None,  # idle: when it went to zero
            "pinned": deployment.pinned_replicas,
            "image": spec.image,
        }

    # -- routes ----------------------------------------------------------------------------

    async def status(self) -> Response:
        deployments = await self.d.store.call(Store.list_deployments)
        run = self.d.run_marker
        unclean = await self.d.store.call(last_unclean_stop)
        uptime = run.uptime()
        return Response(
            json={
                "version": __version__,
                "podman": self.d.podman_version,
                "gpus": [dataclasses.asdict(g) for g in self.d.gpus.gpus()],
                "gpu_note": self.d.gpus.inventory.describe(),
                "deployments": len(deployments),
                "state_dir": str(self.d.state_dir),
                "socket": str(self.d.settings.socket),
                "instance": self.d.instance,
                "pid": run.pid,
                "started_at": run.start.started_at if run.start else None,
                "uptime_s": None if uptime is None else round(uptime, 1),
                "last_unclean_stop": unclean.to_json() if unclean else None,
                "gateway": gateway_url(self.d.settings.gateway),
            }
        )

    async def list_deployments(self) -> list[dict[str, Any]]:
        out = []
        for deployment in await self.d.store.call(Store.list_deployments):
            summary = await self._summary(deployment)
            if summary is not None:
                out.append(summary)
        return out

    async def apply(self, req: Request) -> Response:
        source = req.query.get("source", "<spec>")
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError:
            return error(400, f"{source}: not UTF-8 text")
        try:
            if req.query.get("dry_run") in ("1", "true"):
                return Response(json=await check_spec_text(self.d, text, source=source))
            result = await apply_spec_text(self.d, text, source=source)
        except ApplyRefused as exc:
            return error(400, str(exc), problems=exc.problems)
        spec = parse_spec(text, source=source)
        warnings, notes = apply_warnings(self.d, spec), apply_notes(spec)
        return Response(json={**dataclasses.asdict(result), "warnings": warnings, "notes": notes})

    async def get(self, name: str) -> Response:
        deployment = await self._deployment(name)
        summary = await self._summary(deployment) if deployment else None
        if deployment is None or summary is None:
            return error(404, f"no deployment named {name!r}")
        revision = await self.d.store.call(Store.active_revision, name)
        snap = self._snapshot(name)
        summary["created_at"] = deployment.created_at
        summary["spec"] = revision.spec_text if revision else ""
        summary["replicas"] = [
            {**dataclasses.asdict(r), "gpus": list(r.gpus)} for r in (snap.replicas if snap else ())
        ]
        summary["endpoint_error"] = snap.endpoint_error if snap else None
        summary["pending"] = snap.pending if snap else 0
        summary["error"] = snap.error if snap else None
        spec = await self.d.active_spec(name)
        startup = spec.health.startup if spec else None
        # How long a replica may take to pass its startup probe (a model's load): seconds.
        summary["startup_budget"] = startup.budget if startup else None
        worker = self.d.workers.get(name)
        pulling = worker.images.status() if worker else None
        summary["pulling"] = pulling.to_json() if pulling else None
        return Response(json=summary)

    async def pull(self, name: str) -> Response:
        """Pull the active spec's image (with its [registry] credentials), followed."""
        spec = await self.d.active_spec(name) if await self._deployment(name) else None
        if spec is None:
            return error(404, f"no deployment named {name!r}")
        try:
            password = None
            if spec.registry is not None and spec.registry.password is not None:
                password = await resolve_secret(
                    self.d.secrets, spec.registry.password, "registry.password"
                )
            auth = await trio.to_thread.run_sync(
                registry_auth, spec.registry, self.d.settings.credentials_roots, password
            )
        except (RegistryCredentialsError, SecretUnavailable) as exc:
            return error(409, f"registry credentials: {exc}")
        images = self.d.ensure_worker(name).images
        send, receive = trio.open_memory_channel[bytes](FOLLOW_BUFFER)
        follow = partial(follow_pull, images, spec.image, auth, send)
        return Response(stream=receive, producer=follow, content_type="application/x-ndjson")

    async def remove(self, name: str) -> Response:
        deployment = await self.d.store.call(Store.mark_removed, name)
        if deployment is None:
            return error(404, f"no deployment named {name!r}")
        await self.d.events.emit("removed", "deployment removed (history kept)", deployment=name)
        await self.d.gateway.sync()  # its models are no longer routed
        worker = self.d.ensure_worker(name)
        # Answer once the replicas are gone (bounded: a stubborn container may take a while).
        with trio.move_on_after(RM_WAIT):
            await worker.finished.wait()
        return Response(
            json={"name": name, "deployment_id": deployment.deployment_id, "removed": True}
        )

    async def history(self, name: str) -> Response:
        revisions = await self.d.store.call(Store.history, name)
        if not revisions:
            return error(404, f"no deployment named {name!r}")
        return Response(
            json=[
                {
                    "revision": r.revision,
                    "spec_id": r.spec_id,
                    "created_at": r.created_at,
                    "active": r.active,
                    "status": r.status,
                    "reason": r.reason,
                }
                for r in revisions
            ]
        )

    async def revision(self, name: str, rev: str) -> Response:
        if not rev.isdigit():
            return error(400, f"revision must be a number (got {rev!r})")
        r = await self.d.store.call(Store.revision, name, int(rev))
        if r is None:
            return error(404, f"{name} has no revision {rev}")
        return Response(
            json={
                "revision": r.revision,
                "spec_id": r.spec_id,
                "created_at": r.created_at,
                "active": r.active,
                "status": r.status,
                "reason": r.reason,
                "spec": r.spec_text,
            }
        )

    async def rollback(self, name: str, req: Request) -> Response:
        body = _json_body(req)
        history = await self.d.store.call(Store.history, name)
        if not history:
            return error(404, f"no deployment named {name!r}")
        target = body.get("to") if isinstance(body, dict) else None
        if target is None:
            active = [r for r in history if r.active]
            older = [
                r
                for r in history
                if active and r.revision < active[0].revision and r.spec_id != active[0].spec_id
            ]
            if not older:
                return error(409, f"{name} has no earlier, different revision to roll back to")
            chosen = older[-1]
        else:
            found = [r for r in history if r.revision == target]
            if not found:
                return error(404, f"{name} has no revision {target}")
            chosen = found[0]
        try:
            result = await apply_spec_text(
                self.d, chosen.spec_text, source=f"{name} revision {chosen.revision}"
            )
        except ApplyRefused as exc:
            return error(409, str(exc), problems=exc.problems)
        return Response(json={**dataclasses.asdict(result), "from_revision": chosen.revision})

    async def scale(self, name: str, req: Request) -> Response:
        body = _json_body(req)
        if await self._deployment(name) is None:
            return error(404, f"no deployment named {name!r}")
        count = body.get("replicas") if isinstance(body, dict) else None
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 100
        ):
            return error(400, f"replicas: must be an integer 0..100 (got {count!r})")
        await self.d.store.call(Store.set_pinned_replicas, name, count)
        what = f"pinned at {count} replicas" if count is not None else "handed back to autoscaling"
        await self.d.events.emit("scaled", what, deployment=name)
        self.d.ensure_worker(name)
        return Response(json={"name": name, "pinned": count})

    async def logs(self, name: str, req: Request) -> Response:
        tail_text = req.query.get("tail")
        if tail_text is not None and not tail_text.isdigit():
            return error(400, f"tail must be a number (got {tail_text!r})")
        tail = int(tail_text) if tail_text is not None else None
        labels = {LABEL_INSTANCE: self.d.instance, LABEL_DEPLOYMENT: name}
        try:
            containers = await self.d.runtime.list(labels)
        except RuntimeFailure as exc:
            return error(503, f"podman: {exc}")
        replica = req.query.get("replica")
        if replica:
            containers = [c for c in containers if c.labels.get("io.berth.replica") == replica]
            if not containers:
                return error(404, f"{name} has no replica {replica!r}")
        if not containers:
            if await self._deployment(name) is None:
                return error(404, f"no deployment named {name!r}")
            return Response(text="", content_type="text/plain; charset=utf-8")
        if req.query.get("follow") in ("1", "true"):
            # The server runs the producer beside the response and ends it with the response.
            send, receive = trio.open_memory_channel[bytes](FOLLOW_BUFFER)
            follow = partial(
                follow_replica_logs,
                self.d.runtime,
                containers,
                send,
                tail=tail,
                labels=None if replica else labels,
            )
            return Response(
                stream=receive, producer=follow, content_type="text/plain; charset=utf-8"
            )
        try:
            data = await replica_logs(self.d.runtime, containers, tail=tail)
        except RuntimeFailure as exc:
            return error(503, f"podman: {exc}")
        return Response(
            text=data.decode("utf-8", "replace"), content_type="text/plain; charset=utf-8"
        )

    async def metrics(self, name: str, req: Request) -> Response:
        if await self._deployment(name) is None:
            return error(404, f"no deployment named {name!r}")
        since_text = req.query.get("since") or "1h"
        try:
            since = parse_duration(since_text)
        except ValueError as exc:
            return error(400, f"since: {exc} (got {since_text!r})")
        body = await self.d.metrics.deployment_metrics(name, since)
        if (auth := auth_metrics(self.d, name)) is not None:
            body["auth"] = auth  # a protected endpoint's requests per credential, and 401s
        if (traffic := traffic_metrics(self.d, name)) is not None:
            body["traffic"] = traffic  # the queue and the ejected replicas
        return Response(json=body)

    async def event_list(self, req: Request) -> Response:
        deployment = req.query.get("deployment") or None
        limit_text = req.query.get("limit", "100")
        if not limit_text.isdigit():
            return error(400, f"limit must be a number (got {limit_text!r})")
        events = await self.d.store.call(Store.events, deployment=deployment, limit=int(limit_text))
        if req.query.get("follow") not in ("1", "true"):
            body = "".join(json.dumps(event_json(e)) + "\n" for e in events)
            return Response(text=body, content_type="application/x-ndjson")
        return Response(
            stream=self._follow_events(deployment, events), content_type="application/x-ndjson"
        )

    async def _follow_events(
        self, deployment: str | None, first: list[Event]
    ) -> AsyncIterator[bytes]:
        last = 0
        for e in first:
            last = e.id
            yield (json.dumps(event_json(e)) + "\n").encode()
        if not first:
            recent = await self.d.store.call(Store.events, limit=1)
            last = recent[-1].id if recent else 0
        while True:
            with trio.move_on_after(1.0):
                await self.d.events.wait_changed()
            for e in await self.d.store.call(Store.events, deployment=deployment, after_id=last):
                last = e.id
                yield (json.dumps(event_json(e)) + "\n").encode()


def _json_body(req: Request) -> object:
    if not req.body:
        return {}
    try:
        return json.loads(req.body)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested past the limit
        return {}
