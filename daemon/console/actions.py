"""The console's actions, each the admin API's own, each behind a confirmation step.

    scale     ?replicas=N | ?auto=1   POST /v1/deployments/NAME/scale
    rollback  ?to=REV                 POST /v1/deployments/NAME/rollback
    restart   ?replica=ID             POST /v1/deployments/NAME/replicas/ID/restart
    remove                            DELETE /v1/deployments/NAME
    apply     (a pasted or uploaded spec: /console/apply)   POST /v1/deployments

`GET /console/d/NAME/ACTION/confirm?...` says what will happen and holds a POST form
(CSRF token, the same parameters, `confirm=yes`, data-testid `confirm-button`); only a
POST with `confirm=yes` acts, and anything else gets the confirmation page again. The
admin API records the event, naming the console user (`daemon.console.request`). The
`*_form` helpers are the buttons a page shows to start an action (data-testid
`action-scale`, `action-rollback`, `action-restart`, `action-remove`): plain GET forms to
the confirmation page.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from daemon.console.html import csrf_field, h, layout
from daemon.console.problems import problem_list
from daemon.console.request import AdminError, ConsoleRequest
from daemon.http.server import Response

ACTIONS = ("scale", "rollback", "restart", "remove")
HTML = "text/html; charset=utf-8"


# -- the buttons a page shows -------------------------------------------------------------


def scale_form(name: str, current: int | None = None) -> str:
    value = "" if current is None else str(current)
    return (
        f'<form method="get" action="/console/d/{h(name)}/scale/confirm" class="inline">'
        f'<label>Replicas <input type="number" name="replicas" min="0" max="100" value="{h(value)}"'
        ' required data-testid="scale-replicas"></label>'
        '<button type="submit" data-testid="action-scale">Scale</button></form>'
        f'<form method="get" action="/console/d/{h(name)}/scale/confirm" class="inline">'
        '<input type="hidden" name="auto" value="1">'
        '<button type="submit" data-testid="action-scale-auto">Back to auto</button></form>'
    )


def rollback_form(name: str, revision: int) -> str:
    return _get_button(name, "rollback", {"to": str(revision)}, "Roll back", "action-rollback")


def restart_form(name: str, replica_id: str) -> str:
    return _get_button(name, "restart", {"replica": replica_id}, "Restart", "action-restart")


def remove_form(name: str) -> str:
    return _get_button(name, "remove", {}, "Remove", "action-remove")


def _get_button(name: str, action: str, fields: Mapping[str, str], label: str, testid: str) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{h(k)}" value="{h(v)}">' for k, v in fields.items()
    )
    return (
        f'<form method="get" action="/console/d/{h(name)}/{action}/confirm" class="inline">'
        f'{hidden}<button type="submit" data-testid="{testid}">{h(label)}</button></form>'
    )


# -- confirm, then act --------------------------------------------------------------------


def _params(request: ConsoleRequest) -> dict[str, str]:
    source = request.form if request.method == "POST" else request.query
    keys = ("replicas", "auto", "to", "replica")
    return {k: source[k] for k in keys if source.get(k)}


def _what(action: str, name: str, params: Mapping[str, str]) -> str | None:
    """What the action will do, in words; None when its parameters are wrong."""
    if action == "scale":
        if params.get("auto"):
            return f"Hand {name}'s replica count back to the autoscaler."
        count = params.get("replicas", "")
        if not count.isdigit():
            return None
        return f"Pin {name} at {int(count)} replicas."
    if action == "rollback":
        to = params.get("to", "")
        if not to.isdigit():
            return None
        return f"Roll {name} back to revision {to}: a new revision with that revision's spec."
    if action == "restart":
        replica = params.get("replica")
        return f"Restart replica {replica} of {name}." if replica else None
    if action == "remove":
        return f"Remove {name}: stop and remove its replicas (its history is kept)."
    return None


async def confirm(request: ConsoleRequest, *, problem: str | None = None) -> str | Response:
    name, action = request.route["name"], request.route["action"]
    params = _params(request)
    what = _what(action, name, params)
    if what is None:
        return Response(status=400, text=f"{action}: missing or wrong parameters\n")
    hidden = "".join(
        f'<input type="hidden" name="{h(k)}" value="{h(v)}">' for k, v in params.items()
    )
    error = f'<p class="error" data-testid="action-error">{h(problem)}</p>' if problem else ""
    body = (
        f'{error}<p data-testid="confirm-what">{h(what)}</p>'
        f'<form method="post" action="/console/d/{h(name)}/{action}">{csrf_field(request)}{hidden}'
        '<input type="hidden" name="confirm" value="yes">'
        '<button type="submit" class="danger" data-testid="confirm-button">'
        f"{h(action.capitalize())}</button>"
        f' <a href="/console/d/{h(name)}" data-testid="confirm-cancel">Cancel</a></form>'
    )
    return layout(f"{action.capitalize()} {name}?", body, request=request)


async def perform(request: ConsoleRequest) -> str | Response:
    name, action = request.route["name"], request.route["action"]
    if request.form.get("confirm") != "yes":
        return await confirm(request)
    params = _params(request)
    if _what(action, name, params) is None:
        return Response(status=400, text=f"{action}: missing or wrong parameters\n")
    path = f"/v1/deployments/{quote(name, safe='')}"
    try:
        if action == "scale":
            count = None if params.get("auto") else int(params["replicas"])
            await request.admin.post(f"{path}/scale", {"replicas": count})
        elif action == "rollback":
            await request.admin.post(f"{path}/rollback", {"to": int(params["to"])})
        elif action == "restart":
            replica = quote(params["replica"], safe="")
            await request.admin.post(f"{path}/replicas/{replica}/restart")
        elif action == "remove":
            await request.admin.delete(path)
            return Response(status=303, headers=(("Location", "/console/"),))
    except AdminError as exc:
        page = await confirm(request, problem=exc.message)
        if isinstance(page, Response):
            return page
        return Response(status=exc.status, text=page, content_type=HTML)
    return Response(status=303, headers=(("Location", f"/console/d/{quote(name)}"),))


# -- apply ----------------------------------------------------------------------------------


def _apply_form(request: ConsoleRequest, text: str, *, confirming: bool) -> str:
    confirm_fields = ""
    button = '<button type="submit" data-testid="apply-check">Check</button>'
    if confirming:
        confirm_fields = '<input type="hidden" name="confirm" value="yes">'
        button = '<button type="submit" class="danger" data-testid="confirm-button">Apply</button>'
    return (
        '<form method="post" action="/console/apply" enctype="multipart/form-data" '
        f'data-testid="apply-form">{csrf_field(request)}{confirm_fields}'
        f'<textarea name="spec" rows="24" cols="90" spellcheck="false" data-testid="apply-spec">'
        f"{h(text)}</textarea>"
        '<label>or upload <input type="file" name="file" accept=".toml" data-testid="apply-file">'
        f"</label>{button}</form>"
    )


async def apply(request: ConsoleRequest) -> str | Response:
    """GET: the form. POST: check the spec (the admin API's dry run); refused, every
    problem by field path and line; accepted, what it would do and a confirm button; POST
    with `confirm=yes`: apply it."""
    if request.method != "POST":
        return layout("Apply a spec", _apply_form(request, "", confirming=False), request=request)
    text = request.form.get("file") or request.form.get("spec") or ""
    source = "console"
    if not text.strip():
        body = '<p class="error" data-testid="apply-error">no spec given</p>'
        return _page(request, 400, body + _apply_form(request, text, confirming=False))
    confirming = request.form.get("confirm") == "yes"
    try:
        result = await request.admin.post(
            "/v1/deployments",
            body=text.encode(),
            source=source,
            **({} if confirming else {"dry_run": "1"}),
        )
    except AdminError as exc:
        body = (
            f'<p class="error" data-testid="apply-error">{h(exc.message)}</p>'
            f"{problem_list(exc.problems, text)}"
        )
        return _page(request, 400, body + _apply_form(request, text, confirming=False))
    name = str(result.get("name", ""))
    warnings = "".join(f"<li>{h(w)}</li>" for w in result.get("warnings") or [])
    warn = f'<ul class="warnings" data-testid="apply-warnings">{warnings}</ul>' if warnings else ""
    if confirming:
        return Response(status=303, headers=(("Location", f"/console/d/{quote(name)}"),))
    outcome = result.get("outcome", "")
    spec_id = h(result.get("spec_id"))
    what = f'<p data-testid="confirm-what">{h(name)}: {h(outcome)} (spec_id {spec_id}).</p>'
    return _page(
        request, 200, what + warn + _apply_form(request, text, confirming=outcome != "unchanged")
    )


def _page(request: ConsoleRequest, status: int, body: str) -> Response:
    return Response(
        status=status, text=layout("Apply a spec", body, request=request), content_type=HTML
    )
