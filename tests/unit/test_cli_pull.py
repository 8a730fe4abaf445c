"""`berth pull` and a pull under way in `berth apply --wait` / `berth get`, against a stub
admin server that streams the lines berthd's pull route writes (docs/admin-api.md)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.cli import commands as cli_commands
from daemon.cli import main as cli
from daemon.cli.pull import ProgressPrinter, pulling_text
from daemon.http.listeners import UnixSocketListener
from daemon.http.server import HttpServer, Request, Response

IMAGE = "127.0.0.1:5000/team/model:1"


def pulling(layers_done: int, bytes_done: int, seconds: float = 10.0) -> dict[str, Any]:
    return {
        "image": IMAGE,
        "layers_done": layers_done,
        "layers_total": 11,
        "bytes_done": bytes_done,
        "bytes_total": 7_400_000_000,
        "started_at": "2024-05-01T12:00:05.000Z",
        "seconds": seconds,
        "summary": f"{layers_done}/11 layers, {bytes_done / 1e9:.1f}/7.4 GB",
    }


DONE = {
    "image": IMAGE,
    "done": True,
    "seconds": 72.4,
    "layers_done": 11,
    "layers_total": 11,
    "bytes_done": 7_400_000_000,
    "bytes_total": 7_400_000_000,
    "summary": "11/11 layers, 7.4/7.4 GB",
}
DEPLOYMENT = {
    "name": "echo",
    "revision": 1,
    "spec_id": "3f9c0a1b2c3d",
    "desired": 1,
    "ready": 0,
    "updated": 0,
    "status": "progressing",
    "endpoint": "http://127.0.0.1:18080",
    "replicas": [],
    "spec": "",
}


@dataclass
class Stub:
    lines: list[dict[str, Any]] = field(default_factory=list)
    gets: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        self.requests.append(f"{request.method} {request.path}")
        match request.method, request.path:
            case "POST", "/v1/deployments/echo/pull":
                return Response(stream=self._lines(), content_type="application/x-ndjson")
            case "POST", "/v1/deployments":
                return Response(
                    json={"name": "echo", "revision": 1, "spec_id": "3f9c", "outcome": "created"}
                )
            case "GET", "/v1/deployments/echo":
                return Response(json=self.gets.pop(0) if len(self.gets) > 1 else self.gets[0])
        return Response(status=404, json={"error": "no deployment named 'nosuch'"})

    async def _lines(self) -> AsyncIterator[bytes]:
        for line in self.lines:
            yield (json.dumps(line) + "\n").encode()


@pytest.fixture
def sock() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        yield Path(d) / "b.sock"


@asynccontextmanager
async def serving(path: Path, stub: Stub) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(HttpServer(UnixSocketListener(path), stub.handle, name="admin").run)
        yield
        nursery.cancel_scope.cancel()


async def berth(path: Path, *argv: str) -> int:
    return await trio.to_thread.run_sync(cli.main, ["--socket", str(path), *argv])


def test_pulling_text_and_which_lines_are_worth_printing() -> None:
    assert pulling_text(pulling(6, 3_100_000_000, 42.4)) == (
        f"pulling {IMAGE} 6/11 layers, 3.1/7.4 GB (42s)"
    )
    assert pulling_text(None) is None and pulling_text({"image": ""}) is None
    printer = ProgressPrinter(every=5.0)
    assert printer.worth_printing(pulling(1, 10), 0.0)
    assert not printer.worth_printing(pulling(1, 20), 4.0)  # same layers, too soon
    assert printer.worth_printing(pulling(2, 30), 4.5)  # another layer is done
    assert printer.worth_printing(pulling(2, 40), 9.6)  # 5 s since the last line


async def test_berth_pull_follows_and_says_when_the_image_is_there(
    sock: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [{"pulling": pulling(1, 500_000_000)}, {"pulling": pulling(1, 600_000_000)}]
    stub = Stub(lines=[*lines, {"pulling": pulling(2, 900_000_000)}, DONE])
    async with serving(sock, stub):
        assert await berth(sock, "pull", "echo") == 0
    assert stub.requests == ["POST /v1/deployments/echo/pull"]
    assert capsys.readouterr().out == (
        f"echo: pulling {IMAGE} 1/11 layers, 0.5/7.4 GB (10s)\n"
        f"echo: pulling {IMAGE} 2/11 layers, 0.9/7.4 GB (10s)\n"
        f"echo: {IMAGE} is on this host (pulled in 72.4s, 11/11 layers, 7.4/7.4 GB)\n"
    )


async def test_berth_pull_json_prints_berthds_lines(
    sock: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub = Stub(lines=[{"pulling": pulling(1, 5)}, DONE])
    async with serving(sock, stub):
        assert await berth(sock, "pull", "echo", "--json") == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in out] == stub.lines


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [{"image": IMAGE, "done": False, "error": f"pull {IMAGE}: manifest unknown"}],
            f"berth: echo: pull {IMAGE}: manifest unknown\n",
        ),
        ([{"pulling": pulling(1, 5)}], "berth: echo: berthd ended the pull before saying how\n"),
    ],
)
async def test_berth_pull_fails_with_one_line(
    sock: Path, capsys: pytest.CaptureFixture[str], lines: list[dict[str, Any]], message: str
) -> None:
    async with serving(sock, Stub(lines=lines)):
        assert await berth(sock, "pull", "echo") == 1
    assert capsys.readouterr().err.startswith(message.rstrip("\n"))


async def test_berth_pull_of_an_unknown_deployment(
    sock: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(sock, Stub()):
        assert await berth(sock, "pull", "nosuch") == 1
    assert capsys.readouterr().err == "berth: no deployment named 'nosuch'\n"


async def test_apply_wait_and_get_show_a_pull_under_way(
    sock: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_commands, "WAIT_POLL_SECONDS", 0.01)
    spec = sock.parent / "echo.toml"
    spec.write_text('name = "echo"\n')
    stub = Stub(
        gets=[
            *({**DEPLOYMENT, "pulling": pulling(1, 100 * i)} for i in range(1, 20)),
            {**DEPLOYMENT, "pulling": pulling(2, 3_100_000_000)},
            {**DEPLOYMENT, "status": "running", "ready": 1, "updated": 1},
        ]
    )
    async with serving(sock, stub):
        assert await berth(sock, "apply", str(spec), "--wait") == 0
        out = capsys.readouterr().out.splitlines()
        stub.gets = [{**DEPLOYMENT, "pulling": pulling(6, 3_100_000_000, 42)}]
        assert await berth(sock, "get", "echo") == 0
    wait = "echo: progressing, 0/1 updated, 0 ready (revision 1)"
    assert out[1:] == [  # 19 polls with one layer done: one line; the next layer: one more
        f"{wait}: pulling {IMAGE} 1/11 layers, 0.0/7.4 GB (10s)",
        f"{wait}: pulling {IMAGE} 2/11 layers, 3.1/7.4 GB (10s)",
        "echo: running, 1/1 updated, 1 ready (revision 1)",
    ]
    got = capsys.readouterr().out
    assert f"\npulling:        {IMAGE} 6/11 layers, 3.1/7.4 GB (42s)\n" in got
