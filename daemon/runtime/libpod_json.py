"""libpod's JSON read as berth's types: a container's inspect and list entries, a stats
entry and one line of the event stream. Pure: no I/O, no podman-py; `PodmanRuntime` calls
these on what Podman answered, and a line that is not a container event berthd can read is
a `MalformedEvent` saying what is wrong (the event watcher logs it and goes on)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from daemon.runtime.interface import (
    LABEL_HOST_PORT,
    ContainerEvent,
    ContainerInfo,
    ContainerStats,
)

T = TypeVar("T")

# Event attributes that are Podman's own, not the container's labels.
EVENT_ATTRIBUTES = frozenset({"containerExitCode", "image", "name", "podId"})


def info_from_inspect(body: Mapping[str, Any]) -> ContainerInfo:
    state = body.get("State") or {}
    labels = (body.get("Config") or {}).get("Labels") or {}
    bindings = (body.get("HostConfig") or {}).get("PortBindings") or {}
    ports = [binding.get("HostPort") for entries in bindings.values() for binding in entries or []]
    status = state.get("Status", "unknown")
    return ContainerInfo(
        container_id=body["Id"],
        name=body.get("Name", "").lstrip("/"),
        image=body.get("ImageName") or body.get("Image", ""),
        labels=labels,
        status=status,
        exit_code=state.get("ExitCode") if status in ("exited", "stopped") else None,
        oom_killed=bool(state.get("OOMKilled")),
        host_port=_host_port(labels, ports),
    )


def info_from_list(entry: Mapping[str, Any]) -> ContainerInfo:
    labels = entry.get("Labels") or {}
    status = entry.get("State", "unknown")
    ports = [port.get("host_port") for port in entry.get("Ports") or []]
    return ContainerInfo(
        container_id=entry["Id"],
        name=(entry.get("Names") or [""])[0],
        image=entry.get("Image", ""),
        labels=labels,
        status=status,
        exit_code=entry.get("ExitCode") if status in ("exited", "stopped") else None,
        host_port=_host_port(labels, ports),
    )


def stats_from_entry(entry: Mapping[str, Any]) -> ContainerStats:
    limit = int(entry.get("MemLimit") or 0)
    return ContainerStats(
        cpu_percent=float(entry.get("CPU") or 0.0),
        memory_bytes=int(entry.get("MemUsage") or 0),
        # libpod reports the host's memory as the limit when none is set
        memory_limit_bytes=limit or None,
        pids=int(entry.get("PIDs") or 0),
    )


def _host_port(labels: Mapping[str, str], bound: list[Any]) -> int | None:
    for candidate in (labels.get(LABEL_HOST_PORT), *bound):
        try:
            return int(candidate)
        except (TypeError, ValueError):
            continue
    return None


class MalformedEvent(ValueError):
    """A line of libpod's event stream that is not a container event berthd can read."""


def parse_event(line: bytes) -> ContainerEvent:
    """One line of libpod's event stream (a JSON object); `MalformedEvent` says what is wrong."""
    try:
        body = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise MalformedEvent(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedEvent(f"not a JSON object but {type(body).__name__}")
    actor = _field(body, "Actor", dict, {})
    attributes = _field(actor, "Attributes", dict, {})
    action = _field(body, "status", str, "") or _field(body, "Action", str, "")
    container_id = _field(body, "id", str, "") or _field(actor, "ID", str, "")
    if not action:
        raise MalformedEvent("no status or Action")
    if not container_id:
        raise MalformedEvent("no id or Actor.ID")
    labels: dict[str, str] = {}
    for key, value in attributes.items():
        if not isinstance(value, str):
            raise MalformedEvent(f"Actor.Attributes.{key} is {type(value).__name__}, not a string")
        if key not in EVENT_ATTRIBUTES:
            labels[key] = value
    exit_code = None
    code = attributes.get("containerExitCode")
    if action == "died" and code is not None:
        try:
            exit_code = int(code)
        except ValueError:
            raise MalformedEvent(f"containerExitCode {code!r} is not a number") from None
    return ContainerEvent(container_id, action, labels, exit_code)


def _field(body: dict[str, Any], key: str, kind: type[T], default: T) -> T:
    """`body[key]` when it is a `kind`; `default` when it is missing or null."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise MalformedEvent(f"{key} is {type(value).__name__}, not {kind.__name__}")
    return value
