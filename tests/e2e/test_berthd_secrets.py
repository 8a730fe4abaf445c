"""End to end: a secret reaches the replica's environment and nowhere else (issue 13).

berthd as a process under a loose umask (as a hand start or `make run`), the real `berth`
CLI, replicas in real Podman: `berth secret create` from stdin, a spec with
`HF_TOKEN = { secret = "e2e-token" }`, the replicas' environment holds the value
(`podman exec ... sh -c 'echo "$HF_TOKEN"'`); a new value rolls them (a revision that says why) and
`berth secret rm` is refused while the spec uses it. Then the bytes of both values are
looked for in berth.db and its WAL, in every CLI answer (get, get --json, history,
history --diff, events, logs, metrics, secret ls, status), in Prometheus' /metrics and
in berthd's log: they must be nowhere. A literal token-looking value is the control: the
same search finds it in the database (the search reads the right bytes), and apply warns
about it without echoing it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import podman_binary
from tests.e2e.berthd_process import BIN, Berthd, wait_until

pytestmark = pytest.mark.podman

VALUE_1 = b"hf_E2eFirstValueNeverShownAnywhere4821"
VALUE_2 = b"hf_E2eSecondValueNeverShownEither9317"
# A literal value in [env]: apply warns; it is kept in the history as any literal is.
LITERAL = "sk-e2eLiteralValueKeptInHistory0000"
NAME = "e2e-sec"


def spec(image: str, port: int) -> str:
    return f"""
name = "{NAME}"
image = "{image}"
port = 8080
stop_timeout = "1s"
[env]
MESSAGE = "hello"
HF_TOKEN = {{ secret = "e2e-token" }}
OPENAI_COMPAT = "{LITERAL}"
[replicas]
count = 2
[health.readiness]
path = "/health"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


def berth_stdin(daemon: Berthd, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / "berth"), "--socket", str(daemon.socket), *args],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )


def replica_env(daemon: Berthd, variable: str) -> set[str]:
    """The variable's value in every running replica of the deployment (podman exec)."""
    values = set()
    for r in daemon.json("get", NAME)["replicas"]:
        out = subprocess.run(
            [podman_binary(), "exec", r["container_id"], "sh", "-c", f'echo "${variable}"'],
            capture_output=True,
            timeout=30,
            check=False,
        )
        values.add(out.stdout.decode().strip() if out.returncode == 0 else f"<{out.returncode}>")
    return values


def all_ready(daemon: Berthd, revision: int) -> bool:
    d = daemon.json("get", NAME)
    return bool(
        d["revision"] == revision
        and d["status"] == "running"
        and d["ready"] == 2
        and len(d["replicas"]) == 2
        and all(r["ready"] for r in d["replicas"])
    )


@pytest.fixture
def daemon(
    berthd_factory: Callable[..., Berthd], tmp_path: Path, free_port: Callable[[], int]
) -> Berthd:
    metrics_port = free_port()
    config = tmp_path / "berthd.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    d = berthd_factory(extra_args=["--config", str(config)])
    d.metrics_port = metrics_port  # type: ignore[attr-defined]
    return d


def test_a_secret_reaches_the_replicas_and_nothing_else(
    daemon: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    old_umask = os.umask(0o022)  # what berthd inherits outside systemd
    try:
        daemon.start()
    finally:
        os.umask(old_umask)
    state = daemon.state_dir
    created = berth_stdin(daemon, VALUE_1 + b"\n", "secret", "create", "e2e-token")
    assert created.returncode == 0, created.stderr
    assert b"created" in created.stdout

    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(spec(echo_image, free_port()))
    applied = daemon.berth("apply", str(spec_file))
    assert "env.OPENAI_COMPAT: the literal value looks like" in applied.stderr
    assert 'OPENAI_COMPAT = { secret = "NAME" }' in applied.stderr
    assert LITERAL not in applied.stderr
    wait_until("2 ready replicas", lambda: all_ready(daemon, 1), 60, 0.5)
    assert replica_env(daemon, "HF_TOKEN") == {VALUE_1.decode()}  # one newline dropped

    # A new value: a new revision of the same spec, its replicas replaced.
    updated = berth_stdin(daemon, VALUE_2, "secret", "create", "e2e-token")
    assert updated.returncode == 0, updated.stderr
    assert f"{NAME}: revision 2".encode() in updated.stdout
    wait_until("the roll to the new value", lambda: all_ready(daemon, 2), 90, 0.5)
    wait_until(
        "every replica with the new value",
        lambda: replica_env(daemon, "HF_TOKEN") == {VALUE_2.decode()},
        30,
        0.5,
    )
    history = daemon.berth("history", NAME).stdout
    assert "secret e2e-token changed" in history

    refused = daemon.berth("secret", "rm", "e2e-token", check=False)
    assert refused.returncode == 1 and NAME in refused.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(spec(echo_image, free_port()).replace("e2e-token", "nope"))
    missing = daemon.berth("apply", "--dry-run", str(unknown), check=False)
    assert 'env.HF_TOKEN.secret: no such secret "nope"' in missing.stderr

    outputs = [created.stdout, created.stderr, updated.stdout, updated.stderr]
    outputs += [applied.stdout.encode(), applied.stderr.encode(), refused.stderr.encode()]
    for args in (
        ("get", NAME),
        ("get", NAME, "--json"),
        ("history", NAME),
        ("history", NAME, "--json"),
        ("history", NAME, "--diff", "2"),
        ("history", NAME, "--diff", "2", "--json"),
        ("events",),
        ("events", "--json"),
        ("logs", NAME),
        ("metrics", NAME),
        ("metrics", NAME, "--json"),
        ("secret", "ls"),
        ("secret", "ls", "--json"),
        ("status", "--json"),
    ):
        result = daemon.berth(*args)
        outputs += [result.stdout.encode(), result.stderr.encode()]
    shown = b"\n".join(outputs)
    assert b'{ secret = "e2e-token" }' in shown  # get shows the reference
    assert b"e2e-token" in shown and b"fingerprint" in shown
    port = daemon.metrics_port  # type: ignore[attr-defined]
    prometheus = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).content
    assert NAME.encode() in prometheus

    # The files, read while berthd runs (the WAL holds the newest pages) and after it stopped.
    database = [state / f"berth.db{suffix}" for suffix in ("", "-wal", "-shm")]
    while_running = b"".join(p.read_bytes() for p in database if p.exists())
    assert daemon.signal(15) == 0
    after = b"".join(p.read_bytes() for p in database if p.exists())
    assert LITERAL.encode() in while_running + after  # the control: the search sees specs
    logs = daemon.log_path.read_bytes()
    podman_log = state / "podman-service.log"
    if podman_log.exists():
        logs += podman_log.read_bytes()
    for value in (VALUE_1, VALUE_2):
        for where, data in (
            ("the CLI's output", shown),
            ("/metrics", prometheus),
            ("berth.db and its WAL", while_running + after),
            ("the logs", logs),
        ):
            assert value not in data, f"a secret's value is in {where}"
    assert (state / "secrets" / "e2e-token").read_bytes() == VALUE_2

    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
    for path in [*database, state / "secrets" / "e2e-token"]:
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
