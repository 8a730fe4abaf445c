"""libpod's event stream as PodmanRuntime reads it: each line parsed on its own; one that cannot
be read is logged and skipped, and the stream goes on. The stream test serves the lines from a
stand-in libpod on a Unix socket (berthd's own HTTP server core), through the real client."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from daemon.http.listeners import UnixSocketListener
from daemon.http.server import HttpServer, Request, Response
from daemon.runtime.interface import ContainerEvent, TemporaryRuntimeError
from daemon.runtime.libpod_json import MalformedEvent, parse_event
from daemon.runtime.podman import PodmanRuntime

CID = "ab" * 32


def line(body: object) -> bytes:
    return json.dumps(body).encode()


def test_a_container_event_with_labels() -> None:
    event = parse_event(
        line(
            {
                "status": "start",
                "id": CID,
                "Type": "container",
                "Actor": {"ID": CID, "Attributes": {"io.berth.deployment": "web", "name": "x"}},
            }
        )
    )
    assert event == ContainerEvent(CID, "start", {"io.berth.deployment": "web"}, None)


def test_died_carries_its_exit_code_and_the_fallback_fields_are_read() -> None:
    body = {"Action": "died", "Actor": {"ID": CID, "Attributes": {"containerExitCode": "137"}}}
    assert parse_event(line(body)) == ContainerEvent(CID, "died", {}, 137)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "not JSON"),
        (b'{"status": "start", "id": "', "not JSON"),  # cut short
        (b"\xff\xfe{}", "not JSON"),  # not UTF-8
        (b"[1, 2]", "not a JSON object but list"),
        (b"null", "not a JSON object but NoneType"),
        (line({"id": CID}), "no status or Action"),
        (line({"status": "start"}), "no id or Actor.ID"),
        (line({"status": 5, "id": CID}), "status is int, not str"),
        (line({"status": "start", "id": ["x"]}), "id is list, not str"),
        (line({"status": "start", "id": CID, "Actor": "me"}), "Actor is str, not dict"),
        (
            line({"status": "start", "id": CID, "Actor": {"Attributes": ["a"]}}),
            "Attributes is list, not dict",
        ),
        (
            line({"status": "start", "id": CID, "Actor": {"Attributes": {"io.berth.x": 1}}}),
            "Actor.Attributes.io.berth.x is int, not a string",
        ),
        (
            line(
                {"status": "died", "id": CID, "Actor": {"Attributes": {"containerExitCode": "x"}}}
            ),
            "containerExitCode 'x' is not a number",
        ),
    ],
)
def test_an_event_that_cannot_be_read_says_why(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedEvent, match="^" + re.escape(why)):
        parse_event(raw)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        yield Path(d)


def event_line(action: str, n: int) -> bytes:
    body = {"status": action, "id": f"{n:064x}", "Actor": {"Attributes": {"io.berth.n": str(n)}}}
    return line(body) + b"\n"


async def test_the_stream_skips_what_it_cannot_read_and_goes_on(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [event_line("start", 1), event_line("died", 2), event_line("remove", 3)]
    sent = (
        good[0]
        + b"garbage that is not JSON\n"
        + line({"status": "start"})  # no id
        + b"\n"
        + line({"status": "start", "id": CID, "Actor": "me"})
        + b"\n\n"
        + good[1]
        + b"[]\n"
        + good[2]
    )
    finished = trio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(sent), 7):  # lines cut across chunks
            yield sent[i : i + 7]
        await finished.wait()  # an event stream does not end: the reader stops reading

    async def libpod(request: Request) -> Response:
        assert request.path == "/v4.0.0/libpod/events"
        return Response(stream=chunks(), content_type="application/json")

    path = short_dir / "podman.sock"
    runtime = PodmanRuntime(f"unix://{path}")
    got: list[ContainerEvent] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(HttpServer(UnixSocketListener(path), libpod, name="libpod").run)
        with trio.fail_after(5):
            async with aclosing(runtime.events({})) as events:
                async for event in events:
                    got.append(event)
                    if len(got) == 3:
                        break
        finished.set()
        nursery.cancel_scope.cancel()
    await runtime.aclose()
    assert [(e.container_id, e.action, dict(e.labels)) for e in got] == [
        (f"{n:064x}", action, {"io.berth.n": str(n)})
        for n, action in ((1, "start"), (2, "died"), (3, "remove"))
    ]
    skipped = [r for r in caplog.records if r.name == "berthd.podman"]
    assert [r.levelno for r in skipped] == [logging.WARNING] * 4
    assert "skipped an event that cannot be read (not JSON" in skipped[0].getMessage()
    assert "(no id or Actor.ID)" in skipped[1].getMessage()
    assert "(Actor is str, not dict)" in skipped[2].getMessage()
    assert "(not a JSON object but list)" in skipped[3].getMessage()


async def test_a_stream_whose_head_never_comes_fails_as_temporary(short_dir: Path) -> None:
    # Podman accepts the events request and then says nothing: the connect and the head are
    # bounded like any call (the runtime's timeout and margin), so the watcher reopens it.
    never = trio.Event()

    async def libpod(request: Request) -> Response:
        await never.wait()
        raise AssertionError("unreachable")

    path = short_dir / "podman.sock"
    runtime = PodmanRuntime(f"unix://{path}", timeout=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(HttpServer(UnixSocketListener(path), libpod, name="libpod").run)
        with trio.fail_after(30), pytest.raises(TemporaryRuntimeError, match="did not answer"):
            async with aclosing(runtime.events({})) as events:
                async for _ in events:
                    pass
        never.set()
        nursery.cancel_scope.cancel()
    await runtime.aclose()
