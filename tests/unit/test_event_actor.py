"""Who caused an event: SO_PEERCRED on the admin socket -> Request.peer_uid -> the events
emitted while the request is handled (real Unix sockets, a real SQLite store)."""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from daemon.cli.format import event_line
from daemon.http.listeners import TcpListener, UnixSocketListener
from daemon.http.server import HttpServer, Request, Response
from daemon.store.access import StoreAccess
from daemon.store.database import Store
from daemon.store.events import EventLog, acting_as
from daemon.store.migrations import MIGRATIONS

NOBODY = 65534


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A short directory anyone may enter (its socket is made 0666 by the test)."""
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        os.chmod(d, 0o755)
        yield Path(d)


async def record_uid(request: Request) -> Response:
    return Response(json={"uid": request.peer_uid})


async def test_a_unix_socket_request_carries_the_callers_uid(open_dir: Path) -> None:
    path = open_dir / "s.sock"
    server = HttpServer(UnixSocketListener(path), record_uid, name="admin")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as c:
            assert (await c.get("/")).json() == {"uid": os.geteuid()}
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user takes root")
async def test_another_users_request_carries_its_uid(open_dir: Path) -> None:
    path = open_dir / "s.sock"
    server = HttpServer(UnixSocketListener(path), record_uid, name="admin")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        path.chmod(0o666)
        script = (
            "import http.client, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "c = http.client.HTTPConnection('b'); c.sock = s\n"
            "c.request('GET', '/'); print(c.getresponse().read().decode())\n"
        )
        as_nobody = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
            str(path),
        ]
        done = await trio.run_process(as_nobody, capture_stdout=True, check=True)
        assert done.stdout.decode().strip() == f'{{"uid": {NOBODY}}}'
        nursery.cancel_scope.cancel()


async def test_tcp_requests_have_no_uid() -> None:
    server = HttpServer(TcpListener("127.0.0.1:0"), record_uid, name="metrics")
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.run)
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"http://{host}:{port}/")).json() == {"uid": None}
        nursery.cancel_scope.cancel()


async def test_events_record_the_uid_they_were_emitted_for(tmp_path: Path) -> None:
    store = Store(tmp_path / "berth.db")
    events = EventLog(StoreAccess(store))

    async def in_a_child_task() -> None:
        await events.emit("scaled", "child", deployment="echo")

    with acting_as(1000):
        await events.emit("applied", "revision 1", deployment="echo")
        # A task started from the request (a worker) is not the caller's doing.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_a_child_task)
    await events.emit("created", "berthd's own doing", deployment="echo")
    with acting_as(0):
        await events.emit("removed", "by root", deployment="echo")
    assert [(e.kind, e.uid) for e in store.events()] == [
        ("applied", 1000),
        ("scaled", None),
        ("created", None),
        ("removed", 0),
    ]
    store.close()


def test_berth_events_shows_the_uid() -> None:
    event = {"time": "2024-05-01T12:00:00.000Z", "deployment": "echo", "kind": "applied"}
    assert event_line({**event, "message": "revision 1", "uid": 1000}).endswith(
        "revision 1  uid=1000"
    )
    assert event_line({**event, "message": "revision 1", "uid": None}).endswith("revision 1")


def test_the_uid_column_is_added_to_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for sql in MIGRATIONS[:3]:  # events, as the first berthd made it
        conn.executescript(sql)
    conn.execute("INSERT INTO events (time, kind, message) VALUES ('t', 'old', 'before')")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    store = Store(path)
    [old] = store.events()
    assert old.uid is None and old.message == "before"
    assert store.add_event("new", "after", uid=1000).uid == 1000
    store.close()
