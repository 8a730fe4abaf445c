"""The web console's admin routes (docs/admin-api.md): its users (`berth console user`),
and the restart of one replica (the console's "restart" action; `POST .../restart`).

    GET    /v1/console/users              [{name, created_at}]
    PUT    /v1/console/users/NAME         {"password": "..."} -> {name, created_at, created}
    DELETE /v1/console/users/NAME         {name, removed: true}; 404 when there is none
    POST   /v1/deployments/NAME/replicas/ID/restart   {name, replica, restarting: true}

A user name is 1-64 of `A-Za-z0-9._@-`, starting with a letter or digit; a password is 1 to
1024 characters, hashed here (salted scrypt, in a thread) and never stored, logged or
answered. Adding, changing and removing a user are events (`console-user`), as is asking
for a restart (`restart-asked`: the worker's own `restarted` follows).
"""

from __future__ import annotations

import json
import re

import trio

from daemon.api.control_plane import ControlPlane
from daemon.api.replies import error
from daemon.http.server import Request, Response
from daemon.secrets.passwords import hash_password
from daemon.store.console_users import list_console_users, remove_console_user, set_console_user

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MAX_PASSWORD = 1024


async def list_users(d: ControlPlane) -> Response:
    users = await d.store.call(list_console_users)
    return Response(json=[u.to_json() for u in users])


async def set_user(d: ControlPlane, name: str, req: Request) -> Response:
    if not USER_NAME.fullmatch(name):
        return error(
            400, f"name: 1-64 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit ({name!r})"
        )
    try:
        body = json.loads(req.body or b"{}")
    except (ValueError, RecursionError):
        return error(400, 'the body must be JSON: {"password": "..."}')
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(password, str) or not password:
        return error(400, "password: must not be empty")
    if len(password) > MAX_PASSWORD:
        return error(400, f"password: at most {MAX_PASSWORD} characters")
    hashed = await trio.to_thread.run_sync(hash_password, password)
    user, created = await d.store.call(set_console_user, name, hashed)
    what = "added" if created else "given a new password (signed out everywhere)"
    await d.events.emit("console-user", f"console user {name} {what}")
    return Response(json={**user.to_json(), "created": created})


async def remove_user(d: ControlPlane, name: str) -> Response:
    if not await d.store.call(remove_console_user, name):
        return error(404, f"no console user named {name!r}")
    await d.events.emit("console-user", f"console user {name} removed (signed out)")
    return Response(json={"name": name, "removed": True})


async def restart_replica(d: ControlPlane, name: str, replica: str) -> Response:
    worker = d.workers.get(name)
    if worker is None or await d.active_spec(name) is None:
        return error(404, f"no deployment named {name!r}")
    if not worker.restart_replica(replica, "was asked to restart"):
        return error(409, f"{name} has no running replica {replica!r} to restart")
    await d.events.emit(
        "restart-asked", f"replica {replica} restart asked", deployment=name, replica=replica
    )
    return Response(json={"name": name, "replica": replica, "restarting": True})
