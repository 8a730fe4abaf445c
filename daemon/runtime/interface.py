"""The container runtime seam: what berthd asks of Podman, and nothing more.

`ContainerRuntime` is the interface; `daemon.runtime.podman.PodmanRuntime` is the one real
implementation (the only module that imports podman-py) and `daemon.runtime.fake.FakeRuntime`
the in-memory fake for unit tests. Every method is async: the real one runs podman-py's
blocking calls in `trio.to_thread`, so the daemon's loop never blocks on Podman.

Foreign failures are translated at this boundary into `RuntimeFailure` subclasses: callers
never see podman-py's exceptions. `TemporaryRuntimeError` means "try again later" (Podman
unreachable, timeout); the others are permanent for that call (no such container, bad image).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from config.spec import IpcMode, Ulimit

# Labels every berth container carries (DESIGN.md, "berthd — contract").
LABEL_INSTANCE = "io.berth.instance"
LABEL_DEPLOYMENT = "io.berth.deployment"
LABEL_SPEC_ID = "io.berth.spec-id"
LABEL_REPLICA = "io.berth.replica"
# Extra labels (not part of the contract, but stable): what the container was made from, so
# that a changed `[replicas]` count does not look like a new container template, and the host
# port berthd allocated, so an adopted container's port is known without parsing inspect data.
LABEL_TEMPLATE = "io.berth.template"
LABEL_HOST_PORT = "io.berth.host-port"


class RuntimeFailure(Exception):
    """A container runtime call failed; the message says why in the user's terms."""


class TemporaryRuntimeError(RuntimeFailure):
    """Podman is unreachable or timed out: the same call may succeed later."""


class ContainerNotFound(RuntimeFailure):
    """No container with that id (it was removed behind berthd's back, or never existed)."""


class ImageNotFound(RuntimeFailure):
    """The image is not present locally and could not be pulled."""


@dataclass(frozen=True)
class MountSpec:
    """A host path (bind) or a named Podman volume (volume) mounted into the container."""

    type: Literal["bind", "volume"]
    source: str  # absolute host path, or the volume's name
    target: str  # absolute path in the container
    read_only: bool = True


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for pulling a private image; never logged, never shown."""

    auth_file: str | None = None  # containers-auth.json, as `podman login` writes it
    username: str | None = None
    password: str | None = None
    # With `auth_file`: its `auths` table, read once through the checked opener
    # (`daemon.integrations.registry`); the pull picks the image's entry from it.
    auths: Mapping[str, object] | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return (
            f"RegistryAuth(auth_file={self.auth_file!r}, username={self.username!r}, password=***)"
        )


@dataclass(frozen=True)
class PullProgress:
    """How far a pull has come, as Podman reports it (`daemon.runtime.pull` reads its stream).

    Layers are counted as Podman announces them: it downloads a few at a time (6 by
    default) and names a layer only when its download starts, so `layers_total` grows
    until the last layers have started; a layer already stored counts as done at once.
    The byte counts are those of the layers announced so far (what must be fetched, not
    what is stored already); None where Podman gives no sizes (a short name's pull).
    """

    layers_done: int = 0
    layers_total: int = 0
    bytes_done: int | None = None
    bytes_total: int | None = None


# Called with each new PullProgress, on the puller's task: it must not block.
PullProgressFn = Callable[[PullProgress], None]


@dataclass(frozen=True)
class ContainerStats:
    """One sample of a running container's resource use."""

    cpu_percent: float  # of one CPU: 200.0 is two CPUs busy
    memory_bytes: int
    memory_limit_bytes: int | None = None
    pids: int = 0


LOG_SIZE_MAX = 10 * 2**20  # bytes: each replica container's log


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one replica container."""

    name: str
    image: str
    labels: Mapping[str, str]
    app_port: int
    host_port: int
    host_ip: str = "127.0.0.1"
    env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    cpus: float | None = None
    memory_bytes: int | None = None
    # CDI device names, e.g. "nvidia.com/gpu=0".
    devices: tuple[str, ...] = ()
    # Seconds Podman waits after SIGTERM before SIGKILL when the container is stopped.
    stop_timeout: float = 10.0
    mounts: tuple[MountSpec, ...] = ()
    # More published ports (container port -> host port on host_ip), e.g. a probe's port.
    extra_ports: Mapping[int, int] = field(default_factory=dict)
    # The container log's cap in bytes (Podman's k8s-file driver truncates it there), so a
    # chatty model server cannot fill the disk; None: Podman's own default (unbounded).
    log_size_max: int | None = LOG_SIZE_MAX
    # /dev/shm's size in bytes; None: Podman's default (64 MB).
    shm_size: int | None = None
    # Always sent: Podman's own default is "shareable" (any container may join).
    ipc: IpcMode = IpcMode.PRIVATE
    # rlimit name ("memlock", "nofile", "stack") -> limit; the others keep the engine's
    # defaults (containers.conf `default_ulimits`), whatever the engine does when asked for some.
    ulimits: Mapping[str, Ulimit] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerInfo:
    """One container as Podman reports it now."""

    container_id: str
    name: str
    image: str
    labels: Mapping[str, str]
    # Podman's status word: "created", "running", "exited", "stopped", "paused", ...
    status: str
    exit_code: int | None = None
    oom_killed: bool = False
    host_port: int | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True)
class ContainerEvent:
    """One entry of Podman's event stream for a container ("create", "start", "died", ...)."""

    container_id: str
    action: str
    labels: Mapping[str, str]
    exit_code: int | None = None


class ContainerRuntime(Protocol):
    async def version(self) -> str:
        """The runtime's name and version, e.g. "podman 4.3.1 (API 4.3.1)"."""
        ...

    async def image_exists(self, image: str) -> bool: ...

    async def pull(
        self,
        image: str,
        *,
        auth: RegistryAuth | None = None,
        progress: PullProgressFn | None = None,
    ) -> None:
        """Pull an image (from the registry, also when it is present: a tag may have moved);
        ImageNotFound when the registry has no such image. `progress` is called as the
        pull advances. No deadline overall; a pull that makes no progress for the runtime's
        idle timeout fails as temporary. Layers already stored are not fetched again."""
        ...

    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) a container; returns its full id."""
        ...

    async def start(self, container_id: str) -> None: ...

    async def stop(self, container_id: str, *, timeout: float) -> None:  # noqa: ASYNC109
        """SIGTERM, then SIGKILL after `timeout` seconds. Stopping a stopped one is fine."""
        ...

    async def remove(self, container_id: str) -> None:
        """Remove, forcibly if running. Removing a missing container is fine."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo: ...

    async def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        """All containers (running or not) that carry every one of these labels."""
        ...

    async def stats(self, container_id: str) -> ContainerStats:
        """One sample of CPU and memory use (ContainerNotFound if gone or not running)."""
        ...

    async def stats_many(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        """One sample of each of these containers, in one call to the runtime, keyed by the
        ids as given; a container that is gone or not running is left out (not measured)."""
        ...

    async def logs(self, container_id: str, *, tail: int | None = None) -> bytes:
        """stdout and stderr so far, interleaved; the last `tail` lines when given."""
        ...

    def follow_logs(
        self, container_id: str, *, tail: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The logs so far (or the last `tail` lines), then new output as it comes."""
        ...

    def events(self, labels: Mapping[str, str]) -> AsyncGenerator[ContainerEvent, None]:
        """Container events from now on, for containers carrying these labels."""
        ...

    async def aclose(self) -> None: ...

    async def volume_exists(self, name: str) -> bool:
        """Whether a named volume exists."""
        ...

    async def create_volume(self, name: str, *, labels: Mapping[str, str] | None = None) -> None:
        """Create a named volume; one that already exists (made meanwhile) is fine."""
        ...

    async def volume_labels(self, name: str) -> Mapping[str, str] | None:
        """A named volume's labels, or None when there is no such volume."""
        ...
