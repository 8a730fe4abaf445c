"""The web console's pure parts and its handler, without sockets: password hashing,
sessions and the sign-in limit on trio's MockClock, the CSRF check, the headers on every
answer, routing, static files, the problems' line numbers, forms, and the live stream.
The handler runs over a real SQLite store and the real admin API handlers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import trio
import trio.testing

from daemon.api.control_plane import ControlPlane
from daemon.console import pages, security, static_files, stream
from daemon.console.app import ConsoleApp
from daemon.console.forms import parse_form
from daemon.console.html import h, layout
from daemon.console.pages import box as _box_page  # noqa: F401  (loaded as pages.box)
from daemon.console.pages import deployment as _deployment_page  # noqa: F401
from daemon.console.pages import events as _events_page  # noqa: F401
from daemon.console.problems import problem_line
from daemon.console.request import ConsoleRequest
from daemon.console.sessions import Sessions, SignInLimiter
from daemon.http.server import Request, Response
from daemon.secrets.passwords import SCRYPT_N, hash_password, verify_password
from daemon.store.access import StoreAccess
from daemon.store.console_users import set_console_user
from daemon.store.database import Store
from daemon.store.events import EventLog

# -- passwords ---------------------------------------------------------------------------


def test_password_hash_is_salted_scrypt_and_verifies() -> None:
    one, two = hash_password("pw"), hash_password("pw")
    assert one != two  # salted
    scheme, n, r, p, salt, key = one.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", SCRYPT_N, 8, 1)
    assert SCRYPT_N >= 2**14 and len(bytes.fromhex(salt)) == 16 and len(bytes.fromhex(key)) == 32
    assert "pw" not in one
    assert verify_password("pw", one) and verify_password("pw", two)
    assert not verify_password("pW", one)
    assert not verify_password("", one)


@pytest.mark.parametrize("stored", ["", "plain", "md5$1$2$3$00$00", "scrypt$x$8$1$00$00"])
def test_a_malformed_hash_verifies_nothing(stored: str) -> None:
    assert not verify_password("pw", stored)


# -- sessions and the sign-in limit ------------------------------------------------------


async def test_a_session_expires_after_12_hours_idle_and_each_use_renews_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sessions = Sessions()
    s = sessions.create("alice")
    assert len(s.session_id) >= 43 and s.csrf and s.csrf != s.session_id
    await trio.sleep(11 * 3600)
    assert sessions.get(s.session_id) is s  # renewed
    await trio.sleep(11 * 3600)
    assert sessions.get(s.session_id) is s
    await trio.sleep(12 * 3600 + 1)
    assert sessions.get(s.session_id) is None
    assert len(sessions) == 0
    assert sessions.get(None) is None and sessions.get("nope") is None


def test_sessions_are_bounded_and_dropped_by_user() -> None:
    sessions = Sessions(max_sessions=3, clock=lambda: 0.0)
    made = [sessions.create(f"u{i % 2}") for i in range(5)]
    assert len(sessions) == 3
    assert sessions.get(made[0].session_id) is None  # the oldest went
    assert sessions.drop_user("u0") == 2
    assert [sessions.get(s.session_id) for s in made[2:]] == [None, made[3], None]


async def test_sign_in_limit_is_5_a_minute_per_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = SignInLimiter()
    assert all(limiter.allow("10.0.0.1") for _ in range(5))
    assert not limiter.allow("10.0.0.1")
    assert limiter.allow("10.0.0.2")  # another source is not held back
    assert 0 < limiter.retry_after("10.0.0.1") <= 60
    await trio.sleep(59)
    assert not limiter.allow("10.0.0.1")
    await trio.sleep(1.5)
    assert limiter.allow("10.0.0.1")
    assert limiter.retry_after("10.0.0.3") == 0


# -- CSRF, cookies, escaping -------------------------------------------------------------


def test_csrf_takes_the_form_field_or_the_header() -> None:
    assert security.csrf_ok("tok", {}, {"csrf": "tok"})
    assert security.csrf_ok("tok", {"x-csrf-token": "tok"}, {})
    assert not security.csrf_ok("tok", {}, {})
    assert not security.csrf_ok("tok", {}, {"csrf": "to"})
    assert not security.csrf_ok("", {}, {"csrf": ""})


def test_session_cookie_flags() -> None:
    plain = security.session_cookie("abc", secure=False)
    assert plain == "berth_console=abc; HttpOnly; SameSite=Strict; Path=/console"
    assert security.session_cookie("abc", secure=True).endswith("; Secure")
    headers = {"cookie": "a=1; berth_console=xyz; b=2"}
    assert security.cookie_value(headers) == "xyz"
    assert security.cookie_value({}) is None


def test_layout_escapes_and_has_no_inline_script_or_style() -> None:
    page = layout("<b>x</b>", "<p>body</p>", request=None)
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page and "style=" not in page and "<style" not in page
    assert '<script src="/console/static/console.js" defer>' in page
    assert h('"><script>') == "&quot;&gt;&lt;script&gt;"


# -- static files, problems, forms -------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../app.py", "..", "", ".hidden", "/etc/passwd", "vendor", "a/../../x.js", "nope.js"]
)
async def test_static_refuses_anything_but_a_file_under_static(name: str) -> None:
    assert (await static_files.serve(name)).status == 404


async def test_static_serves_with_type_and_cache() -> None:
    answer = await static_files.serve("console.js")
    assert answer.status == 200 and answer.content_type == "text/javascript; charset=utf-8"
    assert ("Cache-Control", "public, max-age=300") in answer.headers
    assert answer.body and b"EventSource" in answer.body
    assert b"setInterval" not in answer.body  # no polling loop


SPEC = """name = "x"
port = 8080

[replicas]
min = 2
max = 1

[[autoscale.metrics]]
metric = "cpu"
"""


@pytest.mark.parametrize(
    ("problem", "line"),
    [
        ("port: must be 1..65535 (got 0)", 2),
        ("replicas.max: must be >= replicas.min (1 < 2)", 6),
        ("autoscale.metrics[0].metric: unknown", 9),
        ("autoscale.metrics[0].target: missing", 8),
        ("TOML syntax error at line 3, column 1", 3),
        ("endpoint.port: missing", None),
        ("spec refused", None),
    ],
)
def test_problem_line(problem: str, line: int | None) -> None:
    assert problem_line(problem, SPEC) == line


def test_forms_urlencoded_and_multipart() -> None:
    url = {"content-type": "application/x-www-form-urlencoded"}
    assert parse_form(url, b"a=1&b=x%20y&c=") == {"a": "1", "b": "x y", "c": ""}
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="csrf"\r\n\r\ntok\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="s.toml"\r\n'
        b'Content-Type: application/octet-stream\r\n\r\nname = "x"\n\r\n--XX--\r\n'
    )
    multipart = {"content-type": "multipart/form-data; boundary=XX"}
    assert parse_form(multipart, body) == {"csrf": "tok", "file": 'name = "x"\n'}
    assert parse_form({"content-type": "application/json"}, b"{}") == {}


# -- the handler ---------------------------------------------------------------------------


@dataclass
class Box:
    """What of berthd the console's routes here reach: a real store and event log."""

    store: StoreAccess
    events: EventLog
    workers: dict[str, Any] = field(default_factory=dict)

    async def active_spec(self, name: str) -> None:
        return None


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    store = Store(tmp_path / "berth.db")
    access = StoreAccess(store)
    try:
        yield Box(access, EventLog(access))
    finally:
        store.close()


def make_app(box: Box) -> ConsoleApp:
    daemon: ControlPlane = box  # type: ignore[assignment]  # the parts these routes use
    return ConsoleApp(daemon)


def request(
    method: str, path: str, *, form: dict[str, str] | None = None, cookie: str = "", **headers: str
) -> Request:
    body = b""
    all_headers = {k.replace("_", "-"): v for k, v in headers.items()}
    if form is not None:
        from urllib.parse import urlencode

        body = urlencode(form).encode()
        all_headers["content-type"] = "application/x-www-form-urlencoded"
    if cookie:
        all_headers["cookie"] = f"berth_console={cookie}"
    return Request(
        method=method,
        path=path.split("?")[0],
        headers=MappingProxyType(all_headers),
        body=body,
        peer_host="127.0.0.1",
    )


def header(response: Response, name: str) -> str | None:
    return next((v for k, v in response.headers if k.lower() == name.lower()), None)


async def signed_in(box: Box, app: ConsoleApp) -> tuple[str, str]:
    await box.store.call(set_console_user, "alice", hash_password("pw"))
    answer = await app.handle(
        request("POST", "/console/signin", form={"name": "alice", "password": "pw"})
    )
    assert answer.status == 303
    cookie = header(answer, "set-cookie") or ""
    session_id = cookie.split(";")[0].split("=", 1)[1]
    session = app.sessions.get(session_id)
    assert session is not None
    return session_id, session.csrf


async def test_every_answer_carries_the_security_headers(box: Box) -> None:
    app = make_app(box)
    sid, csrf = await signed_in(box, app)
    answers = [
        await app.handle(request("GET", "/console/signin")),
        await app.handle(request("GET", "/console/")),  # signed out: redirect
        await app.handle(request("GET", "/console/static/console.css")),
        await app.handle(request("GET", "/console/static/../app.py")),
        await app.handle(request("GET", "/elsewhere")),
        await app.handle(request("GET", "/console/", cookie=sid)),
        await app.handle(request("POST", "/console/apply", cookie=sid, form={})),  # 403
        await app.handle(request("GET", "/console/nope", cookie=sid)),
    ]
    assert [a.status for a in answers] == [200, 303, 200, 404, 404, 200, 403, 404]
    for answer in answers:
        assert header(answer, "content-security-policy") == security.CSP
        assert header(answer, "x-content-type-options") == "nosniff"
        assert header(answer, "referrer-policy") == "no-referrer"
        assert header(answer, "x-frame-options") == "DENY"
    assert header(answers[5], "cache-control") == "no-store"
    assert "frame-ancestors 'none'" in security.CSP and "'unsafe-inline'" not in security.CSP


async def test_sign_in_wrong_name_and_wrong_password_read_the_same(box: Box) -> None:
    app = make_app(box)
    await box.store.call(set_console_user, "alice", hash_password("pw"))
    wrong_pw = await app.handle(
        request("POST", "/console/signin", form={"name": "alice", "password": "nope"})
    )
    wrong_name = await app.handle(
        request("POST", "/console/signin", form={"name": "bob", "password": "pw"})
    )
    assert wrong_pw.status == wrong_name.status == 401
    assert wrong_pw.text == wrong_name.text
    assert wrong_pw.text is not None and 'data-testid="signin-error"' in wrong_pw.text
    assert "wrong user name or password" in wrong_pw.text
    assert header(wrong_pw, "set-cookie") is None


async def test_sign_in_sends_only_to_this_console(box: Box) -> None:
    app = make_app(box)
    await box.store.call(set_console_user, "alice", hash_password("pw"))
    for target, went in [("/console/box", "/console/box"), ("//evil.example/", "/console/"),
                         ("https://evil.example/", "/console/")]:  # fmt: skip
        form = {"name": "alice", "password": "pw", "next": target}
        answer = await app.handle(request("POST", "/console/signin", form=form))
        assert header(answer, "location") == went


async def test_signed_out_pages_redirect_and_the_rest_is_401(box: Box) -> None:
    app = make_app(box)
    page = await app.handle(request("GET", "/console/d/web"))
    assert page.status == 303 and header(page, "location") == "/console/signin?next=/console/d/web"
    for path in ("/console/fragment/deployments", "/console/stream"):
        assert (await app.handle(request("GET", path))).status == 401
    assert (await app.handle(request("POST", "/console/d/web/scale", form={}))).status == 401


async def test_every_post_needs_the_csrf_token(box: Box) -> None:
    app = make_app(box)
    sid, csrf = await signed_in(box, app)
    for path in ("/console/apply", "/console/d/web/scale", "/console/signout", "/console/x"):
        assert (await app.handle(request("POST", path, cookie=sid, form={}))).status == 403
        bad = {"csrf": csrf[:-1] + "A" if csrf[-1] != "A" else csrf[:-1] + "B"}
        assert (await app.handle(request("POST", path, cookie=sid, form=bad))).status == 403
    by_header = await app.handle(request("POST", "/console/signout", cookie=sid, x_csrf_token=csrf))
    assert by_header.status == 303
    assert app.sessions.get(sid) is None  # signed out


async def test_routes_reach_the_pages(box: Box) -> None:
    app = make_app(box)
    sid, csrf = await signed_in(box, app)
    table = await app.handle(request("GET", "/console/", cookie=sid))
    assert table.status == 200 and table.text is not None
    assert 'data-testid="deployments-table"' in table.text and "No deployments yet" in table.text
    assert f'<meta name="csrf-token" content="{csrf}">' in table.text
    rows = await app.handle(request("GET", "/console/fragment/deployments", cookie=sid))
    assert rows.text is not None and rows.text.startswith("<tr>") and "<html" not in rows.text
    assert (await app.handle(request("GET", "/console/apply", cookie=sid))).status == 200
    unknown = await app.handle(request("GET", "/console/d/web/explode/confirm", cookie=sid))
    assert unknown.status == 404
    confirm = await app.handle(request("GET", "/console/d/web/remove/confirm", cookie=sid))
    assert confirm.text is not None and 'data-testid="confirm-button"' in confirm.text
    assert 'name="confirm" value="yes"' in confirm.text and f'value="{csrf}"' in confirm.text
    # An action on a deployment that does not exist: the admin API's 404, shown.
    gone = await app.handle(
        request("POST", "/console/d/web/remove", cookie=sid, form={"csrf": csrf, "confirm": "yes"})
    )
    assert gone.status == 404 and gone.text is not None and "no deployment named" in gone.text


async def test_routes_to_the_page_modules(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(box)
    sid, _ = await signed_in(box, app)
    seen: list[tuple[str, dict[str, str]]] = []

    def recorder(page: str) -> Any:
        async def render(request: ConsoleRequest) -> str:
            seen.append((page, dict(request.route)))
            return page

        return render

    for module, names in ((pages.box, ("render", "fragment")),
                          (pages.events, ("render", "fragment")),
                          (pages.deployment, ("render", "fragment", "logs", "data"))):  # fmt: skip
        for name in names:
            monkeypatch.setattr(
                module, name, recorder(f"{module.__name__.split('.')[-1]}.{name}"), raising=False
            )
    paths = [
        "/console/box",
        "/console/box/fragment/gpus",
        "/console/events",
        "/console/events/fragment/rows",
        "/console/d/web",
        "/console/d/web/fragment/replicas",
        "/console/d/web/logs",
        "/console/d/web/data/requests",
    ]
    for path in paths:
        answer = await app.handle(request("GET", path, cookie=sid))
        assert answer.status == 200 and answer.content_type == "text/html; charset=utf-8"
    assert seen == [
        ("box.render", {}),
        ("box.fragment", {"part": "gpus"}),
        ("events.render", {}),
        ("events.fragment", {"part": "rows"}),
        ("deployment.render", {"name": "web"}),
        ("deployment.fragment", {"name": "web", "part": "replicas"}),
        ("deployment.logs", {"name": "web"}),
        ("deployment.data", {"name": "web", "part": "requests"}),
    ]


async def test_a_new_password_or_a_removed_user_ends_the_sessions(box: Box) -> None:
    app = make_app(box)
    sid, _ = await signed_in(box, app)
    await box.store.call(set_console_user, "alice", hash_password("new"))
    assert (await app.handle(request("GET", "/console/", cookie=sid))).status == 303


async def test_sign_in_is_rate_limited(box: Box) -> None:
    app = make_app(box)
    form = {"name": "alice", "password": "x"}
    statuses = [
        (await app.handle(request("POST", "/console/signin", form=form))).status for _ in range(6)
    ]
    assert statuses == [401] * 5 + [429]


# -- the live stream ---------------------------------------------------------------------


async def test_stream_sends_a_change_per_event_and_keeps_alive(
    box: Box, autojump_clock: trio.testing.MockClock
) -> None:
    # The store answers from its thread: jump only once trio has been idle a while.
    autojump_clock.autojump_threshold = 0.1
    alive = True

    async def session() -> object:
        return object() if alive else None

    answer = stream.event_stream(box, session, keepalive=20.0)  # type: ignore[arg-type]
    assert answer.content_type == "text/event-stream; charset=utf-8"
    chunks = answer.stream
    assert isinstance(chunks, AsyncIterator)
    assert b"retry:" in await chunks.__anext__()
    await box.events.emit("old", "before")  # before the first wait: still sent, not lost

    async def later() -> None:
        await trio.sleep(5)
        await box.events.emit("scaled", "pinned", deployment="web")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        first = await chunks.__anext__()
        assert json.loads(first.decode().split("data: ")[1]) == {"kind": "old", "deployment": None}
        second = await chunks.__anext__()
        assert second == stream.change_message("scaled", "web")
        assert second.startswith(b"event: change\ndata: ")
    started = trio.current_time()
    assert await chunks.__anext__() == stream.change_message("tick", None)
    assert 19 <= trio.current_time() - started <= 21
    alive = False
    with pytest.raises(StopAsyncIteration):
        await chunks.__anext__()
