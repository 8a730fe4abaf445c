"""What one replica's container is made of: a deployment spec (plus berthd's choices) in,
a `ContainerSpec` out. Pure: the worker allocates ports and ids, then asks here.

Every container carries the contract labels (DESIGN.md) and berth's own
(`io.berth.template`, `io.berth.host-port`), so any berthd can recognise it later.

An `[env]` value given by reference (`{ secret = "NAME" }`) is the one thing the spec does
not hold: the caller reads the secrets (`daemon.secrets.references.resolve_env_secrets`)
and hands their values in; they go into the container's environment and nowhere else (the
values are `SecretText`, whose `repr` hides them, so a ContainerSpec in a log line or a
traceback shows `'<secret>'`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from config.secret_ref import SecretRef
from config.spec import DeploymentSpec
from daemon.gpu.ledger import LABEL_GPUS
from daemon.runtime.interface import (
    LABEL_DEPLOYMENT,
    LABEL_HOST_PORT,
    LABEL_INSTANCE,
    LABEL_REPLICA,
    LABEL_SPEC_ID,
    LABEL_TEMPLATE,
    ContainerSpec,
    MountSpec,
)

REPLICA_HOST = "127.0.0.1"
# Published ports beyond the app port (a probe on another port): "8081=34567,9000=34568".
LABEL_EXTRA_PORTS = "io.berth.extra-ports"


def format_extra_ports(ports: Mapping[int, int]) -> str:
    return ",".join(f"{inner}={outer}" for inner, outer in sorted(ports.items()))


def parse_extra_ports(text: str) -> dict[int, int]:
    """Container port -> host port, from the label; malformed items are ignored."""
    ports: dict[int, int] = {}
    for item in text.split(","):
        inner, _, outer = item.partition("=")
        if inner.isdigit() and outer.isdigit():
            ports[int(inner)] = int(outer)
    return ports


@dataclass(frozen=True)
class ReplicaIdentity:
    instance: str
    deployment: str
    replica_id: str
    spec_id: str
    template_id: str


@dataclass(frozen=True)
class ReplicaPlacement:
    """What berthd chose for this replica: its host ports and devices."""

    host_port: int
    extra_ports: Mapping[int, int] = field(default_factory=dict)  # container -> host
    devices: tuple[str, ...] = ()


def container_name(deployment: str, replica_id: str) -> str:
    return f"berth-{deployment}-{replica_id}"


def replica_labels(
    who: ReplicaIdentity,
    host_port: int,
    extra_ports: Mapping[int, int] | None = None,
    devices: tuple[str, ...] = (),
) -> dict[str, str]:
    labels = {
        LABEL_INSTANCE: who.instance,
        LABEL_DEPLOYMENT: who.deployment,
        LABEL_REPLICA: who.replica_id,
        LABEL_SPEC_ID: who.spec_id,
        LABEL_TEMPLATE: who.template_id,
        LABEL_HOST_PORT: str(host_port),
    }
    if extra_ports:
        labels[LABEL_EXTRA_PORTS] = format_extra_ports(extra_ports)
    if devices:
        labels[LABEL_GPUS] = ",".join(devices)
    return labels


class MissingSecretValue(LookupError):
    """The caller did not hand in the value of a secret the environment names (a bug)."""


def container_env(
    env: Mapping[str, str | SecretRef], secret_values: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment: literal values as written, references as their values."""
    out: dict[str, str] = {}
    for key, value in env.items():
        if isinstance(value, SecretRef):
            if value.name not in secret_values:
                raise MissingSecretValue(f'env.{key}: secret "{value.name}" was not read')
            out[key] = secret_values[value.name]
        else:
            out[key] = value
    return out


def replica_container(
    spec: DeploymentSpec,
    who: ReplicaIdentity,
    where: ReplicaPlacement,
    mounts: tuple[MountSpec, ...] = (),
    secret_values: Mapping[str, str] | None = None,
) -> ContainerSpec:
    return ContainerSpec(
        name=container_name(who.deployment, who.replica_id),
        image=spec.image,
        labels=replica_labels(who, where.host_port, where.extra_ports, where.devices),
        app_port=spec.port,
        host_port=where.host_port,
        host_ip=REPLICA_HOST,
        env=container_env(spec.env, secret_values or {}),
        command=spec.command,
        cpus=spec.resources.cpus,
        memory_bytes=spec.resources.memory,
        devices=where.devices,
        stop_timeout=spec.stop_timeout,
        extra_ports=dict(where.extra_ports),
        mounts=mounts,
        shm_size=spec.resources.shm_size,
        ipc=spec.resources.ipc,
        ulimits=dict(spec.resources.ulimits),
    )
