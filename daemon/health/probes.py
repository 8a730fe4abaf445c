"""Probes: one HTTP GET or one TCP connect against a replica's port published on 127.0.0.1.

Each probe is bounded by its timeout and runs on the daemon's loop; what the results mean
(ready, restart) is `daemon.health.verdicts`'s business. HTTP 200-399 passes. An HTTP probe
speaks through berthd's one client helper (`daemon.http.client`, h11 on a trio stream) and
reads the response head only: the status decides, the body is never read. Not through an
HTTP client library: berthd probes every replica on the endpoints' loop, and an httpx
request costs that loop ~10x more CPU (bench/health.sh measures what probing costs the proxy).
The client's failures become results here, worded for `berth get`: "connect failed: ...",
"connection broken: ...", "not an HTTP response ('...')", "timeout after 1s".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from config.spec import Probe
from daemon.http import client


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # "HTTP 200", "connect refused", "timeout after 1s", ...
    answered: bool = False  # the server answered (an HTTP status, a TCP connect)


async def tcp_probe(host: str, port: int, limit: float) -> ProbeResult:
    with trio.move_on_after(limit):
        try:
            stream = await client.connect_tcp(host, port)
        except OSError as exc:
            return ProbeResult(False, f"connect failed: {exc.strerror or exc}")
        await stream.aclose()
        return ProbeResult(True, "TCP connect", answered=True)
    return ProbeResult(False, f"timeout after {limit:g}s")


async def http_probe(probe: Probe, host: str, port: int) -> ProbeResult:
    """GET `probe.path` with `probe.headers`; 200-399 passes. Only the head is read."""
    headers = list(probe.headers.items())
    if not any(name.lower() == "host" for name, _ in headers):
        headers.insert(0, ("Host", f"{host}:{port}"))
    with trio.move_on_after(probe.timeout):
        try:
            async with client.request(
                client.TcpAddress(host, port), "GET", probe.path or "/", headers
            ) as response:
                status = response.status
        except client.ConnectFailed as exc:
            return ProbeResult(False, f"connect failed: {exc}")
        except client.ConnectionBroken as exc:
            return ProbeResult(False, f"connection broken: {exc}")
        except client.BadResponse as exc:
            return ProbeResult(False, f"not an HTTP response ({exc.shown!r})")
        except client.HttpClientError as exc:
            return ProbeResult(False, str(exc))
        return ProbeResult(200 <= status < 400, f"HTTP {status}", answered=True)
    return ProbeResult(False, f"timeout after {probe.timeout:g}s")


# (probe, host, port) -> result: the seam unit tests replace.
ProbeFn = Callable[[Probe, str, int], Awaitable[ProbeResult]]


async def run_probe(probe: Probe, host: str, port: int) -> ProbeResult:
    if probe.tcp:
        return await tcp_probe(host, port, probe.timeout)
    return await http_probe(probe, host, port)
