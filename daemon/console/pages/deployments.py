"""The deployments page: `berth ls`'s table (status, ready/desired, revision, endpoint),
with each endpoint's requests/s (the sampler's last interval) and p95 latency (the proxy's
window), kept current by console.js: it re-fetches `/console/fragment/deployments` on each
`change` from /console/stream, with no timer of its own; the stream's `tick` after 20 s of
quiet is such a change, so the request figures are at most ~20 s old."""

from __future__ import annotations

from typing import Any

from daemon.console.html import h, layout
from daemon.console.request import AdminError, ConsoleRequest

COLUMNS = ("Name", "Status", "Ready", "Revision", "Endpoint", "Requests/s", "p95")


async def render(request: ConsoleRequest) -> str:
    rows = await table_rows(request)
    head = "".join(f"<th>{h(c)}</th>" for c in COLUMNS)
    body = (
        '<p class="actions"><a class="button" href="/console/apply" data-testid="action-apply">'
        "Apply a spec</a></p>"
        f'<table data-testid="deployments-table" class="grid"><thead><tr>{head}</tr></thead>'
        f'<tbody data-fragment="/console/fragment/deployments">{rows}</tbody></table>'
    )
    return layout("Deployments", body, request=request)


async def fragment(request: ConsoleRequest) -> str:
    if request.route.get("part") != "deployments":
        return ""
    return await table_rows(request)


async def table_rows(request: ConsoleRequest) -> str:
    deployments: list[dict[str, Any]] = await request.admin.get("/v1/deployments")
    if not deployments:
        return f'<tr><td colspan="{len(COLUMNS)}" class="empty">No deployments yet.</td></tr>'
    out = []
    for d in deployments:
        rps, p95 = await _request_figures(request, d["name"])
        name = d["name"]
        status = str(d.get("status") or "")
        pinned = d.get("pinned")
        ready = f"{d.get('ready', 0)}/{d.get('desired', 0)}" + (
            " (pinned)" if pinned is not None else ""
        )
        out.append(
            f'<tr data-testid="deployment-row-{h(name)}">'
            f'<td><a href="/console/d/{h(name)}">{h(name)}</a></td>'
            f'<td><span class="status status-{h(status)}" data-testid="status">'
            f"{h(status)}</span></td>"
            f'<td data-testid="ready">{h(ready)}</td>'
            f'<td data-testid="revision">{h(d.get("revision"))}</td>'
            f"<td><code>{h(d.get('endpoint'))}</code></td>"
            f'<td data-testid="rps">{h(rps)}</td><td data-testid="p95">{h(p95)}</td></tr>'
        )
    return "".join(out)


async def _request_figures(request: ConsoleRequest, name: str) -> tuple[str, str]:
    """Requests/s (the sampler's last interval) and p95 (the proxy's window), as `berth
    metrics` prints them; "-" when there is nothing yet."""
    try:
        m = await request.admin.get(f"/v1/deployments/{name}/metrics", since="1m")
    except AdminError:
        return "-", "-"
    rps = m.get("requests_per_s")
    latency = m.get("latency")
    p95 = latency.get("p95") if isinstance(latency, dict) else None
    rps_text = "-" if not isinstance(rps, int | float) else f"{rps:.1f}"
    p95_text = "-" if not isinstance(p95, int | float) else f"{p95 * 1000:.0f} ms"
    return rps_text, p95_text
