"""CachingRuntime over the real PodmanRuntime: Podman's event stream keeps the view current.

The resyncs are pushed out of the way (an hour), so whatever the view learns after its first
list it learns from events; the runtime underneath counts the lists to prove it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import pytest
import trio

from daemon.runtime.cache import CachingRuntime
from daemon.runtime.faulty import FaultyRuntime
from daemon.runtime.interface import ContainerInfo, ContainerSpec
from daemon.runtime.podman import PodmanRuntime

pytestmark = pytest.mark.podman

WITHIN = 10.0  # seconds for the view to follow a change; events take milliseconds


class Changes:
    """The cache's on_change hook: `wait()` returns at the next change of the view."""

    def __init__(self) -> None:
        self._next = trio.Event()

    def __call__(self, labels: Mapping[str, str]) -> None:
        self._next.set()
        self._next = trio.Event()

    async def wait(self) -> None:
        await self._next.wait()


@dataclass
class Watched:
    cache: CachingRuntime
    counted: FaultyRuntime
    scope: dict[str, str]
    changes: Changes

    async def view(self) -> dict[str, ContainerInfo]:
        return {c.container_id: c for c in await self.cache.list(self.scope)}

    async def until(self, check: Callable[[dict[str, ContainerInfo]], bool]) -> None:
        """Wait, change by change, until the view passes `check` (bounded)."""
        with trio.fail_after(WITHIN):
            while not check(await self.view()):
                await self.changes.wait()


async def podman(*args: str) -> str:
    done = await trio.run_process(["podman", *args], capture_stdout=True, capture_stderr=True)
    return done.stdout.decode().strip()


@pytest.fixture
async def watched(runtime: PodmanRuntime, test_labels: dict[str, str]) -> AsyncIterator[Watched]:
    counted = FaultyRuntime(runtime)  # no faults: it counts the calls
    changes = Changes()
    cache = CachingRuntime(
        counted, scope=test_labels, on_change=changes, settle=3600, resync_every=3600
    )
    w = Watched(cache, counted, test_labels, changes)
    async with trio.open_nursery() as nursery:
        await nursery.start(w.cache.run)
        yield w
        nursery.cancel_scope.cancel()


def labels_args(labels: Mapping[str, str]) -> list[str]:
    return [f"--label={key}={value}" for key, value in labels.items()]


async def test_the_view_follows_podman_by_its_events(
    watched: Watched, echo_image: str, test_labels: dict[str, str], free_port: Callable[[], int]
) -> None:
    w = watched
    assert await w.view() == {}
    # The stream is live a moment after it opens: warm up with containers made outside until
    # one arrives by its event (there is no resync to find it).
    with trio.fail_after(WITHIN):
        while not await w.view():
            await podman("create", *labels_args(test_labels), echo_image)
            with trio.move_on_after(0.5):
                await w.changes.wait()

    # Through the cache: in the view before the call returns.
    port = free_port()
    mine = await w.cache.create(
        ContainerSpec(
            name=f"berth-test-{uuid.uuid4().hex[:10]}",
            image=echo_image,
            labels={**test_labels, "io.berth.replica": "r1"},
            app_port=8080,
            host_port=port,
            stop_timeout=1.0,
        )
    )
    assert (await w.view())[mine].status == "created"
    await w.cache.start(mine)
    assert (await w.view())[mine].running and (await w.view())[mine].host_port == port

    # Behind berthd's back: `podman run`, `podman stop`, `podman rm -f`.
    theirs = await podman("run", "-d", *labels_args(test_labels), echo_image)
    await w.until(lambda v: theirs in v and v[theirs].running)
    await podman("stop", "-t", "0", theirs)
    await w.until(lambda v: theirs in v and not v[theirs].running)
    assert (await w.view())[theirs].exit_code is not None
    await podman("rm", "-f", "-t", "0", mine)
    await w.until(lambda v: mine not in v)
    await podman("rm", "-f", "-t", "0", theirs)
    await w.until(lambda v: theirs not in v)

    assert w.counted.calls["list"] == 1  # the first one: the rest came from events
    assert w.cache.synced


async def test_a_container_of_another_instance_stays_out(
    watched: Watched, echo_image: str, test_labels: dict[str, str]
) -> None:
    other = {"io.berth.instance": f"test-{uuid.uuid4().hex[:12]}"}
    cid = await podman("create", *labels_args(other), echo_image)
    try:
        assert cid not in await watched.view()
        # ...but a list for the other instance's labels still reaches Podman.
        assert [c.container_id for c in await watched.cache.list(other)] == [cid]
    finally:
        with trio.CancelScope(shield=True):
            await podman("rm", "-f", "-t", "0", cid)
