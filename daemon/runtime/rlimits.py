"""A replica's rlimits as Podman is sent them: the spec's, on top of the engine's defaults.

Podman 4.3 drops containers.conf's `default_ulimits` for a container that asks for any
rlimit, and gives nofile and nproc 1048576 each instead. Seen on the project's hosts (whose
containers.conf sets nofile=1024:1024 because they lack CAP_SYS_RESOURCE): a spec asking only
for memlock got a container that could not start ("error setting rlimit type 7: operation
not permitted"). Later Podmans merge the two lists. Sending the whole list, the engine's
defaults with the spec's on top, means the same to both: only what the spec names changes.

The engine's defaults are what Podman gives a container that asks for none: `PodmanRuntime`
reads them once, from the inspect data (`HostConfig.Ulimits`) of a container it creates for
that and removes unstarted, only when a spec first asks for an rlimit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from config.spec import Ulimit

# An rlimit failure at start: the container asked for more than the engine may grant.
SETRLIMIT_FAILURE = "error setting rlimit"
SETRLIMIT_HINT = (
    "a [resources.ulimits] value is above a hard limit that Podman itself runs with, and "
    "Podman cannot raise it without CAP_SYS_RESOURCE: lower the value, or raise Podman's own "
    "limit (e.g. LimitNOFILE= / LimitMEMLOCK= in its systemd unit)"
)


def engine_defaults(inspected: Sequence[Mapping[str, Any]] | None) -> dict[str, Ulimit]:
    """`HostConfig.Ulimits` of an inspect ([{"Name": "RLIMIT_NOFILE", "Soft", "Hard"}]) by
    the name Podman is sent ("nofile"); entries that cannot be read are left out."""
    limits: dict[str, Ulimit] = {}
    for entry in inspected or ():
        name, soft, hard = entry.get("Name"), entry.get("Soft"), entry.get("Hard")
        if not isinstance(name, str) or not isinstance(soft, int) or not isinstance(hard, int):
            continue
        limits[name.lower().removeprefix("rlimit_")] = Ulimit(soft=soft, hard=hard)
    return limits


def ulimits_kwarg(
    asked: Mapping[str, Ulimit], defaults: Mapping[str, Ulimit]
) -> list[dict[str, object]]:
    """podman-py's `ulimits` for create: every default, each one `asked` names replaced."""
    merged = {**defaults, **asked}
    return [
        {"Name": name, "Soft": limit.soft, "Hard": limit.hard}
        for name, limit in sorted(merged.items())
    ]
