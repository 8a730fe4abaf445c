"""Following a deployment's logs picks up replicas created while it follows (FakeRuntime)."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from daemon.api.log_stream import follow_replica_logs
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import LABEL_DEPLOYMENT, LABEL_REPLICA, ContainerSpec

IMAGE = "localhost/berth-echo:1"
LABELS = {LABEL_DEPLOYMENT: "web"}


async def add(runtime: FakeRuntime, rid: str, port: int) -> str:
    spec = ContainerSpec(f"berth-web-{rid}", IMAGE, {**LABELS, LABEL_REPLICA: rid}, 8080, port)
    container_id = await runtime.create(spec)
    await runtime.start(container_id)
    return container_id


async def test_follow_picks_up_new_replicas_with_prefixes(autojump_clock: MockClock) -> None:
    runtime = FakeRuntime(images={IMAGE})
    first = await add(runtime, "aaaa", 40001)
    runtime.write_log(first, b"old line\n")
    got = b""
    with trio.fail_after(30):  # the stream lives inside one scope, as in the admin server
        stream = follow_replica_logs(runtime, await runtime.list(LABELS), tail=None, labels=LABELS)
        got += await anext(stream)
        assert got == b"aaaa | old line\n"
        second = await add(runtime, "bbbb", 40002)
        runtime.write_log(second, b"hello from the new one\n")
        while b"bbbb | hello from the new one\n" not in got:
            got += await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
