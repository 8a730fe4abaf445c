"""The events page: every event of the box, newest first, filterable by deployment, kind
and level (a GET form: `?deployment=web&kind=died&level=warning&limit=100`).

The store keeps no level with an event (berthd logs it at one, `daemon.store.events.emit`),
so the level here is the one berthd emits each kind at (`LEVELS`; an unknown kind is
"info"). The admin API filters by deployment; kind and level are applied here, to the
newest `SCAN` events of that deployment (or of the box), and at most `limit` (<= `MAX_LIMIT`)
are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from daemon.console.html import h, layout
from daemon.console.pages.cells import Cell, link, not_found, table, when
from daemon.console.request import AdminError, ConsoleRequest
from daemon.http.server import Response

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
SCAN = 2000
LEVEL_NAMES = ("info", "warning", "error")
# The kinds berthd emits above info (grep `level=logging.` under daemon/).
LEVELS: dict[str, str] = {
    "apply-refused": "error",
    "create-failed": "error",
    "endpoint-failed": "error",
    "remove-failed": "error",
    "rollout-failed": "error",
    "rolled-back": "error",
    "tls-reload-failed": "error",
    "worker-crashed": "error",
    "died": "warning",
    "observe-failed": "warning",
    "pending": "warning",
    "pull-failed": "warning",
    "replaced": "warning",
    "settings-need-restart": "warning",
}


def level_of(kind: str) -> str:
    return LEVELS.get(kind, "info")


def event_rows(
    events: Sequence[dict[str, Any]], *, with_deployment: bool = True
) -> tuple[list[str], list[tuple[str, list[Cell]]]]:
    """The events table's headers and rows (as given: pass them newest first)."""
    headers = ["Time", "Level", *(["Deployment"] if with_deployment else []), "Replica",
               "Kind", "Message"]  # fmt: skip
    rows: list[tuple[str, list[Cell]]] = []
    for e in events:
        kind = str(e.get("kind", ""))
        name = e.get("deployment")
        cells: list[Cell] = [when(e.get("time")), level_of(kind)]
        if with_deployment:
            cells.append(link(f"/console/d/{quote(str(name), safe='')}", name) if name else None)
        cells += [e.get("replica"), kind, e.get("message")]
        rows.append(("event-row", cells))
    return headers, rows


def filtered(
    events: Sequence[dict[str, Any]], *, kind: str, level: str, limit: int
) -> list[dict[str, Any]]:
    """Newest first, those of `kind` and `level` (empty: any), at most `limit`."""
    out = []
    for e in reversed(events):
        k = str(e.get("kind", ""))
        if (kind and k != kind) or (level and level_of(k) != level):
            continue
        out.append(e)
        if len(out) >= limit:
            break
    return out


def _limit(text: str | None) -> int:
    if not text or not text.isdigit():
        return DEFAULT_LIMIT
    return max(1, min(int(text), MAX_LIMIT))


def _select(name: str, options: Sequence[str], chosen: str, any_label: str) -> str:
    opts = [f'<option value=""{" selected" if not chosen else ""}>{h(any_label)}</option>']
    for o in options:
        selected = " selected" if o == chosen else ""
        opts.append(f'<option value="{h(o)}"{selected}>{h(o)}</option>')
    return (
        f'<select name="{h(name)}" data-testid="events-filter-{h(name)}">{"".join(opts)}</select>'
    )


async def events_part(request: ConsoleRequest) -> tuple[str, str]:
    """(the filter form, the table) for the request's query."""
    q = request.query
    deployment, kind, level = q.get("deployment", ""), q.get("kind", ""), q.get("level", "")
    limit = _limit(q.get("limit"))
    if level not in LEVEL_NAMES:
        level = ""
    query = {"limit": str(SCAN if kind or level else limit)}
    if deployment:
        query["deployment"] = deployment
    error = ""
    try:
        found: list[dict[str, Any]] = await request.admin.get("/v1/events", **query)
    except AdminError as exc:
        found, error = [], f'<p class="error">{h(exc.message)}</p>'
    names = sorted({str(d["name"]) for d in await request.admin.get("/v1/deployments")})
    if deployment and deployment not in names:
        names.append(deployment)
    kinds = sorted({*LEVELS, *(str(e.get("kind", "")) for e in found)} - {""})
    if kind and kind not in kinds:
        kinds.append(kind)
    shown = filtered(found, kind=kind, level=level, limit=limit)
    form = (
        '<form method="get" action="/console/events" class="filters" data-testid="events-filter">'
        f"<label>Deployment {_select('deployment', names, deployment, 'all')}</label>"
        f"<label>Kind {_select('kind', kinds, kind, 'any')}</label>"
        f"<label>Level {_select('level', LEVEL_NAMES, level, 'any')}</label>"
        f'<label>Show <input type="number" name="limit" min="1" max="{MAX_LIMIT}" '
        f'value="{limit}"></label><button type="submit">Filter</button></form>'
    )
    count = f'<p class="note">{len(shown)} event(s), newest first (at most {limit}).</p>'
    return form, error + count + table("events-table", *event_rows(shown), empty="no events")


async def render(request: ConsoleRequest) -> str:
    form, body = await events_part(request)
    src = "/console/events/fragment/events"
    if request.query:
        src += "?" + urlencode(dict(request.query))
    return layout(
        "Events",
        f'{form}<div data-fragment="{h(src)}">{body}</div>',
        request=request,
        styles=("pages.css",),
    )


async def fragment(request: ConsoleRequest) -> str | Response:
    if request.route.get("part") != "events":
        return not_found(request)
    return (await events_part(request))[1]
