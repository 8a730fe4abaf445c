"""What Quadlet on a single host cannot carry, beyond berth's endpoint features
(`daemon.export.left_out`): one `LeftOut` per spec field, in the spec's own order."""

from __future__ import annotations

import ipaddress
import re

from config.spec import DeploymentSpec, MountType, Update, UpstreamProtocol
from daemon.export.bundle import LeftOut

_COMMIT = re.compile(r"[0-9a-f]{7,40}")
_PROXY = "put a reverse proxy (nginx, HAProxy, Caddy) in front of the replicas' ports"


def quadlet_misses(spec: DeploymentSpec) -> list[LeftOut]:
    found: list[LeftOut] = []
    count = max(spec.replicas.min, 1)
    if spec.command is not None and "" in spec.command:
        found.append(
            LeftOut(
                "command",
                "an empty argument: Quadlet 5.4's Exec= ends at an empty word, so it and "
                "every argument after it are dropped; wrap the command in sh -c",
            )
        )
    if spec.resources.gpu_memory is not None:
        found.append(
            LeftOut(
                "resources.gpu_memory",
                "no VRAM packing: every replica gets GPU 0 (AddDevice=nvidia.com/gpu=0) with "
                "no VRAM limit; choose GPUs per unit by hand",
            )
        )
    if spec.replicas.fixed and spec.replicas.min == 0:
        found.append(
            LeftOut(
                "replicas.count",
                "0 replicas: one unit is written without [Install]; start it by hand",
            )
        )
    elif not spec.replicas.fixed:
        found.append(
            LeftOut(
                "replicas.max",
                f"no autoscaling between {spec.replicas.min} and {spec.replicas.max}: "
                f"{count} replica unit(s) always run (copy a unit, with the next port, "
                "for more)" + (", and none scales to zero" if spec.replicas.min == 0 else ""),
            )
        )
    if spec.autoscale.metrics:
        found.append(
            LeftOut(
                "autoscale.metrics",
                "no autoscaler on a single host: nothing watches "
                + ", ".join(m.metric.value for m in spec.autoscale.metrics),
            )
        )
    health = spec.health
    if health.readiness is not None:
        if health.liveness is not None:
            reason = (
                "not run: Podman has one regular healthcheck, the liveness probe's; no load "
                "balancer takes an unready replica out of rotation"
            )
        else:
            reason = (
                "a Podman healthcheck status only (Notify=healthy waits for its first pass): "
                "no load balancer takes an unready replica out of rotation"
            )
            if health.readiness.success_threshold > 1:
                reason += (
                    f"; success_threshold {health.readiness.success_threshold}: one pass counts"
                )
        found.append(LeftOut("health.readiness", reason))
    if spec.update != Update():
        found.append(
            LeftOut(
                "update",
                "no rolling update or automatic rollback (max_surge, max_unavailable, "
                "strategy, progress_deadline, drain_timeout): restart the replicas one at a "
                "time after a change (systemctl restart NAME-I); a replica stops at once, "
                "with stop_timeout, no draining",
            )
        )
    for i, mount in enumerate(spec.mounts):
        if mount.type is MountType.GIT:
            clone = f"git clone --depth 1 {mount.source} DIR"
            if mount.ref and _COMMIT.fullmatch(mount.ref):
                clone = f"git clone {mount.source} DIR && git -C DIR checkout {mount.ref}"
            elif mount.ref:
                clone = f"git clone --depth 1 --branch {mount.ref} {mount.source} DIR"
            creds = (
                " (with the credentials the spec names)"
                if mount.credentials is not None or mount.credentials_file is not None
                else ""
            )
            found.append(
                LeftOut(
                    f"mounts[{i}]",
                    f"git mounts have no Quadlet form: {clone} yourself{creds}, then add "
                    f"Volume=DIR:{mount.target}:ro",
                )
            )
    if spec.registry is not None:
        found.append(
            LeftOut(
                "registry",
                "Quadlet 5.4's [Container] has no credentials key: log in or pull with "
                "--authfile first (README's steps); Pull=always then needs the login kept",
            )
        )
    if spec.metrics.scrape:
        found.append(
            LeftOut(
                "metrics.scrape",
                "nothing scrapes the replicas: point Prometheus at their ports (publish a "
                "metrics port other than the app's with PublishPort=127.0.0.1:HOST:PORT)",
            )
        )
    if count > 1:
        found.append(
            LeftOut(
                "endpoint.port",
                f"no load balancer: replica I answers on {spec.endpoint.port} + I "
                f"({spec.endpoint.port}-{spec.endpoint.port + count - 1}); {_PROXY}",
            )
        )
    e = spec.endpoint
    if (e.auth is not None or e.tls is not None) and not ipaddress.ip_address(e.bind).is_loopback:
        found.append(
            LeftOut(
                "endpoint.bind",
                f"{e.bind}: published on loopback instead, as nothing here checks the "
                "endpoint's auth or serves its TLS; put an authenticating TLS proxy in front "
                "before you publish the replicas on the network (PublishPort=)",
            )
        )
    if spec.endpoint.upstream_protocol is UpstreamProtocol.H2C:
        found.append(
            LeftOut(
                "endpoint.upstream_protocol",
                "clients reach the replicas directly and must speak h2c themselves (berth's "
                "endpoint also took HTTP/1.1 and TLS)",
            )
        )
    return found
