"""Which berthd.toml settings changed between berthd's start and a SIGHUP.

berthd applies its settings (`DaemonSettings`) when it starts, and only then: a SIGHUP reads
the same TLS files and secrets again and applies the specs directory again, but listens on
the same addresses, keeps the same state dir, socket, mounts rules, event limits and
gateway protection. So every setting is start-only; `start_only_changes` names each one that
differs, as berthd.toml writes it (`[gateway] listen`, `[metrics] listen`), for the warning
that a restart is needed to apply it.
"""

from __future__ import annotations

from config.parse_gateway import GatewaySettings
from config.settings import DaemonSettings

RESTART_HINT = "restart berthd (kill -USR2 or systemctl restart) to apply"

# DaemonSettings' fields, as berthd.toml names them (`--flag` and environment alike).
_NAMES = {
    "state_dir": "state_dir",
    "socket": "socket",
    "podman_url": "podman_url",
    "specs": "specs",
    "allowed_roots": "[mounts] allowed_roots",
    "shared_volumes": "[mounts] shared_volumes",
    "credentials_roots": "credentials_roots",
    "metrics_listen": "[metrics] listen",
    "events_keep": "[events] keep",
    "events_max_rows": "[events] max_rows",
    "console": "[console]",  # listen and tls: the console's listener is made at start
}


def _gateway_changes(old: GatewaySettings | None, new: GatewaySettings | None) -> list[str]:
    if old is None and new is None:
        return []
    if old is None or new is None:
        return ["[gateway] (added)" if old is None else "[gateway] (removed)"]
    changed = []
    if old.listen != new.listen:
        changed.append("[gateway] listen")
    if old.max_body != new.max_body:
        changed.append("[gateway] max_body")
    if old.auth != new.auth:
        changed.append("[gateway.auth]")
    if old.tls != new.tls:
        changed.append("[gateway.tls]")
    return changed


def start_only_changes(old: DaemonSettings, new: DaemonSettings) -> list[str]:
    """The settings that differ in `new` (berthd.toml read again), by their berthd.toml names."""
    changed = [name for field, name in _NAMES.items() if getattr(old, field) != getattr(new, field)]
    return changed + _gateway_changes(old.gateway, new.gateway)


def restart_needed(name: str) -> str:
    return f"{name} changed: {RESTART_HINT}"
