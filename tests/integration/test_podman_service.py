"""PodmanService: explicit URL, the embedded child, reuse after kill -9, containers outliving it."""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from daemon.runtime.interface import ContainerSpec
from daemon.runtime.podman import PodmanRuntime
from daemon.runtime.service import PodmanService, PodmanUnavailable, podman_answers

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
    assert service.source == "explicit" and service.child_pid is None


async def test_explicit_url_that_does_not_answer_fails(state_dir: Path) -> None:
    service = PodmanService(f"unix://{state_dir}/nothing.sock", state_dir)
    with pytest.raises(PodmanUnavailable, match="no Podman API service answers"):
        await service.run()


async def test_system_socket_is_preferred(podman_url: str, state_dir: Path) -> None:
    service = PodmanService(None, state_dir, system_url=podman_url)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(service.run) == podman_url
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


@pytest.fixture
def orphan_service(state_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A service on the state dir's socket that no berthd owns (its berthd was kill -9ed)."""
    orphan = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{state_dir}/podman.sock"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield orphan
    orphan.terminate()
    orphan.wait(timeout=10)


async def test_service_left_by_a_killed_berthd_is_reused(
    state_dir: Path, orphan_service: subprocess.Popen[bytes]
) -> None:
    own_url = f"unix://{state_dir}/podman.sock"
    for _ in range(400):
        if await podman_answers(own_url):
            break
        await trio.sleep(0.05)
    async with trio.open_nursery() as nursery:
        service = PodmanService(None, state_dir, system_url=nowhere(state_dir))
        assert await nursery.start(service.run) == own_url
        assert service.source == "reused" and service.child_pid is None
        nursery.cancel_scope.cancel()
    # Not ours to end.
    assert orphan_service.poll() is None
    assert await podman_answers(own_url)
