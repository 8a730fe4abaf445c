"""The `berth` command against a real admin HttpServer whose handler returns canned answers.

The stub stands in for berthd's routes (tested end to end elsewhere); what is checked here
is the command's side: requests sent, tables printed, `--json`, errors as one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from daemon.cli import commands as cli_commands
from daemon.cli import main as cli
from daemon.cli.client import _connect_failure
from daemon.http.listeners import UnixSocketListener
from daemon.http.server import HttpServer, Request, Response

REPO = Path(__file__).resolve().parents[2]

SPEC_1 = 'name = "echo"\nimage = "localhost/berth-echo:1"\nport = 8080\n'
SPEC_2 = 'name = "echo"\nimage = "localhost/berth-echo:2"\nport = 8080\n'

SUMMARY = {
    "name": "echo",
    "deployment_id": "d-7f3a",
    "revision": 2,
    "spec_id": "3f9c0a1b2c3d",
    "desired": 2,
    "ready": 2,
    "endpoint": "http://127.0.0.1:18080",
    "status": "running",
    "pinned": None,
}
DEPLOYMENT = {
    **SUMMARY,
    "created_at": "2024-05-01T12:00:05.250000+00:00",
    "spec": SPEC_2,
    "startup_budget": 900.0,
    "replicas": [
        {
            "id": "r1",
            "container_id": "0123456789abcdef0123",
            "state": "ready",
            "ready": True,
            "restarts": 0,
            "host_port": 40001,
            "spec_id": "3f9c0a1b2c3d",
            "gpus": [],
        },
        {
            "id": "r2",
            "container_id": "fedcba9876543210fedc",
            "state": "starting",
            "ready": False,
            "restarts": 3,
            "host_port": 40002,
            "spec_id": "3f9c0a1b2c3d",
            "gpus": [],
            "last_probe": "HTTP 503",
            "consecutive_failures": 2,
            "last_exit_reason": "exited with code 1",
        },
    ],
}
HISTORY = [
    {
        "revision": 1,
        "spec_id": "aaaaaaaaaaaa",
        "created_at": "2024-05-01T11:00:00Z",
        "active": False,
        "status": "superseded",
        "reason": None,
    },
    {
        "revision": 2,
        "spec_id": "3f9c0a1b2c3d",
        "created_at": "2024-05-01T12:00:05Z",
        "active": True,
        "status": "active",
        "reason": None,
    },
]
EVENTS = [
    {
        "id": 1,
        "time": "2024-05-01T12:00:05Z",
        "deployment": "echo",
        "replica": "r1",
        "kind": "started",
        "message": "replica started",
    },
    {
        "id": 2,
        "time": "2024-05-01T12:00:09Z",
        "deployment": "echo",
        "replica": None,
        "kind": "scaled",
        "message": "2 -> 3 (request_duration)",
    },
]


@dataclass
class StubBerthd:
    """Canned answers by route; records every request it gets."""

    requests: list[Request] = field(default_factory=list)
    apply_answer: Response = field(
        default_factory=lambda: Response(
            json={
                "name": "echo",
                "deployment_id": "d-7f3a",
                "revision": 2,
                "spec_id": "3f9c0a1b2c3d",
                "outcome": "updated",
            }
        )
    )
    # Successive answers for GET /v1/deployments/echo (the last one repeats).
    gets: list[dict[str, Any]] = field(default_factory=lambda: [DEPLOYMENT])
    stream_closed: trio.Event = field(default_factory=trio.Event)

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        match request.method, request.path:
            case "GET", "/v1/deployments":
                return Response(json=[SUMMARY])
            case "POST", "/v1/deployments":
                return self.apply_answer
            case "GET", "/v1/deployments/echo":
                return Response(json=self.gets.pop(0) if len(self.gets) > 1 else self.gets[0])
            case "GET", "/v1/deployments/echo/history":
                return Response(json=HISTORY)
            case "GET", "/v1/deployments/echo/revisions/1":
                return Response(json={**HISTORY[0], "spec": SPEC_1})
            case "GET", "/v1/deployments/echo/revisions/2":
                return Response(json={**HISTORY[1], "spec": SPEC_2})
            case "POST", "/v1/deployments/echo/rollback":
                return Response(
                    json={
                        "name": "echo",
                        "deployment_id": "d-7f3a",
                        "revision": 3,
                        "spec_id": "aaaaaaaaaaaa",
                        "outcome": "updated",
                        "from_revision": 1,
                    }
                )
            case "POST", "/v1/deployments/echo/scale":
                return Response(
                    json={"name": "echo", "pinned": json.loads(request.body)["replicas"]}
                )
            case "DELETE", "/v1/deployments/echo":
                return Response(json={"name": "echo", "deployment_id": "d-7f3a", "removed": True})
            case "GET", "/v1/deployments/echo/logs" if "follow" not in request.query:
                return Response(text="r1 | hello\n", content_type="text/plain")
            case "GET", "/v1/deployments/echo/logs":
                return Response(stream=self._logs(), content_type="text/plain")
            case "GET", "/v1/deployments/echo/metrics":
                return Response(json=METRICS)
            case "GET", "/v1/events":
                body = "".join(json.dumps(e) + "\n" for e in EVENTS)
                return Response(text=body, content_type="application/x-ndjson")
            case "GET", "/v1/status":
                return Response(json=STATUS)
            case "GET", "/v1/deployments/crash":
                raise RuntimeError("the store is locked")
        name = request.path.split("/")[3] if request.path.count("/") >= 3 else "?"
        return Response(status=404, json={"error": f"no deployment named {name!r}"})

    async def _logs(self) -> AsyncIterator[bytes]:
        try:
            yield b"r1 | hello\n"
            yield b"r2 | world\n"
            await trio.sleep_forever()
        finally:
            self.stream_closed.set()


METRICS = {
    "name": "echo",
    "window": 60.0,
    "in_flight": 1,
    "requests_total": 1000,
    "status": {"s2xx": 990, "s3xx": 0, "s4xx": 0, "s5xx": 10, "other": 0},
    "latency": {"count": 600, "p50": 0.0123, "p95": 0.25, "p99": 0.5},
    "replicas": [
        {
            "replica_id": "r1",
            "in_flight": 1,
            "requests_total": 500,
            "status": {},
            "latency": {"count": 300, "p50": 0.012, "p95": 0.2, "p99": 0.4},
            "cpu_percent": 12.5,
            "memory_bytes": 268435456,
        }
    ],
}
STATUS = {
    "version": "0.1.0",
    "podman": "podman 4.3.1 (API 4.3.1)",
    "gpus": [{"index": 0, "name": "NVIDIA H100", "memory_total": 85899345920}],
    "deployments": 1,
    "state_dir": "/var/lib/berth",
    "instance": "b3f1",
    "pid": 4242,
    "started_at": "2024-05-01T12:00:00.250Z",
    "uptime_s": 7384.2,
    "last_unclean_stop": {"at": "2024-05-01T11:59:31.000Z", "down_s": 29.3, "pid": 4100},
}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(autouse=True)
def no_env_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BERTH_SOCKET", raising=False)


@asynccontextmanager
async def berthd(path: Path, stub: StubBerthd) -> AsyncIterator[StubBerthd]:
    async with trio.open_nursery() as nursery:
        await nursery.start(HttpServer(UnixSocketListener(path), stub.handle, name="admin").run)
        yield stub
        nursery.cancel_scope.cancel()


async def berth(path: Path, *argv: str) -> int:
    """Run the command in a thread (it is synchronous) while the server runs on trio."""
    return await trio.to_thread.run_sync(cli.main, ["--socket", str(path), *argv])


async def test_ls_prints_an_aligned_table(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    async with berthd(path, StubBerthd()):
        assert await berth(path, "ls") == 0
    assert capsys.readouterr().out == (
        "NAME  READY/DESIRED  REVISION  ENDPOINT                STATUS\n"
        "echo  2/2            2         http://127.0.0.1:18080  running\n"
    )


async def test_json_prints_the_servers_json(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    async with berthd(path, StubBerthd()):
        assert await berth(path, "ls", "--json") == 0
        assert json.loads(capsys.readouterr().out) == [SUMMARY]
        assert await berth(path, "get", "echo", "--json") == 0
        assert json.loads(capsys.readouterr().out) == DEPLOYMENT
        assert await berth(path, "history", "echo", "--json") == 0
        assert json.loads(capsys.readouterr().out) == HISTORY
        assert await berth(path, "status", "--json") == 0
        assert json.loads(capsys.readouterr().out) == STATUS


async def test_get_shows_the_deployment_replicas_and_spec(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    async with berthd(path, StubBerthd()):
        assert await berth(path, "get", "echo") == 0
    out = capsys.readouterr().out
    assert "name:           echo\n" in out
    assert "replicas:       2/2 ready\n" in out
    assert "created:        2024-05-01T12:00:05Z\n" in out
    assert "startup:        15m budget\n" in out
    assert (
        "ID  CONTAINER     STATE     READY  RESTARTS  PORT   SPEC_ID       LAST PROBE"
        "            LAST EXIT\n"
        "r1  0123456789ab  ready     yes    0         40001  3f9c0a1b2c3d  -"
        "                     -\n"
        "r2  fedcba987654  starting  no     3         40002  3f9c0a1b2c3d  HTTP 503 (2 failing)"
        "  exited with code 1\n"
    ) in out
    assert '  image = "localhost/berth-echo:2"\n' in out


async def test_history_table_and_diff(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = short_dir / "b.sock"
    async with berthd(path, StubBerthd()):
        assert await berth(path, "history", "echo") == 0
        assert capsys.readouterr().out == (
            "REVISION  SPEC_ID       CREATED               STATUS\n"
            "1         aaaaaaaaaaaa  2024-05-01T11:00:00Z  superseded\n"
            "2         3f9c0a1b2c3d  2024-05-01T12:00:05Z  active\n"
        )
        assert await berth(path, "history", "echo", "--diff", "2") == 0
    out = capsys.readouterr().out
    assert "--- echo revision 1 (aaaaaaaaaaaa)\n+++ echo revision 2 (3f9c0a1b2c3d)\n" in out
    assert '-image = "localhost/berth-echo:1"\n+image = "localhost/berth-echo:2"\n' in out


async def test_apply_posts_the_file_and_reports_the_revision(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    spec = short_dir / "echo.toml"
    spec.write_text(SPEC_2)
    stub = StubBerthd()
    async with berthd(path, stub):
        assert await berth(path, "apply", str(spec)) == 0
        assert capsys.readouterr().out == "echo: revision 2, spec_id 3f9c0a1b2c3d (updated)\n"
        stub.apply_answer = Response(
            json={"name": "echo", "revision": 2, "spec_id": "3f9c0a1b2c3d", "outcome": "unchanged"}
        )
        assert await berth(path, "apply", str(spec)) == 0
        assert capsys.readouterr().out == "echo: unchanged (revision 2, spec_id 3f9c0a1b2c3d)\n"
    sent = stub.requests[0]
    assert sent.body.decode() == SPEC_2
    assert sent.query["source"] == str(spec)
    assert sent.headers["content-type"] == "application/toml"


async def test_a_refused_spec_lists_its_problems(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    spec = short_dir / "bad.toml"
    spec.write_text("name = 'x'\n")
    stub = StubBerthd()
    stub.apply_answer = Response(
        status=400,
        json={
            "error": f"{spec}: spec refused",
            "problems": [
                "replicas.max: must be >= replicas.min (1 < 2)",
                "port: must be 1..65535 (got 0)",
            ],
        },
    )
    async with berthd(path, stub):
        assert await berth(path, "apply", str(spec)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"berth: {spec}: spec refused, 2 problems:\n"
        "  replicas.max: must be >= replicas.min (1 < 2)\n"
        "  port: must be 1..65535 (got 0)\n"
    )


async def test_apply_of_a_missing_file(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await berth(short_dir / "b.sock", "apply", str(short_dir / "nope.toml")) == 1
    assert capsys.readouterr().err == (
        f"berth: cannot read {short_dir / 'nope.toml'}: No such file or directory\n"
    )


async def test_apply_wait_follows_the_rollout(
    short_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_commands, "WAIT_POLL_SECONDS", 0.01)
    path = short_dir / "b.sock"
    spec = short_dir / "echo.toml"
    spec.write_text(SPEC_2)
    stub = StubBerthd(
        gets=[
            {**DEPLOYMENT, "status": "progressing", "updated": 1, "ready": 1},
            {**DEPLOYMENT, "status": "progressing", "updated": 1, "ready": 1},
            {**DEPLOYMENT, "status": "progressing", "updated": 2, "ready": 1},
            {**DEPLOYMENT, "updated": 2, "ready": 2},
        ]
    )
    async with berthd(path, stub):
        assert await berth(path, "apply", str(spec), "--wait") == 0
    assert capsys.readouterr().out == (
        "echo: revision 2, spec_id 3f9c0a1b2c3d (updated)\n"
        "echo: progressing, 1/2 updated, 1 ready (revision 2)\n"
        "echo: progressing, 2/2 updated, 1 ready (revision 2)\n"
        "echo: running, 2/2 updated, 2 ready (revision 2)\n"
    )


async def test_apply_wait_reports_a_failed_rollout(
    short_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_commands, "WAIT_POLL_SECONDS", 0.01)
    path = short_dir / "b.sock"
    spec = short_dir / "echo.toml"
    spec.write_text(SPEC_2)
    failed = {**DEPLOYMENT, "status": "failed", "reason": "image not found", "replicas": []}
    async with berthd(path, StubBerthd(gets=[failed])):
        assert await berth(path, "apply", str(spec), "--wait") == 1
    assert capsys.readouterr().err == "berth: echo: rollout failed: image not found\n"


async def test_apply_wait_gives_up_after_its_timeout(
    short_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_commands, "WAIT_POLL_SECONDS", 0.01)
    path = short_dir / "b.sock"
    spec = short_dir / "echo.toml"
    spec.write_text(SPEC_2)
    stuck = {**DEPLOYMENT, "status": "progressing", "replicas": []}
    async with berthd(path, StubBerthd(gets=[stuck])):
        assert await berth(path, "apply", str(spec), "--wait", "--timeout", "0.05") == 1
    err = capsys.readouterr().err
    assert err == "berth: echo: still progressing after 0.05s (see `berth get echo`)\n"


async def test_server_errors_are_one_line(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    async with berthd(path, StubBerthd()):
        assert await berth(path, "get", "nope") == 1
        assert capsys.readouterr() == ("", "berth: no deployment named 'nope'\n")
        # A handler crash in berthd: the 500's message, still one line.
        assert await berth(path, "get", "crash") == 1
        assert capsys.readouterr().err == (
            "berth: internal error: RuntimeError: the store is locked\n"
        )


async def test_unreachable_daemon(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = short_dir / "berth.sock"
    assert await berth(missing, "ls") == 1
    assert capsys.readouterr() == (
        "",
        f"berth: cannot reach berthd at {missing} (is berthd running?)\n",
    )
    # A socket file that nobody serves (berthd was killed) reads the same.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(missing))
    dead.close()
    assert await berth(missing, "status") == 1
    assert capsys.readouterr().err == (
        f"berth: cannot reach berthd at {missing} (is berthd running?)\n"
    )


def test_default_socket_and_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, short_dir: Path
) -> None:
    if Path("/run/berth/berth.sock").exists():
        pytest.skip("a berthd is running here")
    assert cli.main(["ls"]) == 1
    assert capsys.readouterr().err == (
        "berth: cannot reach berthd at /run/berth/berth.sock (is berthd running?)\n"
    )
    monkeypatch.setenv("BERTH_SOCKET", str(short_dir / "env.sock"))
    assert cli.main(["ls"]) == 1
    assert f"at {short_dir / 'env.sock'} " in capsys.readouterr().err
    # --socket wins over the environment, before or after the subcommand.
    assert cli.main(["status", "--socket", str(short_dir / "flag.sock")]) == 1
    assert f"at {short_dir / 'flag.sock'} " in capsys.readouterr().err


def test_permission_denied_is_named() -> None:
    cause = PermissionError(13, "Permission denied")
    error = httpx.ConnectError("[Errno 13] Permission denied")
    error.__cause__ = cause
    assert _connect_failure("/run/berth/berth.sock", error) == (
        "permission denied on /run/berth/berth.sock (join the socket's group, or run berth as root)"
    )


async def test_rollback_scale_rm(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = short_dir / "b.sock"
    stub = StubBerthd()
    async with berthd(path, stub):
        assert await berth(path, "rollback", "echo", "--to", "1") == 0
        assert capsys.readouterr().out == (
            "echo: revision 3, spec_id aaaaaaaaaaaa (the spec of revision 1)\n"
        )
        assert await berth(path, "rollback", "echo") == 0
        assert await berth(path, "scale", "echo", "3") == 0
        assert capsys.readouterr().out.endswith("echo: pinned at 3 replicas\n")
        assert await berth(path, "scale", "echo", "--auto") == 0
        assert capsys.readouterr().out == "echo: replica count handed back to the autoscaler\n"
        assert await berth(path, "rm", "echo") == 0
        assert capsys.readouterr().out == "echo: removed (its history is kept)\n"
    bodies = [json.loads(r.body) for r in stub.requests if r.method == "POST"]
    assert bodies == [{"to": 1}, {"to": None}, {"replicas": 3}, {"replicas": None}]
    assert stub.requests[-1].method == "DELETE"


async def test_scale_needs_a_count_or_auto(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await berth(short_dir / "b.sock", "scale", "echo") == 2
    assert capsys.readouterr().err == "berth: scale: give a replica count or --auto (one of them)\n"
    assert await berth(short_dir / "b.sock", "scale", "echo", "2", "--auto") == 2


async def test_usage_errors_exit_2(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await berth(short_dir / "b.sock", "frobnicate") == 2
    assert "invalid choice" in capsys.readouterr().err


async def test_logs_events_metrics_status(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = short_dir / "b.sock"
    stub = StubBerthd()
    async with berthd(path, stub):
        assert await berth(path, "logs", "echo", "--replica", "r1") == 0
        assert capsys.readouterr().out == "r1 | hello\n"
        assert stub.requests[-1].query == {"replica": "r1"}
        assert await berth(path, "events", "echo", "--limit", "5") == 0
        assert capsys.readouterr().out == (
            "2024-05-01T12:00:05Z  echo             r1           started      replica started\n"
            "2024-05-01T12:00:09Z  echo             -            scaled       "
            "2 -> 3 (request_duration)\n"
        )
        assert stub.requests[-1].query == {"deployment": "echo", "limit": "5"}
        assert await berth(path, "events", "--json") == 0
        lines = capsys.readouterr().out.splitlines()
        assert [json.loads(line) for line in lines] == EVENTS
        assert await berth(path, "metrics", "echo", "--since", "5m") == 0
        out = capsys.readouterr().out
        assert stub.requests[-1].query == {"since": "5m"}
        assert out.splitlines()[0].split() == [
            "REPLICA", "CPU", "MEMORY", "GPU", "GPU_MEMORY", "REQ/S", "P50", "P95", "IN_FLIGHT"
        ]  # fmt: skip
        assert out.splitlines()[1].split() == [
            "r1", "12.5%", "256Mi", "-", "-", "5.0", "12.0ms", "200ms", "1"
        ]  # fmt: skip
        assert "endpoint: 10.0 req/s, p50 12.3ms, p95 250ms, 1 in flight (over the last 60s)" in out
        assert await berth(path, "status") == 0
        out = capsys.readouterr().out
        assert "podman:             podman 4.3.1 (API 4.3.1)\n" in out
        assert "uptime:             2h03m (since 2024-05-01T12:00:00Z, pid 4242)\n" in out
        assert (
            "last unclean stop:  last alive 2024-05-01T11:59:31Z (pid 4100), down 29.3s at most\n"
        ) in out
        unclean = STATUS["last_unclean_stop"]
        STATUS["last_unclean_stop"] = None
        try:
            assert await berth(path, "status") == 0
        finally:
            STATUS["last_unclean_stop"] = unclean
        assert "last unclean stop:  none\n" in capsys.readouterr().out
        assert "  0: NVIDIA H100 (80Gi)\n" in out


def _interactive_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


async def test_logs_follow_stops_on_ctrl_c(short_dir: Path) -> None:
    """`berth logs -f` as a real process: output streams, Ctrl-C exits 130 without a word."""
    path = short_dir / "b.sock"
    stub = StubBerthd()
    async with berthd(path, stub):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "daemon.cli.main", "--socket", str(path)]
        process = await trio.lowlevel.open_process(
            [*command, "logs", "echo", "-f", "--tail", "10"],
            stdout=-1,
            stderr=-1,
            cwd=str(REPO),
            env=env,
            # As from a shell: SIGINT handled and not blocked, whatever this test process's
            # threads (trio's spawn runs in one) inherited from libraries loaded before.
            preexec_fn=_interactive_signals,
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            output = b""
            with trio.fail_after(20):
                while b"world" not in output:
                    chunk = await process.stdout.receive_some()
                    assert chunk, "berth logs ended early"
                    output += chunk
            process.send_signal(signal.SIGINT)
            with trio.fail_after(30):  # a loaded 2-core box: one run here took over 10 s
                returncode = await process.wait()
                errors = b""
                while chunk := await process.stderr.receive_some():
                    errors += chunk
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
        assert output == b"r1 | hello\nr2 | world\n"
        assert returncode == 130
        assert errors == b""
        with trio.fail_after(5):
            await stub.stream_closed.wait()
    assert stub.requests[-1].query == {"tail": "10", "follow": "1"}
