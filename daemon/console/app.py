"""The console's handler: one `Request` in, one `Response` out, for `HttpServer`.

Routes (all under /console; the module docstrings of `pages/` say what each page shows):
    GET  /console/signin             the sign-in form          POST: sign in
    POST /console/signout            end the session
    GET  /console/                   deployments (pages.deployments)
    GET  /console/fragment/deployments   its table body, for console.js
    GET  /console/box[/fragment/P]   the box (pages.box)
    GET  /console/events[/fragment/P]    events (pages.events)
    GET  /console/d/NAME[/fragment/P | /logs | /data/P]   one deployment (pages.deployment)
    GET  /console/d/NAME/ACTION/confirm  what ACTION would do  POST .../ACTION: do it
    GET  /console/apply              paste or upload a spec    POST: check, then apply
    GET  /console/stream             server-sent events: `change` (daemon.console.stream)
    GET  /console/static/FILE        daemon/console/static/ (daemon.console.static_files)

Invariants:
- Every answer carries `security.SECURITY_HEADERS` (the server's own refusals too, by
  `errors`); pages and fragments are never cached.
- Everything but the sign-in page and the static files needs a live session: a page asked
  without one is sent to the sign-in (303), anything else gets 401.
- Every POST but the sign-in needs the session's CSRF token: 403 otherwise, before any
  route runs.
- A wrong user name and a wrong password get the same answer (401, "wrong user name or
  password"), after the same scrypt work; a source over the sign-in rate gets 429 before
  any check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from types import MappingProxyType, ModuleType
from urllib.parse import quote

import trio

from daemon.api.control_plane import ControlPlane
from daemon.api.routes import AdminApi
from daemon.console import actions, security, static_files, stream
from daemon.console.forms import parse_form
from daemon.console.pages import box, deployment, deployments, events, signin
from daemon.console.request import AdminAccess, ConsoleRequest
from daemon.console.sessions import Session, Sessions, SignInLimiter
from daemon.http.server import Request, Response
from daemon.secrets.passwords import dummy_verify, verify_password
from daemon.store.console_users import console_password_hash

HTML = "text/html; charset=utf-8"
Page = Callable[[ConsoleRequest], Awaitable["str | Response"]]


def html_response(
    body: str, status: int = 200, *, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    return Response(status=status, text=body, content_type=HTML, headers=headers)


def redirect(location: str, *, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status=303, headers=(("Location", location), *headers))


def console_error(status: int, message: str) -> Response:
    """The server's own refusals (400, 413, 500), with the console's headers."""
    return with_security(Response(status=status, text=f"{message}\n"))


def with_security(response: Response) -> Response:
    extra = list(security.SECURITY_HEADERS)
    names = {k.lower() for k, _ in response.headers}
    if "cache-control" not in names:
        extra.append(security.NO_STORE)
    return Response(
        status=response.status,
        json=response.json,
        text=response.text,
        body=response.body,
        stream=response.stream,
        producer=response.producer,
        content_type=response.content_type,
        headers=(*response.headers, *extra),
    )


class ConsoleApp:
    def __init__(
        self,
        daemon: ControlPlane,
        *,
        secure: bool = False,
        sessions: Sessions | None = None,
        limiter: SignInLimiter | None = None,
    ) -> None:
        self.d = daemon
        self.api = AdminApi(daemon)
        self.secure = secure
        self.sessions = sessions or Sessions()
        self.limiter = limiter or SignInLimiter()

    def __repr__(self) -> str:
        return f"<ConsoleApp {self.sessions!r}>"

    async def handle(self, req: Request) -> Response:
        return with_security(await self._route(req))

    async def _route(self, req: Request) -> Response:
        path, m = req.path, req.method
        if path in ("/", "/console"):
            return redirect("/console/")
        if not path.startswith("/console/"):
            return Response(status=404, text="not found\n")
        if path.startswith("/console/static/"):
            if m not in ("GET", "HEAD"):
                return Response(status=405, text="GET only\n", headers=(("Allow", "GET, HEAD"),))
            return await static_files.serve(path.removeprefix("/console/static/"))
        if path == "/console/signin":
            if m == "POST":
                return await self._sign_in(req)
            return html_response(signin.page(error=None, next_path=req.query.get("next", "")))
        session = await self.live_session(security.cookie_value(req.headers))
        form = parse_form(req.headers, req.body) if m == "POST" else {}
        if session is None:
            if m in ("GET", "HEAD") and "/fragment/" not in path and path != "/console/stream":
                return redirect("/console/signin?next=" + quote(path, safe="/"))
            return Response(status=401, text="sign in first\n")
        if m == "POST" and not security.csrf_ok(session.csrf, req.headers, form):
            return Response(status=403, text="missing or wrong CSRF token\n")
        request = ConsoleRequest(
            method=m,
            path=path,
            query=req.query,
            form=MappingProxyType(form),
            user=session.user,
            csrf=session.csrf,
            admin=AdminAccess(self.api, session.user),
            daemon=self.d,
            headers=req.headers,
        )
        if path == "/console/signout":
            if m != "POST":
                return Response(status=405, text="POST only\n", headers=(("Allow", "POST"),))
            self.sessions.drop(session.session_id)
            cookie = security.session_cookie("", secure=self.secure, max_age=0)
            return redirect("/console/signin", headers=(("Set-Cookie", cookie),))
        if path == "/console/stream":
            return stream.event_stream(self.d, partial(self.live_session, session.session_id))
        return await self._page(request, session)

    async def live_session(self, session_id: str | None) -> Session | None:
        """The session, if it is live and its user still has the password it signed in with."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        stored = await self.d.store.call(console_password_hash, session.user)
        if stored != session.stamp:
            self.sessions.drop(session.session_id)
            return None
        return session

    async def _page(self, request: ConsoleRequest, session: Session) -> Response:
        parts = [p for p in request.path.split("/") if p][1:]  # past "console"
        get = request.method in ("GET", "HEAD")
        route: dict[str, str] = {}
        target: Page | None = None
        match parts:
            case [] if get:
                target = deployments.render
            case ["fragment", part] if get:
                target, route = _fragment(deployments), {"part": part}
            case ["box"] if get:
                target = box.render
            case ["box", "fragment", part] if get:
                target, route = _fragment(box), {"part": part}
            case ["events"] if get:
                target = events.render
            case ["events", "fragment", part] if get:
                target, route = _fragment(events), {"part": part}
            case ["apply"]:
                target = actions.apply
            case ["d", name] if get:
                target, route = deployment.render, {"name": name}
            case ["d", name, "fragment", part] if get:
                target, route = _fragment(deployment), {"name": name, "part": part}
            case ["d", name, "logs"] if get:
                target, route = getattr(deployment, "logs", None), {"name": name}
            case ["d", name, "data", part] if get:
                target, route = getattr(deployment, "data", None), {"name": name, "part": part}
            case ["d", name, action, "confirm"] if get and action in actions.ACTIONS:
                target, route = actions.confirm, {"name": name, "action": action}
            case ["d", name, action] if not get and action in actions.ACTIONS:
                target, route = actions.perform, {"name": name, "action": action}
        if target is None:
            return Response(status=404, text=f"no such page: {request.method} {request.path}\n")
        answer = await target(_with_route(request, route))
        return answer if isinstance(answer, Response) else html_response(answer)

    async def _sign_in(self, req: Request) -> Response:
        form = parse_form(req.headers, req.body)
        source = req.peer_host or "local"
        next_path = form.get("next", "")
        if not self.limiter.allow(source):
            wait = self.limiter.retry_after(source)
            message = f"too many sign-in attempts; try again in {wait} s"
            page = signin.page(error=message, next_path=next_path)
            return html_response(page, 429, headers=(("Retry-After", str(wait)),))
        name, password = form.get("name", ""), form.get("password", "")
        stored = await self.d.store.call(console_password_hash, name) if name else None
        if stored is None:
            await trio.to_thread.run_sync(dummy_verify, password)
            ok = False
        else:
            ok = await trio.to_thread.run_sync(verify_password, password, stored)
        if not ok:
            page = signin.page(error=signin.WRONG, next_path=next_path)
            return html_response(page, 401)
        session = self.sessions.create(name, stored or "")
        cookie = security.session_cookie(session.session_id, secure=self.secure)
        target = next_path if _safe_next(next_path) else "/console/"
        return redirect(target, headers=(("Set-Cookie", cookie),))


def _fragment(module: ModuleType) -> Page | None:
    found = getattr(module, "fragment", None)
    return found if callable(found) else None


def _with_route(request: ConsoleRequest, route: dict[str, str]) -> ConsoleRequest:
    if not route:
        return request
    return ConsoleRequest(
        method=request.method,
        path=request.path,
        query=request.query,
        form=request.form,
        user=request.user,
        csrf=request.csrf,
        admin=request.admin,
        daemon=request.daemon,
        headers=request.headers,
        route=MappingProxyType(route),
    )


def _safe_next(path: str) -> bool:
    """Only a path of this console: never another site (an open redirect)."""
    return path.startswith("/console/") and not path.startswith("//") and "\\" not in path
