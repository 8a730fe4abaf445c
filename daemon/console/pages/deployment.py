"""One deployment's page (`/console/d/NAME`): its summary and actions, replicas (state,
health verdict and last probe, restarts, last exit, GPU), charts of the last hour or day,
the active spec in canonical TOML, its revisions with a diff between any two
(`?from=A&to=B`), its events and a live log tail.

What the router calls here: `render` (the page), `fragment` (`/fragment/PART`, one of
`deployment_parts.PARTS`, re-fetched by deployment.js on a `change` of this deployment),
`data` (`/data/series?window=1h|1d`: the charts' JSON, `daemon.console.series`, from
the store's per-minute rollups) and
`logs` (`/logs`: the log tail's server-sent events, `log_tail`).
"""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from daemon.console.html import h, layout
from daemon.console.pages import deployment_parts as parts
from daemon.console.pages.cells import not_found
from daemon.console.pages.log_tail import logs
from daemon.console.request import AdminError, ConsoleRequest
from daemon.console.series import CHARTS, WINDOWS, WindowError, grid, shape, window_named
from daemon.console.toml_text import canonical_toml
from daemon.http.server import Response
from daemon.store.database import Store

__all__ = ["data", "fragment", "logs", "render"]

SCRIPTS = ("vendor/uplot/uPlot.iife.min.js", "charts.js", "deployment.js")
STYLES = ("vendor/uplot/uPlot.min.css", "pages.css")
DIFF_CONTEXT = 3


def _missing(name: str, exc: AdminError) -> Response:
    return Response(status=exc.status, text=f"{exc.message}\n",
                    content_type="text/plain; charset=utf-8")  # fmt: skip


def section(title: str, body: str, *, part: str = "", name: str = "", anchor: str = "") -> str:
    """A titled section; with `part`, its body is that live fragment of deployment `name`."""
    ident = f' id="{h(anchor)}"' if anchor else ""
    if part:
        src = f"{parts.base(name)}/fragment/{part}"
        body = f'<div data-fragment="{h(src)}" data-deployment="{h(name)}">{body}</div>'
    return f"<section{ident}><h2>{h(title)}</h2>{body}</section>"


def charts_html(name: str, window: str) -> str:
    src = f"{parts.base(name)}/data/series?{urlencode({'window': window})}"
    here = ' class="here"'
    toggle = " ".join(
        f'<a href="{h(parts.base(name))}?window={h(w)}#charts"'
        f'{here if w == window else ""} data-testid="window-{h(w)}">{h(w)}</a>'
        for w in WINDOWS
    )
    roots = "".join(
        f'<figure class="chart"><figcaption>{h(c.title)}</figcaption>'
        f'<div class="chart-root" data-testid="chart-{h(c.id)}" data-metric="{h(c.id)}"></div>'
        "</figure>"
        for c in CHARTS
    )
    return (
        f'<p class="windows">Window: {toggle}</p>'
        f'<div class="charts" data-series-src="{h(src)}">{roots}</div>'
    )


def diff_html(name: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    """A unified diff of two revisions' canonical specs, each line classed for colour."""
    ra, rb = a.get("revision"), b.get("revision")
    old = canonical_toml(str(a.get("spec", "")), source=f"{name} revision {ra}")
    new = canonical_toml(str(b.get("spec", "")), source=f"{name} revision {rb}")
    lines = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), f"revision {ra}", f"revision {rb}",
            n=DIFF_CONTEXT, lineterm="",
        )
    )  # fmt: skip
    if not lines:
        same = f"Revisions {ra} and {rb} mean the same spec."
        return f'<p class="note" data-testid="spec-diff">{h(same)}</p>'
    out = []
    for line in lines:
        cls = _line_class(line)
        out.append(f'<span class="{cls}">{h(line)}</span>')
    # Each line is a block span: no newline between them (a pre would show it twice).
    return f'<pre class="diff" data-testid="spec-diff">{"".join(out)}</pre>'


def _line_class(line: str) -> str:
    if line.startswith("@@"):
        return "hunk"
    if line[:3] in ("---", "+++"):
        return "file"
    return {"+": "add", "-": "del"}.get(line[:1], "same")


async def _diff_section(request: ConsoleRequest, name: str) -> str:
    a, b = request.query.get("from", ""), request.query.get("to", "")
    if not (a and b):
        return ""
    q = quote(name, safe="")
    try:
        ra = await request.admin.get(f"/v1/deployments/{q}/revisions/{quote(a, safe='')}")
        rb = await request.admin.get(f"/v1/deployments/{q}/revisions/{quote(b, safe='')}")
    except AdminError as exc:
        body = f'<p class="error" data-testid="spec-diff">{h(exc.message)}</p>'
    else:
        body = diff_html(name, ra, rb)
    return section(f"Diff: revision {a} → {b}", body, anchor="diff")


async def render(request: ConsoleRequest) -> str | Response:
    name = request.route["name"]
    try:
        d = await parts.deployment_json(request, name)
    except AdminError as exc:
        return _missing(name, exc)
    q = quote(name, safe="")
    history = await request.admin.get(f"/v1/deployments/{q}/history")
    found = await request.admin.get("/v1/events", deployment=name, limit=str(parts.EVENTS_SHOWN))
    window = request.query.get("window", "")
    window = window if window in WINDOWS else "1h"
    spec = canonical_toml(str(d.get("spec", "")), source=name)
    body = "".join(
        (
            section("Summary", parts.summary_html(d), part="summary", name=name),
            section("Replicas", parts.replicas_html(d), part="replicas", name=name),
            section("Charts", charts_html(name, window), anchor="charts"),
            await _diff_section(request, name),
            section("Revisions", parts.revisions_html(name, history), part="revisions", name=name),
            section("Events", parts.events_html(list(reversed(found))), part="events", name=name),
            section(
                "Log tail",
                f'<pre class="log-tail" data-testid="log-tail" '
                f'data-log-src="{h(parts.base(name))}/logs" data-deployment="{h(name)}"></pre>',
            ),
            section(
                f"Active spec (revision {d.get('revision')}, canonical)",
                f'<pre class="spec" data-testid="active-spec">{h(spec)}</pre>',
            ),
        )
    )
    return layout(name, body, request=request, scripts=SCRIPTS, styles=STYLES)


async def fragment(request: ConsoleRequest) -> str | Response:
    name, part = request.route["name"], request.route.get("part", "")
    try:
        html = await parts.part_html(request, name, part)
    except AdminError as exc:
        return _missing(name, exc)
    return not_found(request) if html is None else html


async def data(request: ConsoleRequest) -> Response:
    """The charts' JSON, from the store's rollups directly: the metrics route would copy
    every row into a dict (`dataclasses.asdict`: ~70 of ~100 ms for a day of a deployment
    with two replicas) and read the host's rows as well, none of which the charts need."""
    name = request.route["name"]
    if request.route.get("part") != "series":
        return not_found(request)
    try:
        window = window_named(request.query.get("window"))
    except WindowError as exc:
        return Response(status=400, json={"error": str(exc)})
    store = request.daemon.store
    found = await store.call(Store.get_deployment, name)
    if found is None or found.removed_at is not None:
        return Response(status=404, json={"error": f"no deployment named {name!r}"})
    now = datetime.now(UTC)
    since = datetime.fromtimestamp(grid(window, now)[0], UTC)
    rows = await store.call(Store.metric_rollups, name, since)
    series = shape([vars(r) for r in rows], window, now)
    series["deployment"] = name
    return Response(json=series, headers=(("Cache-Control", "no-store"),))
