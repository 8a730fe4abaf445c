"""CachingRuntime against FakeRuntime: events keep the view current, resyncs repair it, and an
unknown view is an error, never an empty or stale answer. Fake time throughout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial

import pytest
import trio
from trio.testing import MockClock

from daemon.runtime.cache import RESYNC_EVERY, RETRY_MAX, SETTLE, STABLE_STREAM, CachingRuntime
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    ContainerInfo,
    ContainerSpec,
    TemporaryRuntimeError,
)

SCOPE = {LABEL_INSTANCE: "i1"}
IMAGE = "img"


def spec(name: str, deployment: str = "web", instance: str = "i1") -> ContainerSpec:
    return ContainerSpec(
        name=name,
        image=IMAGE,
        labels={LABEL_INSTANCE: instance, LABEL_DEPLOYMENT: deployment},
        app_port=8080,
        host_port=10000,
    )


class SlowInspect(FakeRuntime):
    """inspect() reads the container at once, then answers only when `gate` is set."""

    def __init__(self) -> None:
        super().__init__(images={IMAGE})
        self.gate: trio.Event | None = None

    async def inspect(self, container_id: str) -> ContainerInfo:
        info = await super().inspect(container_id)
        if self.gate is not None:
            await self.gate.wait()
        return info


class Changes:
    """The cache's on_change hook: what changed, and a wait for the next change."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self._next = trio.Event()

    def __call__(self, labels: Mapping[str, str]) -> None:
        self.seen.append(dict(labels))
        self._next.set()
        self._next = trio.Event()

    async def wait(self) -> None:
        with trio.fail_after(1):  # a change that never comes fails the test
            await self._next.wait()


@dataclass
class Rig:
    fake: SlowInspect
    cache: CachingRuntime
    nursery: trio.Nursery
    changes: Changes

    async def next_change(self) -> None:
        await self.changes.wait()

    def lists(self) -> int:
        return sum(1 for c in self.fake.calls if c[0] == "list")

    async def view(self) -> dict[str, str]:
        return {c.name: c.status for c in await self.cache.list(SCOPE)}


@pytest.fixture
async def rig(autojump_clock: MockClock) -> AsyncIterator[Rig]:
    fake = SlowInspect()
    changes = Changes()
    async with trio.open_nursery() as nursery:
        r = Rig(fake, CachingRuntime(fake, scope=SCOPE, on_change=changes), nursery, changes)
        yield r
        nursery.cancel_scope.cancel()


async def test_unknown_until_the_first_list_then_the_view(
    rig: Rig, autojump_clock: MockClock
) -> None:
    cid = await rig.fake.create(spec("a"))
    await rig.fake.start(cid)
    with pytest.raises(TemporaryRuntimeError, match="not listed yet"):
        await rig.cache.list(SCOPE)
    await rig.nursery.start(rig.cache.run)
    assert await rig.view() == {"a": "running"}
    assert await rig.cache.list({**SCOPE, LABEL_DEPLOYMENT: "other"}) == []
    # Rounds read the view: no list reaches Podman however often they ask.
    lists = rig.lists()
    for _ in range(10):
        await rig.cache.list({**SCOPE, LABEL_DEPLOYMENT: "web"})
    assert rig.lists() == lists


async def test_events_keep_the_view_current(rig: Rig, autojump_clock: MockClock) -> None:
    await rig.nursery.start(rig.cache.run)
    await trio.sleep(SETTLE + 0.1)  # past the settle resync: from here on only events
    lists = rig.lists()
    # Changes made behind the cache's back (another client, a crash): their events update it.
    cid = await rig.fake.create(spec("a"))
    await rig.next_change()
    assert await rig.view() == {"a": "created"}
    await rig.fake.start(cid)
    await rig.next_change()
    assert await rig.view() == {"a": "running"}
    rig.fake.die(cid, exit_code=3)
    await rig.next_change()
    (dead,) = await rig.cache.list(SCOPE)
    assert (dead.status, dead.exit_code) == ("exited", 3)
    await rig.fake.remove(cid)  # `podman rm -f` from outside
    await rig.next_change()
    assert await rig.view() == {}
    assert rig.lists() == lists
    assert {c[LABEL_DEPLOYMENT] for c in rig.changes.seen} == {"web"}


async def test_own_changes_are_in_the_view_before_the_call_returns(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.nursery.start(rig.cache.run)
    cid = await rig.cache.create(spec("a"))
    # No checkpoint since: only the cache's own read can have put it there.
    assert await rig.view() == {"a": "created"}
    await rig.cache.start(cid)
    assert await rig.view() == {"a": "running"}
    await rig.cache.stop(cid, timeout=1)
    assert await rig.view() == {"a": "exited"}
    await rig.cache.remove(cid)
    assert await rig.view() == {}


async def test_a_broken_stream_is_followed_by_a_resync(rig: Rig, autojump_clock: MockClock) -> None:
    await rig.nursery.start(rig.cache.run)
    await trio.sleep(STABLE_STREAM + 1)
    cid = await rig.fake.create(spec("a"))
    await rig.next_change()
    lists = rig.lists()
    rig.fake.break_events(TemporaryRuntimeError("podman restarted"))
    # A change the broken stream never reported: only a list can see it.
    rig.fake.containers[cid].status = "exited"
    await trio.sleep(0.1)
    assert rig.lists() == lists + 1
    assert await rig.view() == {"a": "exited"}
    assert rig.cache.stream_breaks == 1
    # And the stream is open again: events flow as before.
    await rig.fake.remove(cid)
    await rig.next_change()
    assert await rig.view() == {}


async def test_stream_broken_and_the_resync_failed_is_unknown(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.nursery.start(rig.cache.run)
    await rig.fake.create(spec("a"))
    await trio.sleep(STABLE_STREAM + 1)
    assert await rig.view() == {"a": "created"}
    rig.fake.fail("list", TemporaryRuntimeError("podman is gone"), times=3)
    rig.fake.break_events(TemporaryRuntimeError("connection reset"))
    await trio.sleep(0.1)
    with pytest.raises(TemporaryRuntimeError, match="podman is gone"):
        await rig.cache.list(SCOPE)  # never the stale view, never an empty one
    await trio.sleep(RETRY_MAX)  # the retries back off (0.5 s, 1 s, 2 s), then one succeeds
    assert rig.cache.synced
    assert await rig.view() == {"a": "created"}


async def test_a_failed_inspect_after_an_event_is_unknown_until_a_resync(
    rig: Rig, autojump_clock: MockClock
) -> None:
    await rig.nursery.start(rig.cache.run)
    await trio.sleep(SETTLE + 0.1)
    rig.fake.fail("inspect", TemporaryRuntimeError("podman is busy"))
    rig.fake.fail("list", TemporaryRuntimeError("podman is busy"))
    await rig.fake.create(spec("a"))  # its event's inspect fails, then the resync
    await trio.sleep(0.01)
    with pytest.raises(TemporaryRuntimeError, match="podman is busy"):
        await rig.cache.list(SCOPE)
    await trio.sleep(1)  # the resync is retried
    assert await rig.view() == {"a": "created"}


async def test_the_periodic_resync_repairs_what_no_event_said(
    rig: Rig, autojump_clock: MockClock
) -> None:
    cid = await rig.fake.create(spec("a"))
    await rig.nursery.start(rig.cache.run)
    await trio.sleep(SETTLE + 0.1)
    rig.fake.containers.pop(cid)  # gone without an event
    assert await rig.view() == {"a": "created"}
    await trio.sleep(RESYNC_EVERY)
    assert await rig.view() == {}
    assert rig.changes.seen == [{LABEL_INSTANCE: "i1", LABEL_DEPLOYMENT: "web"}] * 2  # came, went


async def test_an_older_read_never_undoes_a_newer_one(rig: Rig, autojump_clock: MockClock) -> None:
    await rig.nursery.start(rig.cache.run)
    cid = await rig.cache.create(spec("a"))
    await rig.cache.start(cid)
    gate = rig.fake.gate = trio.Event()
    # The cache's own read after a stop (and the one after its "died" event) see "exited",
    # then wait at the gate...
    rig.nursery.start_soon(partial(rig.cache.stop, cid, timeout=1))
    await trio.sleep(0.01)
    await rig.fake.remove(cid)  # ...while the container is removed from outside
    await trio.sleep(SETTLE)  # (a resync meanwhile: it must not forget the removal yet)
    assert await rig.view() == {}
    gate.set()  # the older reads answer now, with the container as it was
    await trio.sleep(0.01)
    assert await rig.view() == {}
    await trio.sleep(RESYNC_EVERY)  # the removal's ticket is forgotten at a resync
    assert await rig.view() == {}


async def test_labels_outside_the_scope_go_to_podman(rig: Rig, autojump_clock: MockClock) -> None:
    await rig.nursery.start(rig.cache.run)
    await rig.cache.create(spec("theirs", instance="i2"))
    assert await rig.view() == {}
    lists = rig.lists()
    (theirs,) = await rig.cache.list({LABEL_INSTANCE: "i2"})
    assert theirs.name == "theirs" and rig.lists() == lists + 1


async def test_stats_many_and_the_rest_are_delegated(rig: Rig, autojump_clock: MockClock) -> None:
    cid = await rig.cache.create(spec("a"))
    await rig.cache.start(cid)
    assert list(await rig.cache.stats_many([cid])) == [cid]
    assert ("stats_many", (cid,)) in rig.fake.calls
    assert await rig.cache.version() == await rig.fake.version()
