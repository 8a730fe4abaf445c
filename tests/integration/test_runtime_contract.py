"""The runtime contract: the same behavioural tests against `FakeRuntime` and `PodmanRuntime`.

Unit tests of the control plane run against the fake; this suite keeps it honest. Each test
here runs twice, once per runtime, and asserts only what berthd relies on: the states a
container goes through, what `list` filters, how failures are translated, which events a
change produces. A difference found here is a bug in the fake (or in the contract).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing

import pytest
import trio
from trio.testing import MockClock

from daemon.runtime.fake import FakeRuntime
from daemon.runtime.faulty import FaultyRuntime
from daemon.runtime.interface import (
    ContainerEvent,
    ContainerNotFound,
    ContainerRuntime,
    ContainerSpec,
    ImageNotFound,
    PullProgress,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)
from daemon.runtime.podman import PodmanRuntime
from tests.local_registry import PASSWORD, USER, RegistryRig, push, registry_rig, remove_images

pytestmark = pytest.mark.podman


@pytest.fixture(params=["fake", "podman"])
async def any_runtime(
    request: pytest.FixtureRequest, podman_url: str, echo_image: str
) -> AsyncIterator[ContainerRuntime]:
    runtime: ContainerRuntime
    if request.param == "fake":
        runtime = FakeRuntime(images={echo_image})
    else:
        runtime = PodmanRuntime(podman_url)
    try:
        yield runtime
    finally:
        await runtime.aclose()


def spec(image: str, labels: dict[str, str], port: int, **overrides: object) -> ContainerSpec:
    fields: dict[str, object] = {
        "name": f"berth-contract-{uuid.uuid4().hex[:10]}",
        "image": image,
        "labels": {**labels, "io.berth.replica": "r1"},
        "app_port": 8080,
        "host_port": port,
        "stop_timeout": 1.0,
    }
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


async def test_a_container_goes_created_running_stopped_gone(
    any_runtime: ContainerRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    port = free_port()
    container_id = await any_runtime.create(spec(echo_image, test_labels, port))
    (created,) = await any_runtime.list(test_labels)
    assert (created.container_id, created.status, created.running) == (
        container_id,
        "created",
        False,
    )
    assert created.labels["io.berth.replica"] == "r1" and created.host_port == port

    await any_runtime.start(container_id)
    running = await any_runtime.inspect(container_id)
    assert running.running and running.status == "running"

    with trio.fail_after(10):
        await any_runtime.stop(container_id, timeout=1)
    stopped = await any_runtime.inspect(container_id)
    assert not stopped.running and stopped.exit_code is not None
    await any_runtime.stop(container_id, timeout=1)  # stopped already: fine

    await any_runtime.remove(container_id)
    await any_runtime.remove(container_id)  # gone already: fine
    assert await any_runtime.list(test_labels) == []
    for call in (any_runtime.inspect, any_runtime.start):
        with pytest.raises(ContainerNotFound):
            await call(container_id)
    with pytest.raises(ContainerNotFound):
        await any_runtime.stop(container_id, timeout=1)


async def test_list_filters_by_every_label(
    any_runtime: ContainerRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    mine = await any_runtime.create(
        spec(echo_image, {**test_labels, "io.berth.deployment": "a"}, free_port())
    )
    await any_runtime.create(
        spec(echo_image, {**test_labels, "io.berth.deployment": "b"}, free_port())
    )
    listed = await any_runtime.list({**test_labels, "io.berth.deployment": "a"})
    assert [c.container_id for c in listed] == [mine]
    assert len(await any_runtime.list(test_labels)) == 2
    assert await any_runtime.list({"io.berth.instance": f"nobody-{uuid.uuid4().hex}"}) == []


async def test_failures_are_translated(
    any_runtime: ContainerRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    with pytest.raises(ImageNotFound):
        await any_runtime.create(spec("localhost/berth-no-such-image:0", test_labels, 1))
    taken = spec(echo_image, test_labels, free_port())
    await any_runtime.create(taken)
    with pytest.raises(RuntimeFailure):
        await any_runtime.create(taken)  # the same name again
    assert not await any_runtime.image_exists("localhost/berth-no-such-image:0")
    assert await any_runtime.image_exists(echo_image)
    for call in (any_runtime.inspect, any_runtime.logs):
        with pytest.raises(ContainerNotFound):
            await call("f" * 64)


async def test_changes_are_events_in_order(
    any_runtime: ContainerRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    seen: list[ContainerEvent] = []
    arrived: dict[tuple[str, str], trio.Event] = {}

    def arrival(container_id: str, action: str) -> trio.Event:
        return arrived.setdefault((container_id, action), trio.Event())

    async def watch() -> None:
        async with aclosing(any_runtime.events(test_labels)) as events:
            async for event in events:
                seen.append(event)
                arrival(event.container_id, event.action).set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        with trio.fail_after(10):
            # The stream is live once it reports a change: warm-up containers until one is.
            for _ in range(40):
                warm = await any_runtime.create(spec(echo_image, test_labels, free_port()))
                with trio.move_on_after(0.25):
                    await arrival(warm, "create").wait()
                if arrival(warm, "create").is_set():
                    break
            container_id = await any_runtime.create(spec(echo_image, test_labels, free_port()))
            await any_runtime.start(container_id)
            await any_runtime.remove(container_id)
            await arrival(container_id, "remove").wait()
        nursery.cancel_scope.cancel()
    actions = [e.action for e in seen if e.container_id == container_id]
    wanted = ["create", "start", "remove"]
    assert [a for a in actions if a in wanted] == wanted, actions
    assert all(e.labels.get("io.berth.replica") == "r1" for e in seen)


async def test_a_faulty_runtime_fails_then_heals_around_either(
    any_runtime: ContainerRuntime, test_labels: dict[str, str], mock_clock: MockClock
) -> None:
    # Jump only once nothing has run for 0.2 s of real time: a real Podman call runs in a
    # thread and has a deadline of its own, which a clock jumping at once would overtake.
    mock_clock.autojump_threshold = 0.2
    faulty = FaultyRuntime(any_runtime)
    faulty.fail("list", for_seconds=10.0)
    with pytest.raises(TemporaryRuntimeError, match="injected"):
        await faulty.list(test_labels)
    await trio.sleep(10.0)
    assert await faulty.list(test_labels) == []
    assert faulty.calls["list"] == 2


async def test_stats_many_measures_the_running_ones_in_one_call(
    any_runtime: ContainerRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    def make() -> ContainerSpec:
        return spec(echo_image, test_labels, free_port())

    running = [await any_runtime.create(make()) for _ in range(2)]
    for container_id in running:
        await any_runtime.start(container_id)
    created = await any_runtime.create(make())
    stopped = await any_runtime.create(make())
    await any_runtime.start(stopped)
    with trio.fail_after(10):
        await any_runtime.stop(stopped, timeout=0)
    gone = "f" * 64  # Podman fails a whole batch for a missing id: it is asked again, alone
    measured = await any_runtime.stats_many([*running, created, stopped, gone])
    assert sorted(measured) == sorted(running)  # not running or gone: not measured, not zero
    assert all(s.cpu_percent >= 0 and s.memory_bytes >= 0 for s in measured.values())
    assert await any_runtime.stats_many([]) == {}
    assert (await any_runtime.stats(running[1])).memory_bytes >= 0  # running: measured
    for container_id in (created, stopped, gone):
        with pytest.raises(ContainerNotFound):
            await any_runtime.stats(container_id)


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryRig]:
    with registry_rig(proxies=0) as made:
        yield made


@pytest.mark.parametrize("kind", ["fake", "podman"])
async def test_a_pull_reports_its_layers_and_a_missing_image_is_image_not_found(
    kind: str, registry: RegistryRig, echo_image: str
) -> None:
    image = f"{registry.address}/berth/contract:{uuid.uuid4().hex[:8]}"
    missing = f"{registry.address}/berth/contract:never-pushed"
    auth = RegistryAuth(username=USER, password=PASSWORD)
    runtime: ContainerRuntime
    if kind == "fake":
        runtime = FakeRuntime()
        runtime.pullable.add(image)
    else:
        push(echo_image, image)
        remove_images(image)
        runtime = PodmanRuntime(registry.podman_url)
    seen: list[PullProgress] = []
    try:
        assert not await runtime.image_exists(image)
        with trio.fail_after(60):
            await runtime.pull(image, auth=auth, progress=seen.append)
        assert await runtime.image_exists(image)
        # At least one report, the last one whole: every layer done.
        assert seen and seen[-1].layers_done == seen[-1].layers_total >= 1
        with trio.fail_after(60), pytest.raises(ImageNotFound, match="manifest unknown"):
            await runtime.pull(missing, auth=auth)
    finally:
        await runtime.aclose()
        if kind == "podman":
            remove_images(image)
