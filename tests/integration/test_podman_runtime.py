"""PodmanRuntime against a real Podman (the session's private service)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from daemon.runtime.interface import (
    LABEL_HOST_PORT,
    LABEL_REPLICA,
    ContainerEvent,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ImageNotFound,
    RuntimeFailure,
    TemporaryRuntimeError,
)
from daemon.runtime.podman import PodmanRuntime

pytestmark = pytest.mark.podman

ECHO_COMMAND = ("httpd", "-f", "-p", "8080", "-h", "/www")


def make_spec(image: str, labels: dict[str, str], port: int, **overrides: object) -> ContainerSpec:
    fields: dict[str, object] = {
        "name": f"berth-test-{uuid.uuid4().hex[:10]}",
        "image": image,
        "labels": labels,
        "app_port": 8080,
        "host_port": port,
        "stop_timeout": 1.0,
    }
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


async def get_when_up(url: str, *, within: float = 10.0) -> httpx.Response:
    with trio.fail_after(within):
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    return await client.get(url)
                except httpx.TransportError:
                    await trio.sleep(0.05)


async def wait_exited(runtime: PodmanRuntime, container_id: str) -> ContainerInfo:
    for _ in range(200):
        info = await runtime.inspect(container_id)
        if not info.running:
            return info
        await trio.sleep(0.05)
    raise AssertionError(f"{container_id[:12]} still running after 10 s")


async def test_create_start_serve_inspect_list(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    port = free_port()
    labels = {**test_labels, LABEL_REPLICA: "r1"}
    spec = make_spec(
        echo_image,
        labels,
        port,
        env={"MODEL": "tiny"},
        command=ECHO_COMMAND,
        cpus=0.5,
        memory_bytes=64 * 1024 * 1024,
    )
    container_id = await runtime.create(spec)
    assert len(container_id) == 64
    created = await runtime.inspect(container_id)
    assert created.status in ("created", "configured")
    assert not created.running

    await runtime.start(container_id)
    response = await get_when_up(f"http://127.0.0.1:{port}/cgi-bin/echo")
    assert response.status_code == 200

    info = await runtime.inspect(container_id)
    assert info.running
    assert info.name == spec.name
    assert info.image == echo_image
    assert info.host_port == port
    assert info.labels[LABEL_REPLICA] == "r1"
    assert info.labels[LABEL_HOST_PORT] == str(port)
    assert info.exit_code is None

    listed = await runtime.list(test_labels)
    assert [c.container_id for c in listed] == [container_id]
    assert listed[0].host_port == port and listed[0].running
    assert await runtime.list({**test_labels, LABEL_REPLICA: "other"}) == []

    # Resources and the rest of the template, as Podman recorded them.
    inspected = podman_inspect(container_id)
    assert inspected["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert inspected["HostConfig"]["CpuQuota"] == 50_000
    assert inspected["HostConfig"]["CpuPeriod"] == 100_000
    assert inspected["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
    assert inspected["Config"]["StopTimeout"] == 1
    assert "MODEL=tiny" in inspected["Config"]["Env"]
    assert inspected["Config"]["Cmd"] == list(ECHO_COMMAND)


async def test_stop_and_remove_are_idempotent(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    container_id = await runtime.create(make_spec(echo_image, test_labels, free_port()))
    await runtime.start(container_id)
    with trio.fail_after(8):  # busybox httpd ignores SIGTERM: 1 s grace, then SIGKILL
        await runtime.stop(container_id, timeout=1)
    stopped = await runtime.inspect(container_id)
    assert stopped.status in ("exited", "stopped")
    assert stopped.exit_code is not None
    await runtime.stop(container_id, timeout=1)  # already stopped: fine

    await runtime.remove(container_id)
    await runtime.remove(container_id)  # already gone: fine
    assert await runtime.list(test_labels) == []
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(container_id)
    with pytest.raises(ContainerNotFound):
        await runtime.stop(container_id, timeout=1)


async def test_remove_running_container(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    container_id = await runtime.create(make_spec(echo_image, test_labels, free_port()))
    await runtime.start(container_id)
    with trio.fail_after(5):
        await runtime.remove(container_id)
    assert await runtime.list(test_labels) == []


async def test_errors_are_translated(
    runtime: PodmanRuntime, test_labels: dict[str, str], free_port: Callable[[], int]
) -> None:
    with pytest.raises(ImageNotFound, match="image not known"):
        await runtime.create(make_spec("localhost/berth-no-such-image:0", test_labels, 1))
    for call in (runtime.inspect, runtime.start, runtime.logs):
        with pytest.raises(ContainerNotFound):
            await call("f" * 64)
    assert not await runtime.image_exists("localhost/berth-no-such-image:0")
    # A registry that does not answer: worth retrying later.
    with pytest.raises(TemporaryRuntimeError, match="connection refused"):
        await runtime.pull(f"127.0.0.1:{free_port()}/berth/nothing:1")


async def test_unreachable_podman_is_temporary(tmp_path: Path) -> None:
    runtime = PodmanRuntime(f"unix://{tmp_path}/nothing.sock")
    try:
        with pytest.raises(TemporaryRuntimeError, match="unreachable"):
            await runtime.version()
        with pytest.raises(TemporaryRuntimeError):
            async with aclosing(runtime.events({})) as events:
                async for _ in events:
                    pass
    finally:
        await runtime.aclose()


async def test_version_and_image(runtime: PodmanRuntime, echo_image: str) -> None:
    assert (await runtime.version()).startswith("podman 4.")
    assert await runtime.image_exists(echo_image)


async def test_logs_and_follow_logs(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    script = "echo one; echo two >&2; sleep 0.5; echo three; exec sleep 60"
    spec = make_spec(echo_image, test_labels, free_port(), command=("sh", "-c", script))
    container_id = await runtime.create(spec)
    await runtime.start(container_id)

    seen = b""
    with trio.fail_after(10):
        async with aclosing(runtime.follow_logs(container_id)) as lines:
            async for chunk in lines:
                seen += chunk
                if b"three" in seen:
                    break
    assert seen.splitlines() == [b"one", b"two", b"three"]

    assert (await runtime.logs(container_id)).splitlines() == [b"one", b"two", b"three"]
    assert await runtime.logs(container_id, tail=1) == b"three\n"

    # Following a quiet container, then cancelling, ends the stream at once.
    with trio.move_on_after(0.5) as scope:
        async with aclosing(runtime.follow_logs(container_id, tail=1)) as lines:
            async for chunk in lines:
                assert chunk == b"three\n"
    assert scope.cancelled_caught
    await runtime.remove(container_id)


async def test_events_for_a_container_that_exits(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    seen: list[ContainerEvent] = []
    container_ids: list[str] = []

    async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with aclosing(runtime.events(test_labels)) as events:
            task_status.started()
            async for event in events:
                seen.append(event)
                if event.action == "died":
                    return

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch)
            # The stream is open once the response headers came; give Podman a moment.
            await trio.sleep(0.2)
            spec = make_spec(echo_image, test_labels, free_port(), command=("sh", "-c", "exit 3"))
            container_ids.append(await runtime.create(spec))
            await runtime.start(container_ids[0])

    actions = [e.action for e in seen]
    assert "start" in actions and actions[-1] == "died"
    died = seen[-1]
    assert died.container_id == container_ids[0]
    assert died.exit_code == 3
    # The container's labels (and the image's: io.buildah.version), not Podman's attributes.
    assert test_labels.items() <= died.labels.items()
    assert LABEL_HOST_PORT in died.labels and "containerExitCode" not in died.labels
    exited = await runtime.inspect(container_ids[0])
    assert exited.status == "exited" and exited.exit_code == 3
    (listed,) = await runtime.list(test_labels)
    assert listed.exit_code == 3 and not listed.oom_killed


@pytest.fixture
def cdi_gpu() -> Iterator[str]:
    """A fake NVIDIA CDI device (/dev/nvidia0 -> /dev/null); yields its CDI name."""
    kind = f"berth-test-{uuid.uuid4().hex[:8]}.example.com/gpu"
    path = Path("/var/run/cdi") / f"{kind.split('/')[0]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""cdiVersion: "0.5.0"
kind: "{kind}"
devices:
  - name: "0"
    containerEdits:
      deviceNodes:
        - path: /dev/nvidia0
          hostPath: /dev/null
      env:
        - BERTH_FAKE_GPU=0
"""
    )
    try:
        yield f"{kind}=0"
    finally:
        path.unlink(missing_ok=True)


async def test_cdi_device(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
    cdi_gpu: str,
) -> None:
    command = ("sh", "-c", "ls /dev/nvidia0 && echo gpu=$BERTH_FAKE_GPU")
    spec = make_spec(echo_image, test_labels, free_port(), command=command, devices=(cdi_gpu,))
    container_id = await runtime.create(spec)
    await runtime.start(container_id)
    assert (await wait_exited(runtime, container_id)).exit_code == 0
    assert (await runtime.logs(container_id)).splitlines() == [b"/dev/nvidia0", b"gpu=0"]


async def test_unknown_cdi_device_fails_at_start(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    spec = make_spec(
        echo_image, test_labels, free_port(), devices=("berth-none.example.com/gpu=0",)
    )
    try:
        container_id = await runtime.create(spec)
    except RuntimeFailure as exc:
        assert "berth-none.example.com/gpu" in str(exc)
        return
    with pytest.raises(RuntimeFailure, match="berth-none.example.com/gpu"):
        await runtime.start(container_id)


def podman_inspect(container_id: str) -> dict[str, Any]:
    """Podman's full inspect data, via the CLI (an independent witness)."""
    out = subprocess.run(
        ["podman", "container", "inspect", container_id], capture_output=True, check=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out)[0]
    return result


async def test_a_container_log_is_capped(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    """A replica that logs without pause cannot fill the disk: its log stays under the cap."""
    cap = 64 * 1024
    chatty = ("sh", "-c", "while true; do echo 0123456789012345678901234567890123456789; done")
    container_id = await runtime.create(
        make_spec(echo_image, test_labels, free_port(), command=chatty, log_size_max=cap)
    )
    await runtime.start(container_id)
    await trio.sleep(2.0)  # megabytes a second: many times the cap by now
    # Podman truncates the file when it reaches the cap, so one read can land just after a
    # truncation and find it empty: every read stays under the cap, and some find lines.
    sizes = []
    for _ in range(20):  # bounded: 20 reads, ~2 s
        sizes.append(len(await runtime.logs(container_id)))
        await trio.sleep(0.1)
    assert max(sizes) <= cap and any(sizes), sizes
    await runtime.remove(container_id)
