"""The events page (a stub until its module is written)."""

from __future__ import annotations

from daemon.console.html import layout
from daemon.console.request import ConsoleRequest


async def render(request: ConsoleRequest) -> str:
    return layout("Events", "<p>Not written yet.</p>", request=request)
