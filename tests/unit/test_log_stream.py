"""Following logs (FakeRuntime): new replicas are picked up, and a follower that hangs up ends
the producer and every replica's log stream at once, through the real admin route and server."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from daemon.api.log_stream import follow_replica_logs
from daemon.api.routes import AdminApi
from daemon.http.listeners import UnixSocketListener
from daemon.http.server import HttpServer
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_REPLICA,
    ContainerSpec,
    RuntimeFailure,
)

IMAGE = "localhost/berth-echo:1"
LABELS = {LABEL_INSTANCE: "inst", LABEL_DEPLOYMENT: "web"}


async def add(runtime: FakeRuntime, rid: str, port: int) -> str:
    spec = ContainerSpec(f"berth-web-{rid}", IMAGE, {**LABELS, LABEL_REPLICA: rid}, 8080, port)
    container_id = await runtime.create(spec)
    await runtime.start(container_id)
    return container_id


async def test_follow_picks_up_new_replicas_with_prefixes(autojump_clock: MockClock) -> None:
    runtime = FakeRuntime(images={IMAGE})
    first = await add(runtime, "aaaa", 40001)
    runtime.write_log(first, b"old line\n")
    send, receive = trio.open_memory_channel[bytes](64)
    follow = partial(
        follow_replica_logs, runtime, await runtime.list(LABELS), send, tail=None, labels=LABELS
    )
    got = b""
    async with trio.open_nursery() as nursery, receive:
        nursery.start_soon(follow)
        with trio.fail_after(30):
            got += await receive.receive()
            assert got == b"aaaa | old line\n"
            second = await add(runtime, "bbbb", 40002)
            runtime.write_log(second, b"hello from the new one\n")
            while b"bbbb | hello from the new one\n" not in got:
                got += await receive.receive()
            assert runtime.log_followers == 2
        nursery.cancel_scope.cancel()
    assert runtime.log_followers == 0


async def test_one_replica_stream_failing_ends_only_its_pump() -> None:
    runtime = FakeRuntime(images={IMAGE})
    replicas = [await add(runtime, "aaaa", 40001), await add(runtime, "bbbb", 40002)]
    runtime.fail("follow_logs", RuntimeFailure("podman went away"))  # whichever asks first
    send, receive = trio.open_memory_channel[bytes](64)
    got = b""
    async with trio.open_nursery() as nursery, receive:
        containers = await runtime.list(LABELS)
        nursery.start_soon(partial(follow_replica_logs, runtime, containers, send, tail=None))
        with trio.fail_after(5):
            await runtime.wait_log_followers(1)
            for container_id in replicas:
                runtime.write_log(container_id, b"still here\n")
            while b"still here" not in got or b"log stream ended" not in got:
                got += await receive.receive()
        nursery.cancel_scope.cancel()
    failed, other = ("aaaa", "bbbb") if got.find(b"[aaaa:") >= 0 else ("bbbb", "aaaa")
    assert f"[{failed}: log stream ended: podman went away]\n".encode() in got
    assert f"{other} | still here\n".encode() in got
    assert runtime.log_followers == 0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="berth-", dir="/tmp") as d:
        yield Path(d)


def _live_task_names() -> list[str]:
    names: list[str] = []
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        names.append(task.name)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return names


async def test_a_follower_hangs_up_50_times_while_lines_flow(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = FakeRuntime(images={IMAGE})
    replicas = [await add(runtime, "aaaa", 40001), await add(runtime, "bbbb", 40002)]
    api = AdminApi(SimpleNamespace(runtime=runtime, instance="inst"))  # type: ignore[arg-type]
    path = short_dir / "berth.sock"
    server = HttpServer(UnixSocketListener(path), api.handle, name="admin")

    async def lines_flow() -> None:
        n = 0
        while True:  # a steady flow, not a synchronisation: the test waits on events
            for container_id in replicas:
                runtime.write_log(container_id, b"line %d\n" % n)
            n += 1
            await trio.sleep(0.001)

    request = b"GET /v1/deployments/web/logs?follow=1 HTTP/1.1\r\nhost: berth\r\n\r\n"
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        nursery.start_soon(lines_flow)
        for _ in range(50):
            with trio.fail_after(5):
                stream = await trio.open_unix_socket(str(path))
                async with stream:
                    await stream.send_all(request)
                    received = b""
                    while b"aaaa | line" not in received or b"bbbb | line" not in received:
                        received += await stream.receive_some(65536)
                # Hung up while lines flow: both replicas' streams close, the pumps end.
                await runtime.wait_log_followers(0)
                await trio.testing.wait_all_tasks_blocked()
            names = _live_task_names()
            left = [n for n in names if n.startswith("daemon.api.log_stream") or "_produce" in n]
            assert left == []
        nursery.cancel_scope.cancel()
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []
