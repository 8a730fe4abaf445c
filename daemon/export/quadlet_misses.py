"""What Quadlet on a single host cannot carry, beyond berth's endpoint features
(`daemon.export.left_out`): one `LeftOut` per spec field, in the spec's own order.

Each reason says what berth did with the field (or does by default) and what the units do
instead, in words that need none of berth's docs: the README lists them under "What the
spec sets that Podman Quadlet cannot express".
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from config.spec import DeploymentSpec, Endpoint, MountType, Update, UpstreamProtocol
from daemon.export.bundle import LeftOut
from daemon.export.quadlet_steps import git_dir, unit_name
from daemon.export.quadlet_text import go_duration

_PROXY = "put a reverse proxy (nginx, HAProxy, Caddy) in front of the replicas' ports"


def _units(spec: DeploymentSpec, count: int) -> str:
    names = ", ".join(unit_name(spec, i) for i in range(count))
    return f"{count} unit{'s' if count > 1 else ''} ({names})"


def _duration(seconds: float) -> str:
    """As a spec writes it: "5m", "1h", "90s", "1500ms"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return go_duration(seconds)


def quadlet_misses(spec: DeploymentSpec) -> list[LeftOut]:
    found: list[LeftOut] = []
    count = max(spec.replicas.min, 1)
    r = spec.replicas
    if spec.command is not None and "" in spec.command:
        found.append(
            LeftOut(
                "command",
                'an empty argument (""): berth passed it on; here Quadlet 5.4 drops it and '
                "every argument after it from Exec=: wrap the command in sh -c '...' to "
                "pass one",
            )
        )
    if spec.resources.gpu_memory is not None:
        found.append(
            LeftOut(
                "resources.gpu_memory",
                "berth put several replicas on one GPU where its free memory allowed; here "
                "every replica gets GPU 0 (AddDevice=nvidia.com/gpu=0) with no memory "
                "limit: choose a GPU per unit by hand",
            )
        )
    if r.min == 0:
        idle = (
            f"scale_to_zero_after ({_duration(r.scale_to_zero_after)})"
            if r.scale_to_zero_after is not None
            else f"autoscale.scale_down_delay ({_duration(spec.autoscale.scale_down_delay)})"
        )
        found.append(
            LeftOut(
                "replicas.min",
                f"0: berth stopped the last replica after {idle} without requests and "
                "started one when the next request came (holding it meanwhile); here "
                f"{_units(spec, count)} runs all the time",
            )
        )
    if not r.fixed:
        found.append(
            LeftOut(
                "replicas.max",
                f"berth's autoscaler ran between {r.min} and {r.max} replicas; here "
                f"{_units(spec, count)} {'run' if count > 1 else 'runs'} and nothing adds "
                "more (copy a unit, with the next ContainerName and PublishPort port)",
            )
        )
    if spec.autoscale.metrics and not r.fixed:  # a fixed count: berth ignores the metrics too
        found.append(
            LeftOut(
                "autoscale.metrics",
                "berth added and removed replicas on "
                + ", ".join(m.metric.value for m in spec.autoscale.metrics)
                + "; nothing watches them here: the number of units is fixed",
            )
        )
    health = spec.health
    if health.readiness is not None:
        if health.liveness is not None:
            reason = (
                "not run: Podman has one regular healthcheck, here the liveness probe's. "
                "berth sent requests only to replicas passing the readiness probe; nothing "
                "here routes requests"
            )
        else:
            reason = (
                "berth sent requests only to replicas passing it; here it is a health "
                "status only (podman ps shows it), which systemctl start waits for "
                "(Notify=healthy): nothing takes a failing replica out of use"
            )
            if health.readiness.success_threshold > 1:
                reason += (
                    f"; one pass counts, not success_threshold "
                    f"({health.readiness.success_threshold})"
                )
        found.append(LeftOut("health.readiness", reason))
    u, default = spec.update, Update()
    if replace(u, drain_timeout=default.drain_timeout) != default:
        found.append(
            LeftOut(
                "update",
                "berth replaced replicas one by one on a change (max_surge, "
                "max_unavailable, strategy) and undid an update not ready within "
                "progress_deadline; here you restart the units one at a time after editing "
                f"them (systemctl restart {unit_name(spec, 0)})",
            )
        )
    if u.drain_timeout > 0:
        given = " (berth's default)" if u.drain_timeout == default.drain_timeout else ""
        found.append(
            LeftOut(
                "update.drain_timeout",
                f"berth let a leaving replica finish its requests for "
                f"{_duration(u.drain_timeout)}{given} before SIGTERM, sending it no new "
                "ones; here a unit that stops gets SIGTERM at once (then SIGKILL after "
                "stop_timeout), with requests still in flight",
            )
        )
    for i, mount in enumerate(spec.mounts):
        if mount.type is MountType.GIT:
            found.append(
                LeftOut(
                    f"mounts[{i}]",
                    f"berth cloned {mount.source} ({mount.ref or 'its default branch'}) "
                    "again for each revision it ran; here the apply steps clone it once "
                    f"into {git_dir(spec, i)} and the checkout stays as it is: to update "
                    "it, clone it again there and restart the units",
                )
            )
    if spec.registry is not None:
        found.append(
            LeftOut(
                "registry",
                "berth logged in to the registry with these credentials at each pull; "
                "Quadlet 5.4 has no key for them, so here the apply steps log in (or pull "
                "with --authfile) before the start"
                + (
                    ", and as pull = always pulls at every start, the login must still hold "
                    "then (podman login keeps it in /run, which a reboot clears)"
                    if spec.pull.value == "always"
                    else ""
                ),
            )
        )
    for j, scrape in enumerate(spec.metrics.scrape):
        where = (
            "the replicas' published ports"
            if scrape.port == spec.port
            else f"port {scrape.port}, which is not published: add PublishPort="
            f"127.0.0.1:HOSTPORT:{scrape.port}"
        )
        found.append(
            LeftOut(
                f"metrics.scrape[{j}]",
                f"berth read the replicas' metrics at {scrape.path} on port {scrape.port} "
                f"(for autoscaling and its own /metrics); nothing does here: point "
                f"Prometheus at {where}",
            )
        )
    if count > 1:
        e = spec.endpoint
        found.append(
            LeftOut(
                "endpoint.port",
                f"berth's endpoint spread requests over the replicas on one port, {e.port}; "
                f"here replica I answers on its own port {e.port} + I "
                f"({e.port}-{e.port + count - 1}): {_PROXY}",
            )
        )
    e = spec.endpoint
    if (e.auth is not None or e.tls is not None) and not ipaddress.ip_address(e.bind).is_loopback:
        found.append(
            LeftOut(
                "endpoint.bind",
                f"{e.bind}: berth served it behind the endpoint's auth or TLS, which are not "
                "carried, so the replicas are published on loopback only; put an "
                "authenticating TLS proxy in front before you publish them on the network "
                "(PublishPort=)",
            )
        )
    if e.cold_start_timeout != Endpoint(port=e.port).cold_start_timeout:
        found.append(
            LeftOut(
                "endpoint.cold_start_timeout",
                f"{_duration(e.cold_start_timeout)}: berth's endpoint held a request that "
                "found no ready replica while one was starting (a first start, a restart"
                + (", a scale from zero" if r.min == 0 else "")
                + "); here nothing holds it: a request to a replica still starting or "
                "restarting fails at once",
            )
        )
    if spec.endpoint.upstream_protocol is UpstreamProtocol.H2C:
        found.append(
            LeftOut(
                "endpoint.upstream_protocol",
                "h2c: berth's endpoint took HTTP/1.1, HTTP/2 and TLS from clients and spoke "
                "h2c to the replicas; here clients reach the replicas directly and must speak "
                "h2c (HTTP/2 without TLS, as gRPC clients do) themselves",
            )
        )
    return found
