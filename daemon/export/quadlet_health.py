"""A spec's probes as Podman healthchecks, in Quadlet 5.4's Health* keys.

Podman runs one regular healthcheck (`HealthCmd=`) and, before it, an optional startup
healthcheck (`HealthStartupCmd=`), both inside the container. The mapping:

- startup probe -> HealthStartup*: its interval, timeout and `HealthStartupRetries` =
  ceil(budget / period) attempts, so it has the same budget from the start (Podman restarts
  the container when they are used up, as berthd restarts a replica past its budget);
- liveness probe -> the regular check with `HealthOnFailure=kill` (systemd's
  Restart=always then restarts the replica); else the readiness probe (a status only);
  else the startup probe's command (Podman needs a regular check for `Notify=healthy`);
- period -> HealthInterval, timeout -> HealthTimeout, failure_threshold -> HealthRetries,
  initial_delay -> HealthStartPeriod (failures in it do not count).

An HTTP probe is curl (or, without it, wget) against 127.0.0.1 inside the container, with
the probe's headers; a TCP probe is `nc -z` (or bash's /dev/tcp). The image must have one.
"""

from __future__ import annotations

import math
import shlex

from config.spec import DeploymentSpec, Probe
from daemon.export.quadlet_text import Line, comment, go_duration, plain_value, setting


def regular_probe(spec: DeploymentSpec) -> tuple[Probe | None, bool]:
    """The probe Podman's regular healthcheck runs, and whether a failure kills."""
    h = spec.health
    if h.liveness is not None:
        return h.liveness, True
    if h.readiness is not None:
        return h.readiness, False
    return h.startup, False


def probe_command(probe: Probe) -> str:
    """The shell command (Podman runs it with /bin/sh -c) that passes when the probe does."""
    if probe.tcp:
        bash = shlex.quote(f": </dev/tcp/127.0.0.1/{probe.port}")
        return (
            f"if command -v nc >/dev/null 2>&1; then nc -z 127.0.0.1 {probe.port}; "
            f"else bash -c {bash}; fi"
        )
    url = shlex.quote(f"http://127.0.0.1:{probe.port}{probe.path}")
    headers = sorted(probe.headers.items())
    curl = "".join(f" -H {shlex.quote(f'{k}: {v}')}" for k, v in headers)
    wget = "".join(f" --header {shlex.quote(f'{k}: {v}')}" for k, v in headers)
    return (
        f"if command -v curl >/dev/null 2>&1; then curl -fsS -o /dev/null{curl} {url}; "
        f"else wget -q -O /dev/null{wget} {url}; fi"
    )


def startup_retries(probe: Probe) -> int:
    return max(1, math.ceil(probe.budget / probe.period))


def start_budget(spec: DeploymentSpec) -> float:
    """Seconds from the container's start until it must be healthy (Notify=healthy)."""
    startup = spec.health.startup
    total = startup.budget if startup is not None else 0.0
    regular, _ = regular_probe(spec)
    if regular is not None and regular is not startup:
        total += regular.initial_delay + regular.failure_threshold * regular.period
    return total


def health_lines(spec: DeploymentSpec) -> list[Line]:
    regular, kill = regular_probe(spec)
    if regular is None:
        return []
    startup = spec.health.startup
    which = "liveness" if kill else "readiness" if regular is spec.health.readiness else "startup"
    lines = [
        comment(
            f"The {which} probe, run inside the container: needs "
            + ("nc or bash" if regular.tcp else "curl or wget")
            + " in the image"
        ),
        setting("HealthCmd", plain_value(probe_command(regular))),
        setting("HealthInterval", go_duration(regular.period)),
        setting("HealthTimeout", go_duration(regular.timeout)),
        setting("HealthRetries", str(regular.failure_threshold)),
    ]
    if regular.initial_delay > 0:
        lines.append(setting("HealthStartPeriod", go_duration(regular.initial_delay)))
    if kill:
        lines.append(setting("HealthOnFailure", "kill"))
    if startup is not None:
        lines.extend(
            [
                comment(
                    f"The startup probe: {startup_retries(startup)} tries every "
                    f"{go_duration(startup.period)}, its budget of {go_duration(startup.budget)}"
                ),
                setting("HealthStartupCmd", plain_value(probe_command(startup))),
                setting("HealthStartupInterval", go_duration(startup.period)),
                setting("HealthStartupTimeout", go_duration(startup.timeout)),
                setting("HealthStartupRetries", str(startup_retries(startup))),
            ]
        )
    return lines
