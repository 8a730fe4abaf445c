"""End to end (issue 13, points 1 and 6): berthd as a process, real Podman replicas.

`[endpoint.auth]` applied to a running endpoint protects it in place; `berth keys create`
gives a key that works at once: 401 without or with a wrong key, 200 with it (Bearer and
x-api-key); `berth keys revoke` refuses it at once, without a
rebind: a connection kept open across the revoke gets 401 on its next request. A spec API
key given by a secret works too; a reference to a missing secret is refused at apply by its
field; a spec without a bind is told it listens on loopback only.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.berthd_process import Berthd, get_text
from tests.specs import echo_spec

pytestmark = pytest.mark.podman

PATH = "/cgi-bin/echo"


def request(conn: http.client.HTTPConnection, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("GET", PATH, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def test_keys_protect_the_running_endpoint_and_a_revoke_applies_to_open_connections(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    spec = tmp_path / "auth.toml"
    spec.write_text(echo_spec("e2e-keys", echo_image, port, count=1))
    berthd.start()
    berthd.berth("apply", str(spec), "--wait")
    url = f"http://127.0.0.1:{port}{PATH}"
    assert get_text(url)[0] == 200  # open: no [endpoint.auth]
    refused = berthd.berth("keys", "create", "e2e-keys", check=False)
    assert refused.returncode != 0 and "has no [endpoint.auth]" in refused.stderr

    # Protected (an empty table: keys only), in place: the same listener, 401 to everyone.
    spec.write_text(echo_spec("e2e-keys", echo_image, port, count=1, extra="[endpoint.auth]\n"))
    berthd.berth("apply", str(spec), "--wait")
    assert get_text(url)[0] == 401

    made = berthd.berth("keys", "create", "e2e-keys", "--name", "ci")
    key = made.stdout.strip()
    assert key.startswith("bk_") and len(key) == 46 and "shown once" in made.stderr
    listed = berthd.json("keys", "ls", "e2e-keys")
    assert [k["name"] for k in listed] == ["ci"] and key not in json.dumps(listed)
    key_id = listed[0]["id"]

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        status, body = request(conn, {})
        assert status == 401 and b"authentication required" in body
        assert request(conn, {"Authorization": "Bearer bk_wrong"})[0] == 401
        status, body = request(conn, {"Authorization": f"Bearer {key}"})
        assert status == 200 and b"replica=" in body
        assert request(conn, {"x-api-key": key})[0] == 200
        sock = conn.sock
        assert sock is not None

        berthd.berth("keys", "revoke", "e2e-keys", key_id)
        status, _ = request(conn, {"Authorization": f"Bearer {key}"})
        assert status == 401
        assert conn.sock is sock  # the same connection: no rebind, no reconnect
    finally:
        conn.close()

    assert berthd.json("keys", "ls", "e2e-keys") == []
    metrics = berthd.json("metrics", "e2e-keys")
    assert metrics["auth"]["unauthorized"] == 4
    assert metrics["auth"]["requests_by_credential"] == {f"key:{key_id}": 2}
    events = berthd.berth("events", "e2e-keys").stdout
    assert f"endpoint key {key_id}" in events and key not in events
    assert key not in berthd.log()
    assert key.encode() not in (berthd.state_dir / "berth.db").read_bytes()


def test_spec_api_keys_by_secret_and_the_bind_default(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    berthd.start()
    auth = '[endpoint.auth]\napi_keys = [{ secret = "team-key" }]\n'
    spec = tmp_path / "team.toml"
    spec.write_text(echo_spec("e2e-team", echo_image, port, count=1, extra=auth))

    refused = berthd.berth("apply", str(spec), check=False)
    assert refused.returncode != 0
    assert 'endpoint.auth.api_keys[0].secret: no such secret "team-key"' in refused.stderr

    secret_file = tmp_path / "team-key"
    secret_file.write_text("team-secret-value-0123456789")
    berthd.berth("secret", "create", "team-key", "--from-file", str(secret_file))
    berthd.berth("apply", str(spec), "--wait")
    url = f"http://127.0.0.1:{port}{PATH}"
    assert get_text(url)[0] == 401
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        assert request(conn, {"x-api-key": "team-secret-value-0123456789"})[0] == 200
    finally:
        conn.close()
    shown = berthd.berth("get", "e2e-team").stdout
    assert "team-key" in shown and "team-secret-value" not in shown

    # No bind in the spec: loopback only, and the apply says so.
    unbound = tmp_path / "unbound.toml"
    text = echo_spec("e2e-unbound", echo_image, free_port(), count=1)
    unbound.write_text(text.replace('bind = "127.0.0.1"\n', ""))
    dry = berthd.berth("apply", "--dry-run", str(unbound))
    assert "note: endpoint.bind not set: listening on 127.0.0.1:" in dry.stderr
    assert "this host only" in dry.stderr
