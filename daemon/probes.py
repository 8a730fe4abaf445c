"""Probes: one HTTP GET or one TCP connect against a replica's port published on 127.0.0.1.

Each probe is bounded by its timeout and runs on the daemon's loop; what the results mean
(ready, restart) is `daemon.health`'s business. HTTP 200-399 passes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import trio

from config.spec import Probe


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # "HTTP 200", "connect refused", "timeout after 1s", ...


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


# (probe, host, port) -> result: the seam unit tests replace.
ProbeFn = Callable[[Probe, str, int], Awaitable[ProbeResult]]


async def run_probe(client: httpx.AsyncClient, probe: Probe, host: str, port: int) -> ProbeResult:
    if probe.tcp:
        return await tcp_probe(host, port, probe.timeout)
    return await http_probe(client, probe, host, port)
