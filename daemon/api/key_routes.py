"""The admin API's endpoint keys (`berth keys`): `POST /v1/deployments/NAME/keys`,
`GET /v1/deployments/NAME/keys`, `DELETE /v1/deployments/NAME/keys/ID`.

A key is made here (`daemon.reconcile.endpoint_auth.new_key`), answered once in the
create's answer and never again: the store keeps its SHA-256 only. A create or a revoke
reaches the deployment's running endpoint before the answer returns
(`EndpointManager.refresh_credentials`), with no rebind: the next request on every open
connection is judged by the new set. Keys are credentials, not a switch: only a spec with
`[endpoint.auth]` (an empty table will do) is protected, so a create for a deployment
without one is refused (409) rather than silently ignored, and a revoke never opens an
endpoint. Events name the key's id, never the key.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from daemon.api.control_plane import ControlPlane
from daemon.api.replies import error
from daemon.http.server import Request, Response
from daemon.reconcile.endpoint_auth import new_key
from daemon.store.database import Store, UnknownDeployment
from daemon.store.keys import add_key, list_keys, revoke_key

KEY_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_KEYS: Final = 100  # per deployment


async def _live(daemon: ControlPlane, name: str) -> bool:
    deployment = await daemon.store.call(Store.get_deployment, name)
    return deployment is not None and deployment.removed_at is None


async def create_key(daemon: ControlPlane, name: str, req: Request) -> Response:
    try:
        body: Any = json.loads(req.body or b"{}")
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's limit
        return error(400, "the body must be JSON")
    label = body.get("name", "") if isinstance(body, dict) else None
    if label is None or not isinstance(label, str) or (label and not KEY_NAME.fullmatch(label)):
        return error(400, f'name: 1-63 characters of A-Z, a-z, 0-9, ".", "_", "-" (got {label!r})')
    if not await _live(daemon, name):
        return error(404, f"no deployment named {name!r}")
    spec = await daemon.active_spec(name)
    if spec is not None and spec.endpoint.auth is None:
        return error(
            409,
            f"{name}'s spec has no [endpoint.auth], so its endpoint asks for no key: add the "
            "table (empty is enough) and apply, then create keys",
        )
    if len(await daemon.store.call(list_keys, name)) >= MAX_KEYS:
        return error(409, f"{name} has {MAX_KEYS} keys already: revoke one first")
    made = new_key()
    try:
        key = await daemon.store.call(add_key, name, made.key_id, label, made.key_hash)
    except UnknownDeployment:
        return error(404, f"no deployment named {name!r}")
    await daemon.endpoints.refresh_credentials(name)
    shown = f" ({label})" if label else ""
    await daemon.events.emit("key-created", f"endpoint key {key.key_id}{shown}", deployment=name)
    return Response(status=201, json={**key.to_json(), "deployment": name, "key": made.key})


async def keys_of(daemon: ControlPlane, name: str) -> Response:
    if not await _live(daemon, name):
        return error(404, f"no deployment named {name!r}")
    keys = await daemon.store.call(list_keys, name)
    endpoint = daemon.endpoints.get(name)
    counts = dict(endpoint.statistics().by_credential or ()) if endpoint else {}
    return Response(
        json=[{**k.to_json(), "requests": counts.get(f"key:{k.key_id}", 0)} for k in keys]
    )


async def remove_key(daemon: ControlPlane, name: str, key_id: str) -> Response:
    if not await _live(daemon, name):
        return error(404, f"no deployment named {name!r}")
    key = await daemon.store.call(revoke_key, name, key_id)
    if key is None:
        return error(404, f"{name} has no key {key_id!r} (berth keys ls {name})")
    await daemon.endpoints.refresh_credentials(name)
    await daemon.events.emit("key-revoked", f"endpoint key {key.key_id}", deployment=name)
    return Response(json={**key.to_json(), "deployment": name, "revoked": True})


def auth_metrics(daemon: ControlPlane, name: str) -> dict[str, object] | None:
    """A protected endpoint's counters for `GET .../metrics` ("auth"); None when open."""
    endpoint = daemon.endpoints.get(name)
    stats = endpoint.statistics() if endpoint else None
    if stats is None or stats.by_credential is None:
        return None
    return {"requests_by_credential": dict(stats.by_credential), "unauthorized": stats.unauthorized}
