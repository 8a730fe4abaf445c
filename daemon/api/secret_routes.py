"""The admin API's secrets: `POST /v1/secrets/NAME` (the body is the value), `GET
/v1/secrets` (names, times, fingerprints; never a value), `DELETE /v1/secrets/NAME`.

A value only ever goes in: no route answers one, and no event, log line or error holds one
(events say the name and the fingerprint). A new value for a secret that deployments'
environments use rolls them: each gets a new revision of the same spec whose reason is
"secret NAME changed" (history and events say so), and its replicas are replaced because
their template id folds in the secret's fingerprint (`daemon.secrets.references`). Other
uses (`[endpoint.auth]`) only nudge their worker. Create and remove hold the apply lock,
so an apply cannot slip a new use of a secret between the check and the removal.
"""

from __future__ import annotations

from typing import Any

from daemon.api.control_plane import ControlPlane
from daemon.api.replies import error
from daemon.http.server import Request, Response
from daemon.secrets.references import env_secret_names, referenced_names
from daemon.secrets.store import NoSuchSecret, SecretChange, SecretError, SecretRefused
from daemon.store.database import Store


async def users_of(daemon: ControlPlane, name: str) -> tuple[list[str], list[str]]:
    """(deployments whose active spec names the secret anywhere, those whose replicas'
    environment holds it), each sorted by name."""
    users, env_users = [], []
    for deployment in await daemon.store.call(Store.list_deployments):
        spec = await daemon.active_spec(deployment.name)
        if spec is None or name not in referenced_names(spec):
            continue
        users.append(deployment.name)
        if name in env_secret_names(spec):
            env_users.append(deployment.name)
    return users, env_users


async def list_secrets(daemon: ControlPlane) -> Response:
    return Response(json=[info.to_json() for info in daemon.secrets.names()])


async def create_secret(daemon: ControlPlane, name: str, req: Request) -> Response:
    async with daemon.apply_lock:
        try:
            change = await daemon.secrets.create(name, req.body)
        except SecretRefused as exc:
            return error(400, f"secret {name}: {exc}")
        except SecretError as exc:
            return error(500, f"secret {name}: {exc}")
        users, env_users = await users_of(daemon, name)
        rolled = await _roll(daemon, change, env_users) if change.outcome == "updated" else []
    info = change.info
    if change.outcome != "unchanged":
        await daemon.events.emit(
            f"secret-{change.outcome}",
            f"secret {name} {change.outcome} (fingerprint {info.fingerprint}, {info.size} bytes)"
            + (f"; used by {', '.join(users)}" if users else ""),
        )
    for deployment in users:  # a create that waited for this secret may go on now
        daemon.ensure_worker(deployment)
    return Response(
        json={**info.to_json(), "outcome": change.outcome, "used_by": users, "rolled": rolled}
    )


async def _roll(daemon: ControlPlane, change: SecretChange, deployments: list[str]) -> list[Any]:
    """A new revision (the same spec) for each deployment whose replicas hold the secret."""
    why = f"secret {change.info.name} changed"
    rolled = []
    for name in deployments:
        revision = await daemon.store.call(Store.active_revision, name)
        if revision is None:
            continue
        result = await daemon.store.call(
            Store.apply,
            name,
            revision.spec_id,
            revision.spec_text,
            revision.spec_json,
            because=why,
        )
        await daemon.events.emit(
            "applied",
            f"revision {result.revision} ({why}, spec {result.spec_id}): replacing its replicas",
            deployment=name,
        )
        rolled.append({"name": name, "revision": result.revision})
    return rolled


async def remove_secret(daemon: ControlPlane, name: str) -> Response:
    async with daemon.apply_lock:
        if daemon.secrets.info(name) is None:
            return error(404, f'no such secret "{name}"')
        users, _ = await users_of(daemon, name)
        if users:
            return error(
                409,
                f'secret "{name}" is used by the active spec of {", ".join(users)}: '
                "apply specs without it first",
                used_by=users,
            )
        try:
            info = await daemon.secrets.remove(name)
        except NoSuchSecret:
            return error(404, f'no such secret "{name}"')
        except SecretError as exc:
            return error(500, f"secret {name}: {exc}")
    await daemon.events.emit("secret-removed", f"secret {name} removed")
    return Response(json={"name": info.name, "removed": True})
