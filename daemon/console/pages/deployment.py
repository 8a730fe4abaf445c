"""One deployment's page (a stub until its module is written)."""

from __future__ import annotations

from daemon.console.html import h, layout
from daemon.console.request import ConsoleRequest


async def render(request: ConsoleRequest) -> str:
    name = request.route["name"]
    return layout(name, f"<p>{h(name)}: not written yet.</p>", request=request)
