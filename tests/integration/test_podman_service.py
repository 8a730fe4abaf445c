"""PodmanService: explicit URL, the embedded child, reuse after kill -9, containers outliving it;
after start it never raises: the embedded child killed (twice, the second time before it
answers) is restarted with a back-off, a service it did not start that stops answering is said
once; the embedded service's log is rotated."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from daemon.runtime.interface import ContainerSpec
from daemon.runtime.podman import PodmanRuntime
from daemon.runtime.service import PodmanService, PodmanUnavailable, podman_answers
from tests.conftest import slow_podman

pytestmark = pytest.mark.podman


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Short on purpose: a Unix socket path must stay under 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="berth-svc-"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def nowhere(tmp: Path) -> str:
    return f"unix://{tmp}/no-system-podman.sock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_explicit_url_is_used(podman_url: str, state_dir: Path) -> None:
    service = PodmanService(podman_url, state_dir)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(service.run) == podman_url
        nursery.cancel_scope.cancel()
    assert service.source == "explicit" and service.child_pid is None


async def test_explicit_url_that_does_not_answer_fails(state_dir: Path) -> None:
    service = PodmanService(f"unix://{state_dir}/nothing.sock", state_dir)
    with pytest.raises(PodmanUnavailable, match="no Podman API service answers"):
        await service.run()


async def test_system_socket_is_preferred(podman_url: str, state_dir: Path) -> None:
    service = PodmanService(None, state_dir, system_url=podman_url)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(service.run) == podman_url
        nursery.cancel_scope.cancel()
    assert service.source == "system"


async def test_missing_binary_is_reported(state_dir: Path) -> None:
    service = PodmanService(
        None, state_dir, system_url=nowhere(state_dir), podman_binary="/nonexistent/podman"
    )
    with pytest.raises(PodmanUnavailable, match="cannot start"):
        await service.run()


async def test_embedded_service_and_containers_outlive_it(
    state_dir: Path, echo_image: str, test_labels: dict[str, str], free_port: Callable[[], int]
) -> None:
    own_url = f"unix://{state_dir}/podman.sock"
    spec = ContainerSpec(
        name=f"berth-test-{uuid.uuid4().hex[:10]}",
        image=echo_image,
        labels=test_labels,
        app_port=8080,
        host_port=free_port(),
        stop_timeout=1,
    )
    async with trio.open_nursery() as nursery:
        service = PodmanService(None, state_dir, system_url=nowhere(state_dir))
        with trio.fail_after(20):
            assert await nursery.start(service.run) == own_url
        assert service.source == "embedded"
        first_pid = service.child_pid
        assert first_pid is not None
        runtime = PodmanRuntime(own_url)
        container_id = await runtime.create(spec)
        await runtime.start(container_id)
        await runtime.aclose()
        nursery.cancel_scope.cancel()
    # berthd stopped: the service it started is gone, the container is not.
    assert service.child_pid is None
    assert not await podman_answers(own_url)
    assert not pid_alive(first_pid)

    async with trio.open_nursery() as nursery:
        service = PodmanService(None, state_dir, system_url=nowhere(state_dir))
        with trio.fail_after(20):
            assert await nursery.start(service.run) == own_url
        assert service.child_pid not in (None, first_pid)
        runtime = PodmanRuntime(own_url)
        (info,) = await runtime.list(test_labels)
        assert info.container_id == container_id and info.running
        await runtime.remove(container_id)
        await runtime.aclose()
        nursery.cancel_scope.cancel()


def start_orphan(state_dir: Path) -> subprocess.Popen[bytes]:
    """A service on the state dir's socket that no berthd owns (its berthd was kill -9ed)."""
    return subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{state_dir}/podman.sock"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_for(check: Callable[[], Awaitable[bool] | bool], *, seconds: float) -> None:
    """Until `check()` is true (polled: what it looks at is outside this process); bounded."""
    with trio.fail_after(seconds):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await trio.sleep(0.02)


async def wait_answering(url: str) -> None:
    await wait_for(partial(podman_answers, url), seconds=20)


@pytest.fixture
def orphan_service(state_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    orphan = start_orphan(state_dir)
    yield orphan
    orphan.terminate()
    orphan.wait(timeout=10)


async def test_service_left_by_a_killed_berthd_is_reused(
    state_dir: Path, orphan_service: subprocess.Popen[bytes]
) -> None:
    own_url = f"unix://{state_dir}/podman.sock"
    await wait_answering(own_url)
    async with trio.open_nursery() as nursery:
        service = PodmanService(None, state_dir, system_url=nowhere(state_dir))
        assert await nursery.start(service.run) == own_url
        assert service.source == "reused" and service.child_pid is None
        nursery.cancel_scope.cancel()
    # Not ours to end.
    assert orphan_service.poll() is None
    assert await podman_answers(own_url)


def podman_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "berthd.podman"]


async def said(caplog: pytest.LogCaptureFixture, text: str, *, seconds: float) -> str:
    """The first message from berthd.podman that contains `text`, waited for (bounded)."""
    await wait_for(lambda: any(text in m for m in podman_messages(caplog)), seconds=seconds)
    return next(m for m in podman_messages(caplog) if text in m)


async def next_child(service: PodmanService, not_one_of: tuple[int | None, ...]) -> int:
    """The PID of the service's child once it is none of `not_one_of` (polled: it changes
    without a trio checkpoint that a test could wait on)."""
    await wait_for(lambda: service.child_pid not in not_one_of, seconds=10)
    assert service.child_pid is not None
    return service.child_pid


async def test_embedded_service_killed_twice_is_restarted_with_a_back_off(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="berthd.podman")
    own_url = f"unix://{state_dir}/podman.sock"
    # Each service starts 0.5 s late, so the second kill lands before it answers.
    slow = slow_podman(state_dir / "bin")
    service = PodmanService(None, state_dir, system_url=nowhere(state_dir), podman_binary=str(slow))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            assert await nursery.start(service.run) == own_url
        first = await next_child(service, (None,))
        os.kill(first, signal.SIGKILL)
        second = await next_child(service, (None, first))
        os.kill(second, signal.SIGKILL)
        third = await next_child(service, (None, first, second))
        await said(caplog, f"(pid {third}) answering again", seconds=15)
        assert await podman_answers(own_url)
        runtime = PodmanRuntime(own_url)
        assert await runtime.version()
        await runtime.aclose()
        nursery.cancel_scope.cancel()
    messages = podman_messages(caplog)
    assert [m for m in messages if "restarting" in m or "again" in m] == [
        f"podman service (pid {first}) killed by SIGKILL; restarting in 0.5s",
        f"podman service (pid {second}) killed by SIGKILL before answering; restarting in 1s",
        f"podman service (pid {third}) answering again",
    ]
    assert not pid_alive(third) and service.child_pid is None


async def test_embedded_service_that_stops_answering_is_ended_and_restarted(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="berthd.podman")
    service = PodmanService(
        None, state_dir, system_url=nowhere(state_dir), watch_period=0.1, stop_timeout=1.0
    )
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(service.run)
        wedged = await next_child(service, (None,))
        os.kill(wedged, signal.SIGSTOP)  # alive, its socket accepts, nothing answers
        try:
            stopped = await said(caplog, f"(pid {wedged}) stopped answering", seconds=20)
            again = await next_child(service, (None, wedged))
            await said(caplog, f"(pid {again}) answering again", seconds=15)
        finally:
            if pid_alive(wedged):
                os.kill(wedged, signal.SIGKILL)
        nursery.cancel_scope.cancel()
    assert stopped.endswith("stopped answering (3 pings in a row); restarting in 0.5s")


async def test_events_go_to_the_callback(state_dir: Path) -> None:
    seen: list[tuple[str, int]] = []
    answering = trio.Event()

    async def on_event(message: str, *, level: int) -> None:
        seen.append((message, level))
        if "answering again" in message:
            answering.set()

    service = PodmanService(None, state_dir, system_url=nowhere(state_dir), on_event=on_event)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(service.run)
        first = await next_child(service, (None,))
        os.kill(first, signal.SIGTERM)
        with trio.fail_after(15):
            await answering.wait()
        nursery.cancel_scope.cancel()
    assert seen[0][0] == f"podman service (pid {first}) started on unix://{state_dir}/podman.sock"
    assert seen[1] == (
        # Podman ends cleanly on SIGTERM: any exit is restarted, not only a crash.
        f"podman service (pid {first}) exited with status 0; restarting in 0.5s",
        logging.WARNING,
    )
    assert seen[2][0].endswith("answering again") and seen[2][1] == logging.INFO
    assert seen[3][0].endswith(") ended")  # berthd stopping ends the service it started


async def test_service_it_did_not_start_that_stops_answering_is_said_once(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="berthd.podman")
    own_url = f"unix://{state_dir}/podman.sock"
    orphan = start_orphan(state_dir)
    try:
        await wait_answering(own_url)
        service = PodmanService(None, state_dir, system_url=nowhere(state_dir), watch_period=0.1)
        async with trio.open_nursery() as nursery:
            assert await nursery.start(service.run) == own_url
            assert service.source == "reused"
            orphan.terminate()
            orphan.wait(timeout=10)
            gone = await said(caplog, "does not answer", seconds=10)
            await trio.sleep(0.5)  # a few more unanswered pings: still said once
            orphan = start_orphan(state_dir)
            await said(caplog, "answering again", seconds=15)
            nursery.cancel_scope.cancel()
    finally:
        orphan.terminate()
        orphan.wait(timeout=10)
    assert gone.startswith(f"podman service at {own_url} (reused) does not answer")
    messages = podman_messages(caplog)
    assert sum("does not answer" in m for m in messages) == 1


async def test_embedded_service_log_is_rotated(state_dir: Path) -> None:
    log_path = state_dir / "podman-service.log"
    log_path.write_bytes(b"old\n" * 1000)  # 4000 bytes, over the cap: rotated before start
    service = PodmanService(
        None, state_dir, system_url=nowhere(state_dir), log_max_bytes=2000, watch_period=0.1
    )
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(service.run)
        assert (state_dir / "podman-service.log.1").read_bytes() == b"old\n" * 1000
        # The child appends to the same file (O_APPEND); so does this, past the cap again.
        with log_path.open("ab") as out:
            out.write(b"new\n" * 600)
        rotated = state_dir / "podman-service.log.1"
        await wait_for(lambda: rotated.read_bytes().count(b"new") == 600, seconds=10)
        assert log_path.stat().st_size < 2000
        assert await podman_answers(f"unix://{state_dir}/podman.sock")
        nursery.cancel_scope.cancel()
