"""FakeRuntime behaves like the Podman that berthd sees."""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio
import trio.testing

from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import (
    ContainerEvent,
    ContainerNotFound,
    ContainerRuntime,
    ContainerSpec,
    ImageNotFound,
    RuntimeFailure,
    TemporaryRuntimeError,
)

IMAGE = "localhost/berth-echo:1"


def spec(name: str = "echo-r1", **labels: str) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        image=IMAGE,
        labels={"io.berth.instance": "t", **labels},
        app_port=8080,
        host_port=40001,
    )


def test_is_a_container_runtime() -> None:
    runtime: ContainerRuntime = FakeRuntime()
    assert runtime is not None


async def test_lifecycle_and_calls() -> None:
    runtime = FakeRuntime({IMAGE})
    cid = await runtime.create(spec())
    assert len(cid) == 64
    assert (await runtime.inspect(cid)).status == "created"
    await runtime.start(cid)
    info = await runtime.inspect(cid)
    assert info.running and info.host_port == 40001 and info.exit_code is None
    await runtime.stop(cid, timeout=1)
    await runtime.stop(cid, timeout=1)
    assert (await runtime.inspect(cid)).status == "exited"
    await runtime.remove(cid)
    await runtime.remove(cid)
    assert runtime.containers == {}
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(cid)
    assert [call[0] for call in runtime.calls] == [
        "create", "inspect", "start", "inspect", "stop", "stop", "inspect", "remove", "remove",
        "inspect",
    ]  # fmt: skip


async def test_list_filters_by_labels() -> None:
    runtime = FakeRuntime({IMAGE})
    a = await runtime.create(spec("a", **{"io.berth.deployment": "echo"}))
    await runtime.create(spec("b", **{"io.berth.deployment": "other"}))
    listed = await runtime.list({"io.berth.deployment": "echo"})
    assert [c.container_id for c in listed] == [a]
    assert len(await runtime.list({"io.berth.instance": "t"})) == 2


async def test_failures_and_missing_images() -> None:
    runtime = FakeRuntime({IMAGE})
    runtime.fail("create", TemporaryRuntimeError("podman down"), times=2)
    for _ in range(2):
        with pytest.raises(TemporaryRuntimeError):
            await runtime.create(spec())
    cid = await runtime.create(spec())
    with pytest.raises(RuntimeFailure, match="already in use"):
        await runtime.create(spec())
    runtime.fail("start", RuntimeFailure("bad"))
    with pytest.raises(RuntimeFailure):
        await runtime.start(cid)
    await runtime.start(cid)

    with pytest.raises(ImageNotFound):
        await runtime.create(ContainerSpec("x", "nope:1", {}, 8080, 40002))
    with pytest.raises(ImageNotFound):
        await runtime.pull("nope:1")
    runtime.pullable.add("nope:1")
    await runtime.pull("nope:1")
    assert await runtime.image_exists("nope:1")


async def test_die_emits_died_to_matching_streams() -> None:
    runtime = FakeRuntime({IMAGE})
    seen: list[ContainerEvent] = []

    async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with aclosing(runtime.events({"io.berth.deployment": "echo"})) as events:
            task_status.started()
            async for event in events:
                seen.append(event)
                if event.action == "died":
                    return

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        # A stream subscribes on its first iteration (as PodmanRuntime's connects then).
        await trio.testing.wait_all_tasks_blocked()
        other = await runtime.create(spec("other", **{"io.berth.deployment": "other"}))
        await runtime.start(other)
        cid = await runtime.create(spec("a", **{"io.berth.deployment": "echo"}))
        await runtime.start(cid)
        runtime.die(cid, exit_code=137, oom_killed=True)

    assert [(e.action, e.container_id) for e in seen] == [
        ("create", cid),
        ("start", cid),
        ("died", cid),
    ]
    assert seen[-1].exit_code == 137
    info = await runtime.inspect(cid)
    assert info.status == "exited" and info.oom_killed and info.exit_code == 137


async def test_logs_and_follow_logs() -> None:
    runtime = FakeRuntime({IMAGE})
    cid = await runtime.create(spec())
    runtime.write_log(cid, b"one\ntwo\n")
    assert await runtime.logs(cid, tail=1) == b"two\n"
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def follow() -> None:
            async with aclosing(runtime.follow_logs(cid, tail=1)) as chunks:
                async for chunk in chunks:
                    got.append(chunk)
                    if b"three" in chunk:
                        return

        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        runtime.write_log(cid, b"three\n")
    assert got == [b"two\n", b"three\n"]
