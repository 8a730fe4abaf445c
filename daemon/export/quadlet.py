"""Podman Quadlet: a deployment as one `.container` unit per replica, for a single host.

`build(spec, origin)` writes `NAME-I.container` for each replica I (the count when fixed,
else `max(min, 1)`: nothing scales them) and a `VOL.volume` unit per named volume, in Podman
5.4's keys (Debian 13 and RHEL 9.6 ship 5.4; `tests/data/export/quadlet-keys-podman-5.4.txt`).
Each replica is published on its own host port, `endpoint.port + I` on the endpoint's bind
address (replica 0 on the endpoint's port): without berth's load balancer there is no one
address for them all. Replica I gets GPUs `I*g .. I*g+g-1` by CDI name (berthd picked free
ones at each start; here they are fixed). The spec's probes become Podman healthchecks run
inside the container (`daemon.export.quadlet_health`), and `Notify=healthy` makes
`systemctl start` wait until the replica is healthy.

A git mount is a bind of the checkout the apply steps clone (`daemon.export.quadlet_steps`:
the steps and notes). What a single host loses (the load balancer and everything
`[endpoint]` sets, autoscaling, rolling updates and rollback, readiness rotation, metrics
scraping, a git checkout that follows each revision) is returned as `LeftOut`s
(`daemon.export.quadlet_misses`), which the first unit's header and the README list.
Labels are never berth's own `io.berth.*` (berthd adopts or removes the containers that
carry them).
"""

from __future__ import annotations

import ipaddress
import math
import re

from config.spec import (
    RLIM_INFINITY,
    DeploymentSpec,
    IpcMode,
    Mount,
    MountType,
    Ulimit,
)
from daemon.export.bundle import Built, ExportedFile, LeftOut, Origin
from daemon.export.left_out import endpoint_features
from daemon.export.quadlet_health import health_lines, start_budget
from daemon.export.quadlet_misses import quadlet_misses
from daemon.export.quadlet_steps import MODELS_DIR, apply_steps, git_dir, notes, unit_name
from daemon.export.quadlet_text import (
    Line,
    Section,
    command_text,
    comment,
    plain_value,
    podman_size,
    setting,
    specifiers_escaped,
    unit_text,
    word,
)

START_MARGIN = 120  # seconds on top of the probes' budget: creating the container, its start
STOP_MARGIN = 30  # seconds on top of stop_timeout: `podman rm` after the kill


def replica_count(spec: DeploymentSpec) -> int:
    """Units written: the fixed count, or `max(min, 1)` when the autoscaler chose it (a
    `min = 0` deployment still gets one; a fixed count is never 0: the parser refuses it)."""
    return max(spec.replicas.min, 1)


def build(spec: DeploymentSpec, origin: Origin) -> Built:
    left_out = (
        # Quadlet names these two with reasons of its own (quadlet_misses): one line each.
        *endpoint_features(spec, carried={"resources.gpu_memory", "endpoint.cold_start_timeout"}),
        *quadlet_misses(spec),
    )
    count = replica_count(spec)
    files = [
        ExportedFile(f"{unit_name(spec, i)}.container", _container_unit(spec, origin, i, left_out))
        for i in range(count)
    ]
    volumes = sorted({m.source for m in spec.mounts if m.type is MountType.VOLUME})
    files.extend(ExportedFile(f"{v}.volume", _volume_unit(spec, origin, v)) for v in volumes)
    return Built(
        files=tuple(files),
        left_out=left_out,
        apply_steps=apply_steps(spec, count),
        notes=notes(spec, count, _host_address(publish_address(spec))),
    )


def _description(text: str) -> str:
    """A Description= value: one line (a file name may hold anything), `%` escaped."""
    return specifiers_escaped(re.sub(r"[\x00-\x1f\x7f]", "?", text))


def _header(origin: Origin) -> list[str]:
    return [f"Exported by berth export from {origin.describe()}"]


def _container_unit(
    spec: DeploymentSpec, origin: Origin, index: int, left_out: tuple[LeftOut, ...]
) -> str:
    header = _header(origin)
    if index == 0:
        if left_out:
            header.append("Not carried to Quadlet (README.md says more):")
            header.extend(f"  {miss.line()}" for miss in left_out)
    elif left_out:
        header.append(f"What did not carry: see {unit_name(spec, 0)}.container and README.md")
    sections = [
        Section(
            "Unit",
            (
                setting(
                    "Description",
                    _description(
                        f"berth deployment {spec.name}, replica {index}, from {origin.describe()}"
                    ),
                ),
            ),
        ),
        Section("Container", tuple(_container_lines(spec, origin, index))),
        Section("Service", tuple(_service_lines(spec))),
    ]
    if spec.enabled:  # a disabled spec's units start only by hand, never at boot
        sections.append(Section("Install", (setting("WantedBy", "default.target"),)))
    return unit_text(header, sections)


def _container_lines(spec: DeploymentSpec, origin: Origin, index: int) -> list[Line]:
    lines = [
        setting("ContainerName", unit_name(spec, index)),
        setting("Image", plain_value(spec.image)),
        setting("Pull", spec.pull.value),
    ]
    if spec.command is not None:
        lines.append(setting("Exec", command_text(spec.command)))
    for name, value in sorted(spec.env.items()):
        if isinstance(value, str):
            lines.append(setting("Environment", word(f"{name}={value}")))
        else:
            lines.append(setting("Secret", word(f"{value.name},type=env,target={name}")))
    lines.extend(_publish_lines(spec, index))
    lines.extend(_gpu_lines(spec, index))
    lines.extend(_resource_lines(spec))
    for i, mount in enumerate(spec.mounts):
        lines.extend(_mount_lines(spec, i, mount))
    health = health_lines(spec)
    lines.extend(health)
    if health:
        lines.append(setting("Notify", "healthy"))
    lines.append(setting("StopTimeout", str(math.ceil(spec.stop_timeout))))
    lines.append(setting("Label", word(f"app.kubernetes.io/name={spec.name}")))
    lines.append(setting("Label", word("app.kubernetes.io/part-of=berth-export")))
    lines.append(setting("Annotation", word(f"berth.io/spec-id={origin.spec_id}")))
    if origin.deployment_id is not None:
        lines.append(setting("Annotation", word(f"berth.io/deployment-id={origin.deployment_id}")))
    if origin.revision is not None:
        lines.append(setting("Annotation", word(f"berth.io/revision={origin.revision}")))
    return lines


def _host_address(bind: str) -> str:
    return f"[{bind}]" if ":" in bind else bind


def publish_address(spec: DeploymentSpec) -> str:
    """Where the replicas are published: the endpoint's bind address, but loopback when that
    is not loopback and the endpoint's auth or TLS protected it (neither is carried: an
    unprotected model server must not land on the network unasked)."""
    e = spec.endpoint
    if (e.auth is not None or e.tls is not None) and not ipaddress.ip_address(e.bind).is_loopback:
        return "::1" if ":" in e.bind else "127.0.0.1"
    return e.bind


def _publish_lines(spec: DeploymentSpec, index: int) -> list[Line]:
    host_port = spec.endpoint.port + index
    if host_port > 65535:
        return [comment(f"No host port for this replica: {spec.endpoint.port} + {index} > 65535")]
    address = _host_address(publish_address(spec))
    return [setting("PublishPort", f"{address}:{host_port}:{spec.port}")]


def _gpu_lines(spec: DeploymentSpec, index: int) -> list[Line]:
    res = spec.resources
    if res.gpus > 0:
        first = index * res.gpus
        gpus = range(first, first + res.gpus)
        return [
            comment(
                (f"GPU {first}" if res.gpus == 1 else f"GPUs {first}-{first + res.gpus - 1}")
                + " by CDI name (nvidia-ctk cdi generate): "
                "berthd picked free GPUs at each start; here they are fixed"
            ),
            *(setting("AddDevice", f"nvidia.com/gpu={g}") for g in gpus),
        ]
    if res.gpu_memory is not None:
        return [
            comment(
                "resources.gpu_memory: every replica shares GPU 0, with no VRAM limit "
                "(berthd packed replicas by VRAM); choose GPUs per unit by hand"
            ),
            setting("AddDevice", "nvidia.com/gpu=0"),
        ]
    return []


def _ulimit(name: str, limit: Ulimit) -> str:
    def one(value: int) -> str:
        return "-1" if value == RLIM_INFINITY else str(value)

    return f"{name}={one(limit.soft)}:{one(limit.hard)}"


def _resource_lines(spec: DeploymentSpec) -> list[Line]:
    res = spec.resources
    lines = []
    if res.shm_size is not None:
        lines.append(setting("ShmSize", podman_size(res.shm_size)))
    for name, limit in sorted(res.ulimits.items()):
        lines.append(setting("Ulimit", _ulimit(name, limit)))
    args = []
    if res.cpus is not None:
        args.append(f"--cpus={res.cpus:g}")
    if res.memory is not None:
        args.append(f"--memory={podman_size(res.memory)}")
    # berthd always sends the IPC mode (Podman's own default is shareable).
    args.append(f"--ipc={'shareable' if res.ipc is IpcMode.SHAREABLE else 'private'}")
    lines.append(comment("Podman 5.4's Quadlet has no key for these: passed to podman run"))
    lines.append(setting("PodmanArgs", command_text(args)))
    return lines


def _volume_value(source: str, target: str, read_only: bool) -> Line:
    if ":" in source or ":" in target:  # Volume= splits on ':'; Mount= is comma separated
        fields = ["type=bind", f"source={source}", f"destination={target}"]
        if read_only:
            fields.append("ro=true")
        return setting("Mount", word(",".join(fields)))
    return setting("Volume", plain_value(f"{source}:{target}{':ro' if read_only else ''}"))


def _mount_lines(spec: DeploymentSpec, index: int, mount: Mount) -> list[Line]:
    if mount.type is MountType.VOLUME:
        # Quadlet resolves VOL.volume to the volume its unit makes (VolumeName=VOL).
        return [_volume_value(f"{mount.source}.volume", mount.target, mount.read_only)]
    if mount.type is MountType.BIND:
        return [_volume_value(mount.source, mount.target, mount.read_only)]
    if mount.type is MountType.MODEL:
        return [
            comment(
                f"mounts[{index}]: the model directory under berthd's state_dir "
                f"({MODELS_DIR} by default): change the path if yours differs"
            ),
            _volume_value(f"{MODELS_DIR}/{mount.source}", mount.target, True),
        ]
    return [
        comment(
            f"mounts[{index}]: the git checkout of {mount.source} that the apply steps "
            "clone (README.md); berthd cloned it itself for each revision"
        ),
        # read-only whatever read_only says, as berthd mounted it (its checkout is shared)
        _volume_value(git_dir(spec, index), mount.target, True),
    ]


def _service_lines(spec: DeploymentSpec) -> list[Line]:
    start = math.ceil(start_budget(spec)) + START_MARGIN
    return [
        comment("Restart=always restarts a replica that exits, or that a liveness check kills"),
        setting("Restart", "always"),
        comment("The probes' budget, and a margin (pull the image before the first start)"),
        setting("TimeoutStartSec", str(start)),
        setting("TimeoutStopSec", str(math.ceil(spec.stop_timeout) + STOP_MARGIN)),
    ]


def _volume_unit(spec: DeploymentSpec, origin: Origin, volume: str) -> str:
    header = [
        *_header(origin),
        f"The named volume {volume} (the same name as under berthd: an existing one is reused)",
    ]
    sections = [
        Section(
            "Unit",
            (
                setting(
                    "Description",
                    _description(f"berth deployment {spec.name}'s volume {volume}"),
                ),
            ),
        ),
        Section(
            "Volume",
            (
                setting("VolumeName", volume),
                setting("Label", word("app.kubernetes.io/part-of=berth-export")),
            ),
        ),
    ]
    return unit_text(header, sections)
