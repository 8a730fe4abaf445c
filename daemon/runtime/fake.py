"""`FakeRuntime`: an in-memory `ContainerRuntime` for fast unit tests (no Podman, no sleeps).

It behaves like Podman where berthd can tell the difference:
- ids are 64 hex digits, handed out in order; names are unique (a clash is a RuntimeFailure);
- create -> "created", start -> "running", stop -> "exited", remove -> gone; stopping a stopped
  container and removing a missing one are fine; anything else on a missing id raises
  ContainerNotFound; creating from an image not in `images` raises ImageNotFound;
- `stats_many` answers for the running containers among those asked for, in one call;
- `pull` fetches only the images in `pullable`, reporting `pull_steps` (or one final step);
- events ("create", "start", "died", "remove") reach every open `events()` stream whose labels
  match, in order, from the stream's first iteration on (as with PodmanRuntime, whose stream
  connects then), and `die()` simulates a crash (or an OOM kill) with a "died" event;
  `break_events()` ends every open stream (Podman restarting).
Tests steer it with `fail(method, error, times)` and read `calls` to see what was asked;
`log_followers` counts the `follow_logs` streams open now (`wait_log_followers` waits for a
count), so that a test can tell that every stream it caused was closed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from daemon.runtime.interface import (
    ContainerEvent,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStats,
    ImageNotFound,
    PullProgress,
    PullProgressFn,
    RegistryAuth,
    RuntimeFailure,
)


@dataclass
class FakeContainer:
    container_id: str
    spec: ContainerSpec
    status: str = "created"
    exit_code: int | None = None
    oom_killed: bool = False
    logs: bytes = b""
    log_written: trio.Event = field(default_factory=trio.Event)

    def info(self) -> ContainerInfo:
        return ContainerInfo(
            container_id=self.container_id,
            name=self.spec.name,
            image=self.spec.image,
            labels=dict(self.spec.labels),
            status=self.status,
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            host_port=self.spec.host_port,
        )


class FakeRuntime:
    def __init__(self, images: set[str] | None = None) -> None:
        self.images: set[str] = set(images or ())
        self.stats_by_id: dict[str, ContainerStats] = {}
        self.pull_auth: RegistryAuth | None = None
        # Images `pull` can fetch; pulling anything else raises ImageNotFound.
        self.pullable: set[str] = set()
        # What a pull of an image reports, in order, `pull_step` seconds apart (trio's
        # clock); unset, one report: a 1-layer image of 1000 bytes, done.
        self.pull_steps: dict[str, list[PullProgress]] = {}
        self.pull_step = 0.0
        # Named volumes and their labels.
        self.volumes: dict[str, dict[str, str]] = {}
        self.containers: dict[str, FakeContainer] = {}
        # Every call, in order: ("create", name), ("start", id), ("stop", id, timeout), ...
        self.calls: list[tuple[object, ...]] = []
        self.closed = False
        self._failures: dict[str, list[RuntimeFailure]] = {}
        self._next_id = 1
        self._subscribers: list[trio.MemorySendChannel[ContainerEvent]] = []
        self._broken_streams: dict[int, RuntimeFailure] = {}
        self.log_followers = 0  # `follow_logs` streams open now
        self._followers_changed = trio.Event()

    def __repr__(self) -> str:
        states = ", ".join(f"{c.spec.name}:{c.status}" for c in self.containers.values())
        return f"<FakeRuntime [{states}]>"

    # -- steering, for tests -------------------------------------------------------------
    def fail(self, method: str, error: RuntimeFailure, times: int = 1) -> None:
        """The next `times` calls of `method` ("create", "start", ...) raise `error`."""
        self._failures.setdefault(method, []).extend([error] * times)

    def break_events(self, error: RuntimeFailure | None = None) -> None:
        """Every open `events()` stream ends now: raising `error` (Podman went away
        mid-stream), or as a clean end of the stream when None."""
        for send in self._subscribers:
            if error is not None:
                self._broken_streams[id(send)] = error
            send.close()
        self._subscribers.clear()

    def die(self, container_id: str, *, exit_code: int = 1, oom_killed: bool = False) -> None:
        """The container's process ends on its own (crash, or OOM kill with exit code 137)."""
        container = self._get(container_id)
        container.status, container.exit_code = "exited", exit_code
        container.oom_killed = oom_killed
        self._emit(container, "died", exit_code)

    def write_log(self, container_id: str, data: bytes) -> None:
        container = self._get(container_id)
        container.logs += data
        container.log_written.set()
        container.log_written = trio.Event()

    async def wait_log_followers(self, count: int) -> None:
        """Until exactly `count` `follow_logs` streams are open."""
        while self.log_followers != count:
            await self._followers_changed.wait()

    def by_name(self, name: str) -> FakeContainer:
        for container in self.containers.values():
            if container.spec.name == name:
                return container
        raise KeyError(name)

    def running(self) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.status == "running"]

    # -- ContainerRuntime ----------------------------------------------------------------
    async def version(self) -> str:
        self._enter("version")
        return "fake 1.0 (API 1.0)"

    async def image_exists(self, image: str) -> bool:
        self._enter("image_exists", image)
        return image in self.images

    async def pull(
        self,
        image: str,
        *,
        auth: RegistryAuth | None = None,
        progress: PullProgressFn | None = None,
    ) -> None:
        self._enter("pull", image)
        self.pull_auth = auth
        if image not in self.pullable:
            raise ImageNotFound(f"pull {image}: manifest unknown")
        for step in self.pull_steps.get(image, [PullProgress(1, 1, 1000, 1000)]):
            await trio.sleep(self.pull_step)
            if progress is not None:
                progress(step)
        self.images.add(image)

    async def create(self, spec: ContainerSpec) -> str:
        self._enter("create", spec.name)
        if spec.image not in self.images:
            raise ImageNotFound(f"create {spec.name}: {spec.image}: image not known")
        if any(c.spec.name == spec.name for c in self.containers.values()):
            raise RuntimeFailure(f"create {spec.name}: the container name is already in use")
        container_id = f"{self._next_id:064x}"
        self._next_id += 1
        container = FakeContainer(container_id, spec)
        self.containers[container_id] = container
        self._emit(container, "create")
        return container_id

    async def start(self, container_id: str) -> None:
        self._enter("start", container_id)
        container = self._get(container_id)
        container.status, container.exit_code, container.oom_killed = "running", None, False
        self._emit(container, "start")

    async def stop(self, container_id: str, *, timeout: float) -> None:  # noqa: ASYNC109
        self._enter("stop", container_id, timeout)
        container = self._get(container_id)
        if container.status == "running":
            # Like busybox httpd: SIGTERM ignored, SIGKILL after the grace period.
            container.status, container.exit_code = "exited", 137
            self._emit(container, "died", 137)

    async def remove(self, container_id: str) -> None:
        self._enter("remove", container_id)
        container = self.containers.pop(container_id, None)
        if container is not None:
            if container.status == "running":
                container.status, container.exit_code = "exited", 137
                self._emit(container, "died", 137)
            self._emit(container, "remove")

    async def inspect(self, container_id: str) -> ContainerInfo:
        self._enter("inspect", container_id)
        return self._get(container_id).info()

    async def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        self._enter("list", dict(labels))
        return [c.info() for c in self.containers.values() if _matches(c.spec.labels, labels)]

    async def stats(self, container_id: str) -> ContainerStats:
        self._enter("stats", container_id)
        container = self._get(container_id)
        if container.status != "running":
            raise ContainerNotFound(f"stats {container_id[:12]}: container is not running")
        return self.stats_by_id.get(container_id, ContainerStats(cpu_percent=0.0, memory_bytes=0))

    async def stats_many(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        self._enter("stats_many", tuple(container_ids))
        return {
            cid: self.stats_by_id.get(cid, ContainerStats(cpu_percent=0.0, memory_bytes=0))
            for cid in container_ids
            if (c := self.containers.get(cid)) is not None and c.status == "running"
        }

    async def logs(self, container_id: str, *, tail: int | None = None) -> bytes:
        self._enter("logs", container_id)
        return _tail(self._get(container_id).logs, tail)

    async def follow_logs(
        self, container_id: str, *, tail: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        self._enter("follow_logs", container_id)
        container = self._get(container_id)
        sent = len(container.logs)
        self._count_followers(+1)
        try:
            if initial := _tail(container.logs, tail):
                yield initial
            while True:
                await container.log_written.wait()
                if new := container.logs[sent:]:
                    sent = len(container.logs)
                    yield new
        finally:
            self._count_followers(-1)

    async def events(self, labels: Mapping[str, str]) -> AsyncGenerator[ContainerEvent, None]:
        self._enter("events", dict(labels))
        send, receive = trio.open_memory_channel[ContainerEvent](math.inf)
        self._subscribers.append(send)
        try:
            async with receive:
                async for event in receive:
                    if _matches(event.labels, labels):
                        yield event
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
        # Only `break_events` closes the channel: the stream breaks as it says.
        error = self._broken_streams.pop(id(send), None)
        if error is not None:
            raise error

    async def aclose(self) -> None:
        self.calls.append(("aclose",))
        self.closed = True

    async def volume_exists(self, name: str) -> bool:
        self._enter("volume_exists", name)
        return name in self.volumes

    async def create_volume(self, name: str, *, labels: Mapping[str, str] | None = None) -> None:
        self._enter("create_volume", name)
        self.volumes.setdefault(name, dict(labels or {}))

    async def volume_labels(self, name: str) -> Mapping[str, str] | None:
        self._enter("volume_labels", name)
        labels = self.volumes.get(name)
        return None if labels is None else dict(labels)

    # -- internals -----------------------------------------------------------------------
    def _enter(self, method: str, *args: object) -> None:
        self.calls.append((method, *args))
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _count_followers(self, change: int) -> None:
        self.log_followers += change
        self._followers_changed.set()
        self._followers_changed = trio.Event()

    def _get(self, container_id: str) -> FakeContainer:
        try:
            return self.containers[container_id]
        except KeyError:
            raise ContainerNotFound(f"no such container: {container_id[:12]}") from None

    def _emit(self, container: FakeContainer, action: str, exit_code: int | None = None) -> None:
        event = ContainerEvent(
            container.container_id, action, dict(container.spec.labels), exit_code
        )
        for send in self._subscribers:
            send.send_nowait(event)


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())


def _tail(data: bytes, lines: int | None) -> bytes:
    if lines is None:
        return data
    if lines <= 0:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])
