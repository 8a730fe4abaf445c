"""The live parts of one deployment's page, each also a fragment that deployment.js puts in
place on a `change` from /console/stream: the summary with its actions, the replicas, the
revisions and the events. Every part is built from the admin API's answers (`berth get`,
`berth history`, `berth events`), so the page shows what the CLI shows."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from daemon.console import actions
from daemon.console.html import h
from daemon.console.pages.cells import Raw, duration, link, table, when
from daemon.console.pages.events import event_rows
from daemon.console.request import ConsoleRequest

EVENTS_SHOWN = 50
PARTS = ("summary", "replicas", "revisions", "events")


def base(name: str) -> str:
    return f"/console/d/{quote(name, safe='')}"


async def deployment_json(request: ConsoleRequest, name: str) -> dict[str, Any]:
    answer: dict[str, Any] = await request.admin.get(f"/v1/deployments/{quote(name, safe='')}")
    return answer


def summary_html(d: dict[str, Any]) -> str:
    name = str(d.get("name", ""))
    pinned = d.get("pinned")
    status = str(d.get("status", ""))
    scaling = "autoscaled" if pinned is None else f"pinned at {pinned}"
    facts = [
        ("Status", Raw(f'<span class="status status-{h(status)}">{h(status)}</span>')),
        ("Ready / desired", f"{d.get('ready', 0)} / {d.get('desired', 0)}"),
        ("Scaling", scaling),
        ("Revision", d.get("revision")),
        ("Endpoint", d.get("endpoint")),
        ("Image", d.get("image")),
        ("Created", when(d.get("created_at"))),
    ]
    for label, key in (("Why", "reason"), ("Endpoint error", "endpoint_error")):
        if d.get(key):
            facts.append((label, d.get(key)))
    if d.get("unloaded_at"):
        facts.append(("Unloaded (idle)", when(d.get("unloaded_at"))))
    rows = "".join(
        f"<dt>{h(k)}</dt><dd>{v if isinstance(v, Raw) else h('—' if v is None else v)}</dd>"
        for k, v in facts
    )
    current = d.get("desired", 0) if pinned is None else pinned
    # The action buttons are K1's (`daemon.console.actions`): GETs to their confirm pages.
    scale = actions.scale_form(name, int(current) if isinstance(current, int) else None)
    remove = actions.remove_form(name)
    return (
        f'<dl class="facts" data-testid="deployment-summary">{rows}</dl>'
        f'<div class="actions">{scale}{remove}</div>'
    )


def health(r: dict[str, Any]) -> str:
    if r.get("ready"):
        return "ready"
    failures = int(r.get("consecutive_failures") or 0)
    if r.get("restart_in") is not None:
        return f"crashloop: restart in {duration(float(r['restart_in']))}"
    return f"failing ({failures} in a row)" if failures else "not ready"


def replicas_html(d: dict[str, Any]) -> str:
    name = str(d.get("name", ""))
    rows = []
    for r in d.get("replicas", []):
        rid = str(r.get("id", ""))
        restart = Raw(actions.restart_form(name, rid))
        rows.append(
            (
                f"replica-row-{rid}",
                [
                    rid,
                    r.get("state"),
                    health(r),
                    r.get("last_probe"),
                    r.get("restarts"),
                    r.get("last_exit_reason"),
                    ", ".join(str(g) for g in r.get("gpus") or []) or None,
                    r.get("host_port"),
                    str(r.get("container_id") or "")[:12],
                    restart,
                ],
            )
        )
    headers = ["Replica", "State", "Health", "Last probe", "Restarts", "Last exit", "GPU",
               "Port", "Container", ""]  # fmt: skip
    pending = int(d.get("pending") or 0)
    note = (
        f'<p class="note">{h(pending)} desired replica(s) not created yet.</p>' if pending else ""
    )
    error = f'<p class="error">{h(d["error"])}</p>' if d.get("error") else ""
    return table("replicas-table", headers, rows, empty="no replicas") + note + error


def revisions_html(name: str, history: list[dict[str, Any]]) -> str:
    active = next((r["revision"] for r in history if r.get("active")), None)
    rows = []
    for r in reversed(history):
        rev = r.get("revision")
        links: list[str] = []
        if active is not None and rev != active:
            diff = f"{base(name)}?{urlencode({'from': rev, 'to': active})}#diff"
            links.append(link(diff, f"diff with {active}", testid="revision-diff"))
            links.append(actions.rollback_form(name, int(rev)))
        rows.append(
            (
                f"revision-row-{rev}",
                [
                    rev,
                    "active" if r.get("active") else "",
                    r.get("status"),
                    r.get("reason"),
                    r.get("spec_id"),
                    when(r.get("created_at")),
                    Raw(" ".join(links)),
                ],
            )
        )
    headers = ["Revision", "", "Status", "Reason", "Spec id", "Created", ""]
    return table("revisions-table", headers, rows, empty="no revisions") + compare_form(
        name, [r.get("revision") for r in history], active
    )


def compare_form(name: str, revisions: list[Any], active: Any) -> str:
    """Diff any two revisions: a GET form for the page's `?from=A&to=B`."""
    if len(revisions) < 2:
        return ""

    def select(field: str, chosen: Any) -> str:
        options = "".join(
            f'<option value="{h(r)}"{" selected" if r == chosen else ""}>{h(r)}</option>'
            for r in reversed(revisions)
        )
        return f'<select name="{field}" data-testid="diff-{field}">{options}</select>'

    older = [r for r in revisions if r != active]
    return (
        f'<form method="get" action="{h(base(name))}#diff" class="filters" '
        'data-testid="revision-compare">'
        f"<label>Diff revision {select('from', older[-1] if older else revisions[0])}</label>"
        f"<label>with {select('to', active if active is not None else revisions[-1])}</label>"
        '<button type="submit">Show diff</button></form>'
    )


def events_html(events: list[dict[str, Any]]) -> str:
    return table("events-table", *event_rows(events, with_deployment=False), empty="no events")


async def part_html(request: ConsoleRequest, name: str, part: str) -> str | None:
    """One part's HTML; None: no such part."""
    q = quote(name, safe="")
    if part == "summary":
        return summary_html(await deployment_json(request, name))
    if part == "replicas":
        return replicas_html(await deployment_json(request, name))
    if part == "revisions":
        return revisions_html(name, await request.admin.get(f"/v1/deployments/{q}/history"))
    if part == "events":
        found = await request.admin.get("/v1/events", deployment=name, limit=str(EVENTS_SHOWN))
        return events_html(list(reversed(found)))
    return None
