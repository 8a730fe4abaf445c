"""`GET /console/stream`: server-sent events telling the open pages what changed.

Each event berthd records (`daemon.store.events.EventLog`: an apply, a scale, a replica
started, ready, unhealthy, restarted, removed ...) becomes

    event: change
    data: {"kind": "<the event's kind>", "deployment": "<its deployment or null>"}

and the page's script re-fetches the fragments it shows (static/console.js). Invariants:
- Nothing runs for the console while no browser holds a stream: each stream is one
  generator in its own connection, woken by the event log's `wait_changed` (no polling of
  Podman or of the store on a timer), reading the store only after something changed.
- No event is missed between two waits: each read takes the events after the last id sent.
- After `KEEPALIVE` seconds of quiet it sends a `tick` change (`{"kind": "tick",
  "deployment": null}`): it keeps proxies and the browser from dropping the connection, and
  the page re-fetches its fragments, so figures that change with no event (requests/s, p95,
  a GPU's memory) stay current on a page left open, at one fragment fetch per 20 s. The
  stream ends when the session does (signed out or expired), checked at each wake-up.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from daemon.api.control_plane import ControlPlane
from daemon.console.sessions import Session
from daemon.http.server import Response
from daemon.store.database import Store

KEEPALIVE = 20.0
RETRY_MS = 3000
MAX_BATCH = 500  # events read per wake-up; the rest on the next


def change_message(kind: str, deployment: str | None) -> bytes:
    data = json.dumps({"kind": kind, "deployment": deployment})
    return f"event: change\ndata: {data}\n\n".encode()


def event_stream(
    daemon: ControlPlane,
    session: Callable[[], Awaitable[Session | None]],
    *,
    keepalive: float = KEEPALIVE,
) -> Response:
    return Response(
        stream=_changes(daemon, session, keepalive),
        content_type="text/event-stream; charset=utf-8",
        headers=(("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")),
    )


async def _changes(
    daemon: ControlPlane, session: Callable[[], Awaitable[Session | None]], keepalive: float
) -> AsyncIterator[bytes]:
    recent = await daemon.store.call(Store.events, limit=1)
    last = recent[-1].id if recent else 0
    yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
    while True:
        with trio.move_on_after(keepalive) as quiet:
            await daemon.events.wait_changed()
        if await session() is None:
            return
        if quiet.cancelled_caught:
            yield change_message("tick", None)
            continue
        for event in await daemon.store.call(Store.events, after_id=last, limit=MAX_BATCH):
            last = max(last, event.id)
            yield change_message(event.kind, event.deployment)
