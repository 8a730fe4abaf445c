"""Readiness of replicas: probes, and the counting that turns probe results into `ready`.

A replica starts not ready. It becomes ready after `success_threshold` consecutive passes and
leaves rotation after `failure_threshold` consecutive failures; with no readiness probe, one
TCP connect to its port is the probe (the app is listening). Health is never carried over a
berthd restart: adopted replicas start not ready and serve again after one passing probe.

Probes run on the daemon's loop, each bounded by its timeout, against the replica's port
published on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import trio

from config.spec import Probe

DEFAULT_PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # "HTTP 200", "connect refused", "timeout after 1s", ...


@dataclass
class ReplicaHealth:
    ready: bool = False
    ever_ready: bool = False
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    last_result: ProbeResult | None = None

    def record(self, result: ProbeResult, probe: Probe | None) -> None:
        success_threshold = probe.success_threshold if probe else 1
        failure_threshold = probe.failure_threshold if probe else 1
        self.last_result = result
        if result.ok:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            if self.consecutive_successes >= success_threshold:
                self.ready = self.ever_ready = True
        else:
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            if self.consecutive_failures >= failure_threshold:
                self.ready = False


async def tcp_probe(host: str, port: int, limit: float) -> ProbeResult:
    with trio.move_on_after(limit):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            return ProbeResult(False, f"connect failed: {exc.strerror or exc}")
        await stream.aclose()
        return ProbeResult(True, "TCP connect")
    return ProbeResult(False, f"timeout after {limit:g}s")


async def http_probe(client: httpx.AsyncClient, probe: Probe, host: str, port: int) -> ProbeResult:
    url = f"http://{host}:{port}{probe.path}"
    try:
        with trio.fail_after(probe.timeout):
            response = await client.get(url, headers=dict(probe.headers))
    except trio.TooSlowError:
        return ProbeResult(False, f"timeout after {probe.timeout:g}s")
    except httpx.HTTPError as exc:
        return ProbeResult(
            False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        )
    ok = 200 <= response.status_code < 400
    return ProbeResult(ok, f"HTTP {response.status_code}")


# (probe or None for the default TCP check, host, port) -> result; a seam for unit tests.
ProbeFn = Callable[[Probe | None, str, int], Awaitable["ProbeResult"]]


async def run_probe(
    client: httpx.AsyncClient, probe: Probe | None, host: str, port: int
) -> ProbeResult:
    if probe is None:
        return await tcp_probe(host, port, DEFAULT_PROBE_TIMEOUT)
    if probe.tcp:
        return await tcp_probe(host, port, probe.timeout)
    return await http_probe(client, probe, host, port)
