"""berthd as a process (issue 13, points 4 and 5): who applied is in the events, a deeply
nested spec is a 400 not a 500, dangerous specs are refused through the real admin API."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon.berthd import instance_id
from daemon.runtime.interface import LABEL_INSTANCE
from tests.conftest import free_port, podman_binary, remove_labelled_containers
from tests.e2e.berthd_process import BIN, Berthd
from tests.specs import echo_spec

pytestmark = pytest.mark.podman

NOBODY = 65534


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory an unprivileged user may enter: the socket and the spec go here."""
    with tempfile.TemporaryDirectory(prefix="berth-e2e-", dir="/tmp") as d:
        os.chmod(d, 0o755)
        yield Path(d)


@pytest.fixture
def daemon(
    tmp_path: Path, reachable_dir: Path, podman_url: str, echo_image: str
) -> Iterator[Berthd]:
    berthd = Berthd(tmp_path / "state", reachable_dir / "berth.sock", podman_url, tmp_path / "log")
    try:
        berthd.start()
        yield berthd
    finally:
        berthd.stop()
        remove_labelled_containers(podman_binary(), {LABEL_INSTANCE: instance_id(berthd.state_dir)})


@pytest.mark.skipif(os.geteuid() != 0, reason="running the CLI as another user takes root")
def test_a_non_root_callers_uid_is_in_the_event_of_its_apply(
    daemon: Berthd, reachable_dir: Path, echo_image: str
) -> None:
    # The socket is 0660 root:root; for this test anyone may connect.
    daemon.socket.chmod(0o666)
    spec = reachable_dir / "who.toml"
    spec.write_text(echo_spec("who", echo_image, free_port(), count=1))
    spec.chmod(0o644)
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    result = subprocess.run(
        [*as_nobody, str(BIN / "berth"), "--socket", str(daemon.socket), "apply", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    daemon.berth("scale", "who", "2")  # root's own request
    stdout = daemon.berth("events", "who", "--json").stdout
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    by_kind = {e["kind"]: e for e in events if e["kind"] in ("applied", "scaled")}
    assert by_kind["applied"]["uid"] == NOBODY
    assert by_kind["scaled"]["uid"] == 0
    lines = daemon.berth("events", "who").stdout.splitlines()
    [applied] = [line for line in lines if " applied " in line]
    assert applied.endswith(f"uid={NOBODY}")
    # What the worker did on its own account names no caller.
    assert all(e["uid"] is None for e in events if e["kind"] not in ("applied", "scaled"))


def test_a_deeply_nested_spec_is_a_400_naming_the_problem(daemon: Berthd) -> None:
    deep = 'name = "deep"\nimage = "x"\nport = 1\nx = ' + "[" * 5000 + "]" * 5000 + "\n"
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with httpx.Client(transport=transport, base_url="http://berth", timeout=30) as client:
        response = client.post("/v1/deployments", content=deep.encode())
        assert response.status_code == 400, response.text
        assert "nested more than 16 levels deep" in response.json()["problems"][0]
        # JSON bodies too: a deep one is no 500.
        body = b"[" * 100_000 + b"]" * 100_000
        scaled = client.post("/v1/deployments/nope/scale", content=body)
        assert scaled.status_code != 500


def test_dangerous_specs_are_refused_through_the_admin_api(
    daemon: Berthd, reachable_dir: Path, echo_image: str
) -> None:
    base = echo_spec("bad", echo_image, free_port(), count=1)
    cases = {
        'command = ["sh", "-c", "echo \\u0000"]\n': "command[2]: must not contain a NUL byte",
        '[[mounts]]\ntype = "git"\nsource = "file:///etc"\ntarget = "/src"\n': (
            "mounts[0].source: a file:// repository /etc: not under berthd's allowed roots"
        ),
        '[[mounts]]\ntype = "bind"\nsource = "/srv"\ntarget = "/proc/x"\n': (
            "mounts[0].target: cannot mount over /proc"
        ),
        '[registry]\nusername = "u"\npassword_file = "/etc/shadow"\n': (
            "registry.password_file: must lie under berthd's credentials_roots "
            "(/etc/berth/credentials)"
        ),
    }
    for extra, expected in cases.items():
        # Top-level keys go before the first table, tables after.
        text = extra + base if not extra.startswith("[") else base + extra
        path = reachable_dir / "bad.toml"
        path.write_text(text)
        result = daemon.berth("apply", str(path), check=False)
        assert result.returncode != 0
        assert expected in result.stderr, result.stderr
    assert daemon.json("ls") == []
