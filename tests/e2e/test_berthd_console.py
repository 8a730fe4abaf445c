"""End to end, the web console (issue 17): a real berthd with `[console] listen`, real
Podman replicas, the real `berth` CLI, and httpx over real sockets as the browser.

Sign-in (a wrong name and a wrong password alike: 401), the session cookie's flags, the
security headers, a page, a POST without the CSRF token (403), an apply through the
console's confirm step that the live stream (SSE) tells about and whose event names the
console user, a scale to 2 that the workers carry out, sign-out, and the sign-in rate
limit (429 after 5 tries a minute).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.berthd_process import BIN, Berthd, wait_until
from tests.specs import echo_spec

pytestmark = pytest.mark.podman

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@pytest.fixture
def console(
    berthd_factory: Callable[..., Berthd], tmp_path: Path, free_port: Callable[[], int]
) -> Iterator[tuple[Berthd, str]]:
    port = free_port()
    config = tmp_path / "berthd.toml"
    config.write_text(f'[console]\nlisten = "127.0.0.1:{port}"\n')
    daemon = berthd_factory(extra_args=["--config", str(config)])
    daemon.start()
    yield daemon, f"http://127.0.0.1:{port}"


def add_user(daemon: Berthd, name: str, password: str) -> None:
    result = daemon.berth("console", "user", "add", name, check=False, timeout=30)
    assert result.returncode != 0  # stdin was empty: refused
    assert "empty" in result.stderr
    done = subprocess.run(
        [str(BIN / "berth"), "--socket", str(daemon.socket), "console", "user", "add", name],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"console user {name} added" in done.stdout


def sign_in(client: httpx.Client, name: str, password: str) -> httpx.Response:
    return client.post("/console/signin", data={"name": name, "password": password})


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


def test_console_sign_in_pages_csrf_stream_actions(
    console: tuple[Berthd, str], echo_image: str, free_port: Callable[[], int]
) -> None:
    daemon, base = console
    add_user(daemon, "alice", PASSWORD)
    assert [u["name"] for u in daemon.json("console", "user", "ls")] == ["alice"]

    with httpx.Client(base_url=base, timeout=10, follow_redirects=False) as client:
        # Signed out: a page sends to the sign-in; every answer has the headers.
        first = client.get("/console/")
        assert first.status_code == 303
        assert first.headers["location"].startswith("/console/signin")
        form = client.get("/console/signin")
        assert form.status_code == 200 and 'data-testid="signin-form"' in form.text
        for response in (first, form):
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in form.text and "style=" not in form.text

        # A wrong password and an unknown name read the same.
        wrong = sign_in(client, "alice", "not it")
        nobody = sign_in(client, "mallory", PASSWORD)
        for refused in (wrong, nobody):
            assert refused.status_code == 401
            assert 'data-testid="signin-error"' in refused.text
            assert "wrong user name or password" in refused.text
            assert "set-cookie" not in refused.headers

        signed = sign_in(client, "alice", PASSWORD)
        assert signed.status_code == 303, signed.text
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("berth_console=")
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/console"):
            assert flag in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback

        page = client.get("/console/")
        assert page.status_code == 200
        assert 'data-testid="deployments-table"' in page.text
        assert 'data-testid="signed-in-user">alice<' in page.text
        token = csrf_of(page)

        # No CSRF token, or a wrong one: 403, nothing done.
        port = free_port()
        apply_form = {"spec": echo_spec("web", echo_image, port, count=1), "confirm": "yes"}
        assert client.post("/console/apply", data=apply_form).status_code == 403
        bad = client.post("/console/apply", data={**apply_form, "csrf": "x" * 43})
        assert bad.status_code == 403
        assert daemon.json("ls") == []

        # The live stream: a change once the console's apply is recorded.
        changes: list[dict[str, object]] = []
        connected, changed = threading.Event(), threading.Event()

        def follow() -> None:
            with client.stream("GET", "/console/stream", timeout=30) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                event = None
                for line in stream.iter_lines():
                    if line == ": connected":
                        connected.set()
                    elif line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: ") and event == "change":
                        changes.append(json.loads(line.removeprefix("data: ")))
                        if changes[-1].get("deployment") == "web":
                            changed.set()
                            return

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert connected.wait(10), "the stream did not open"

        # Apply: first the check (a confirm button), then confirm=yes.
        check = client.post("/console/apply", data={"spec": apply_form["spec"], "csrf": token})
        assert check.status_code == 200, check.text
        assert "web: created" in check.text and 'data-testid="confirm-button"' in check.text
        assert daemon.json("ls") == []  # the check changes nothing
        done = client.post("/console/apply", data={**apply_form, "csrf": token})
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/console/d/web"
        assert changed.wait(15), f"no change for web on the stream: {changes}"
        follower.join(5)

        events = daemon.berth("events", "web").stdout
        assert "(by console user alice)" in events, events

        # A refused spec shows its problems by field path and line.
        refused = client.post(
            "/console/apply",
            data={"spec": 'name = "x"\nport = 0\n', "csrf": token},
        )
        assert refused.status_code == 400
        assert 'data-testid="apply-problem"' in refused.text and "port" in refused.text

        # Scale to 2, confirmed; the worker makes the second replica.
        confirm = client.get("/console/d/web/scale/confirm", params={"replicas": "2"})
        assert confirm.status_code == 200 and "Pin web at 2 replicas" in confirm.text
        not_confirmed = client.post("/console/d/web/scale", data={"replicas": "2", "csrf": token})
        assert not_confirmed.status_code == 200  # the confirmation again, nothing done
        scaled = client.post(
            "/console/d/web/scale", data={"replicas": "2", "confirm": "yes", "csrf": token}
        )
        assert scaled.status_code == 303
        wait_until(
            "web to have 2 ready replicas",
            lambda: daemon.json("get", "web")["ready"] == 2,
            timeout=60,
        )
        assert (
            "pinned at 2 replicas (by console user alice)" in daemon.berth("events", "web").stdout
        )
        # Restart one replica, confirmed: the worker drains, stops and starts it again.
        replica = daemon.json("get", "web")["replicas"][0]["id"]
        confirm = client.get("/console/d/web/restart/confirm", params={"replica": replica})
        assert f"Restart replica {replica} of web" in confirm.text
        restarted = client.post(
            "/console/d/web/restart",
            data={"replica": replica, "confirm": "yes", "csrf": token},
        )
        assert restarted.status_code == 303, restarted.text
        wait_until(
            f"replica {replica} to restart",
            lambda: f"replica {replica} restarted" in daemon.berth("events", "web").stdout,
            timeout=60,
        )
        assert (
            f"replica {replica} restart asked (by console user alice)"
            in daemon.berth("events", "web").stdout
        )
        # Roll back to revision 1 after a second revision, confirmed.
        v2 = daemon.socket.parent / "web-v2.toml"
        v2.write_text(echo_spec("web", echo_image, port, count=1, message="v2"))
        daemon.berth("apply", str(v2))
        assert daemon.json("get", "web")["revision"] == 2
        confirm = client.get("/console/d/web/rollback/confirm", params={"to": "1"})
        assert "Roll web back to revision 1" in confirm.text
        rolled = client.post(
            "/console/d/web/rollback", data={"to": "1", "confirm": "yes", "csrf": token}
        )
        assert rolled.status_code == 303, rolled.text
        history = daemon.json("history", "web")
        assert [h["revision"] for h in history if h["active"]] == [3]
        rows = client.get("/console/fragment/deployments")
        assert rows.status_code == 200 and 'data-testid="deployment-row-web"' in rows.text

        # Sign out: the session is gone.
        out = client.post("/console/signout", data={"csrf": token})
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        assert client.get("/console/fragment/deployments").status_code == 401

        # The rate limit: 3 tries so far from 127.0.0.1; 2 more pass, the next is 429.
        assert sign_in(client, "alice", "guess 1").status_code == 401
        assert sign_in(client, "alice", "guess 2").status_code == 401
        limited = sign_in(client, "alice", PASSWORD)
        assert limited.status_code == 429
        assert "too many sign-in attempts" in limited.text
        assert int(limited.headers["retry-after"]) > 0

    # Removing the user works through the CLI too.
    daemon.berth("console", "user", "rm", "alice")
    assert daemon.json("console", "user", "ls") == []
