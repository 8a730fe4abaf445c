"""An endpoint's admission and passive-health figures for `GET .../metrics` ("traffic")."""

from __future__ import annotations

from daemon.api.control_plane import ControlPlane


def traffic_metrics(daemon: ControlPlane, name: str) -> dict[str, object] | None:
    """Requests queued now and ever, how long those that left the queue waited (p50, p99,
    mean, seconds, over the proxy's window), and the replicas ejected now; None when the
    deployment has no endpoint."""
    endpoint = daemon.endpoints.get(name)
    if endpoint is None:
        return None
    stats = endpoint.statistics()
    wait = stats.queue_time
    return {
        "queued": stats.queued,
        "queued_total": stats.queued_total,
        "queue_time": {"count": wait.count, "p50": wait.p50, "p99": wait.p99, "mean": wait.mean},
        "ejected": list(stats.ejected),
        "grpc_status": dict(stats.grpc_status),
    }
