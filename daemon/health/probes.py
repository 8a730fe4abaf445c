"""Probes: one HTTP GET or one TCP connect against a replica's port published on 127.0.0.1.

Each probe is bounded by its timeout and runs on the daemon's loop; what the results mean
(ready, restart) is `daemon.health.verdicts`'s business. HTTP 200-399 passes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from config.spec import Probe

MAX_STATUS_LINE = 4096


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


async def http_probe(probe: Probe, host: str, port: int) -> ProbeResult:
    """GET `probe.path`; 200-399 passes. Only the status line is read.

    Raw bytes on a trio stream rather than an HTTP client: berthd probes every replica on
    the endpoints' loop, and an httpx request costs that loop ~10x more CPU than this
    (bench/health.sh measures what probing costs the proxy).
    """
    head = [f"GET {probe.path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    head.extend(f"{name}: {value}" for name, value in probe.headers.items())
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    with trio.move_on_after(probe.timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            return ProbeResult(False, f"connect failed: {exc.strerror or exc}")
        async with stream:
            try:
                await stream.send_all(request)
                received = b""
                while b"\r\n" not in received and len(received) < MAX_STATUS_LINE:
                    chunk = await stream.receive_some(MAX_STATUS_LINE)
                    if not chunk:
                        break
                    received += chunk
            except (OSError, trio.BrokenResourceError) as exc:
                return ProbeResult(False, f"connection broken: {exc}")
        return status_result(received)
    return ProbeResult(False, f"timeout after {probe.timeout:g}s")


def status_result(received: bytes) -> ProbeResult:
    line = received.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        shown = line[:40].decode("latin-1") or "nothing"
        return ProbeResult(False, f"not an HTTP response ({shown!r})")
    status = int(parts[1])
    return ProbeResult(200 <= status < 400, f"HTTP {status}")


# (probe, host, port) -> result: the seam unit tests replace.
ProbeFn = Callable[[Probe, str, int], Awaitable[ProbeResult]]


async def run_probe(probe: Probe, host: str, port: int) -> ProbeResult:
    if probe.tcp:
        return await tcp_probe(host, port, probe.timeout)
    return await http_probe(probe, host, port)
