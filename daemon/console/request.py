"""What a console page renders from: `ConsoleRequest`, and `AdminAccess`, the admin API's
own handlers called in-process.

A page asks berthd through `request.admin` exactly what `berth` asks over the Unix socket
(`await request.admin.get("/v1/deployments")`), so the console shows and does nothing the
CLI could not; each call runs `AdminApi.handle` with `console_user` set, so the events an
action records end with "(by console user NAME)" (`daemon.store.events.acting_as`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from daemon.api.control_plane import ControlPlane
from daemon.api.routes import AdminApi
from daemon.http.server import Request, Response


class AdminError(Exception):
    """The admin API refused a call: its status, its message and its problems by field."""

    def __init__(self, status: int, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems


class AdminAccess:
    """The admin API's handlers for one console user (module docstring)."""

    def __init__(self, api: AdminApi, user: str) -> None:
        self._api = api
        self.user = user

    async def raw(
        self, method: str, path: str, *, body: bytes = b"", query: Mapping[str, str] | None = None
    ) -> Response:
        """The handler's own `Response` (a stream stays a stream: logs -f, events -f)."""
        target = urlsplit(path)
        params = dict(parse_qsl(target.query, keep_blank_values=True))
        params.update(query or {})
        request = Request(
            method=method,
            path=target.path,
            query=MappingProxyType(params),
            headers=MappingProxyType({"content-type": "application/json"}),
            body=body,
        )
        return await self._api.handle(request, console_user=self.user)

    async def call(
        self,
        method: str,
        path: str,
        json_body: object = None,
        *,
        body: bytes | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Any:
        """The parsed answer (JSON; NDJSON as a list; text as str); AdminError on >= 400."""
        data = (
            body
            if body is not None
            else b""
            if json_body is None
            else json.dumps(json_body).encode()
        )
        response = await self.raw(method, path, body=data, query=query)
        value = _parsed(response)
        if response.status >= 400:
            message = value.get("error", "") if isinstance(value, dict) else str(value)
            problems = value.get("problems") if isinstance(value, dict) else None
            raise AdminError(response.status, str(message), list(problems or []))
        return value

    async def get(self, path: str, **query: str) -> Any:
        return await self.call("GET", path, query=query)

    async def post(
        self, path: str, json: object = None, *, body: bytes | None = None, **query: str
    ) -> Any:
        return await self.call("POST", path, json, body=body, query=query)

    async def delete(self, path: str) -> Any:
        return await self.call("DELETE", path)


def _parsed(response: Response) -> Any:
    if response.json is not None:
        return response.json
    if response.text is not None:
        if response.content_type == "application/x-ndjson":
            return [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return response.text
    if response.body is not None:
        return response.body.decode("utf-8", "replace")
    return None


@dataclass(frozen=True)
class ConsoleRequest:
    """One signed-in request to the console, as a page sees it."""

    method: str
    path: str
    query: Mapping[str, str]
    # The POSTed form's fields (urlencoded or multipart; an uploaded file's text by its
    # field name); empty for a GET.
    form: Mapping[str, str]
    user: str
    csrf: str
    admin: AdminAccess
    # berthd's parts, for what the admin API does not answer (the metrics' rollups).
    daemon: ControlPlane
    headers: Mapping[str, str] = field(default_factory=dict)
    # The path's parts the router matched: {"name": ...} under /console/d/{name}, and
    # {"part": ...} for a fragment, {"action": ...} for an action.
    route: Mapping[str, str] = field(default_factory=dict)
