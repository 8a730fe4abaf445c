"""PodmanRuntime's calls are bounded: a few threads of its own, a deadline each."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from daemon.runtime.interface import ContainerNotFound, RuntimeFailure, TemporaryRuntimeError
from daemon.runtime.podman import CALLS_AT_ONCE, PodmanRuntime


@pytest.fixture
def runtime(tmp_path: object) -> Iterator[PodmanRuntime]:
    rt = PodmanRuntime("unix:///nonexistent/podman.sock", timeout=1.0)
    yield rt
    rt._client.close()


async def test_a_call_past_its_deadline_fails_as_temporary(runtime: PodmanRuntime) -> None:
    release = threading.Event()
    try:
        with trio.fail_after(5), pytest.raises(TemporaryRuntimeError, match="within 0.2s"):
            await runtime._call(lambda: release.wait(10), what="list containers", deadline=0.2)
    finally:
        release.set()


async def test_a_podman_that_hangs_holds_a_few_threads_not_trios(runtime: PodmanRuntime) -> None:
    release = threading.Event()
    default = trio.to_thread.current_default_thread_limiter()
    failures: list[Exception] = []

    async def hung_call() -> None:
        try:
            await runtime._call(lambda: release.wait(10), what="inspect", deadline=0.5)
        except TemporaryRuntimeError as exc:
            failures.append(exc)

    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(hung_call)
                await trio.testing.wait_all_tasks_blocked()
                assert runtime._limiter.borrowed_tokens == CALLS_AT_ONCE
                assert default.borrowed_tokens == 0
        assert len(failures) == 20  # each one bounded, the waiting ones too
    finally:
        release.set()


async def test_a_list_that_races_a_removal_is_listed_again(
    runtime: PodmanRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpod fails a whole list (500 "no such container") when a container goes while it is
    listed: the list is tried again rather than reported as unknown."""
    answers: list[object] = [
        RuntimeFailure("list containers: no such container: 4f1e"),
        [],
    ]

    async def call(fn: object, *, what: str, **options: object) -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(runtime, "_call", call)
    assert await runtime.list({"io.berth.instance": "x"}) == []
    assert answers == []
    answers[:] = [RuntimeFailure("list containers: permission denied")]
    with pytest.raises(RuntimeFailure, match="permission denied"):
        await runtime.list({"io.berth.instance": "x"})


async def test_an_inspect_that_races_a_removal_is_not_found(
    runtime: PodmanRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpod answers 500, not 404, for a container removed while it is being inspected (an
    inspect after its "died" event, racing `podman rm -f`): that is ContainerNotFound, as a
    404 is, so the container cache drops it instead of calling its view unknown."""

    async def call(fn: object, *, what: str, **options: object) -> object:
        raise RuntimeFailure(
            f"{what}: container 4f1e does not exist in database: no such container"
        )

    monkeypatch.setattr(runtime, "_call", call)
    with pytest.raises(ContainerNotFound, match="no such container"):
        await runtime.inspect("4f1e")
