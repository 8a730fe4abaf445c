"""Connection limits and slow clients (issue 13, point 7) against the real proxy on 127.0.0.1.

The slowloris clients run in a process of their own (tests/integration/slowloris.py), so
that what the test measures is the proxy's work for them, not theirs. Every wait is
bounded; every loop has a fixed count or a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from proxy.admission import ConnectionBudget, default_budget
from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.upstreams import Upstream
from tests.integration.test_proxy_edges import ok, replica
from tests.integration.test_proxy_endpoint import WAIT, Client, backends

SLOWLORIS = Path(__file__).with_name("slowloris.py")


@asynccontextmanager
async def proxy(
    upstream: Upstream, timeouts: EndpointTimeouts, **kw: object
) -> AsyncIterator[Endpoint]:
    ep = Endpoint("limits", bind="127.0.0.1", port=0, timeouts=timeouts, **kw)  # type: ignore[arg-type]
    ep.set_upstreams([upstream])
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        yield ep
        nursery.cancel_scope.cancel()


async def closed_after(stream: trio.SocketStream) -> tuple[float, bytes]:
    """Seconds until the proxy ends the connection, and what it sent before."""
    start = trio.current_time()
    out = b""
    with trio.fail_after(WAIT):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            out += data
    return trio.current_time() - start, out


def test_default_budget_numbers() -> None:
    assert default_budget(65536) == 32256  # berthd's unit: LimitNOFILE=65536
    assert default_budget(20000) == 9488  # these machines' hard limit: 9,000 streams fit
    assert default_budget(1024) == 384
    assert default_budget(100) == 16  # never below MIN_BUDGET


# --- header_read and the body rate ------------------------------------------------------------


async def test_a_silent_connection_is_closed_at_header_read_not_client_idle() -> None:
    timeouts = EndpointTimeouts(header_read=1.0, client_idle=60.0)
    async with backends("a") as (a,), proxy(a.upstream, timeouts) as ep:
        stream = await trio.open_tcp_stream(*ep.address)
        async with stream:
            took, out = await closed_after(stream)
    assert 0.7 <= took <= 2.0 and out == b""


async def test_a_trickled_head_is_408_at_header_read_from_accept() -> None:
    timeouts = EndpointTimeouts(header_read=1.0, client_idle=60.0)
    async with backends("a") as (a,), proxy(a.upstream, timeouts) as ep:
        stream = await trio.open_tcp_stream(*ep.address)
        async with stream, trio.open_nursery() as nursery:

            async def trickle() -> None:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
                for _ in range(40):
                    await trio.sleep(0.1)
                    try:
                        await stream.send_all(b"X: y\r\n")
                    except trio.BrokenResourceError:
                        return

            nursery.start_soon(trickle)
            took, out = await closed_after(stream)
            nursery.cancel_scope.cancel()
    assert 0.7 <= took <= 2.0
    assert out.startswith(b"HTTP/1.1 408 ")
    assert a.requests == []


async def test_a_slow_body_is_cut_with_408() -> None:
    timeouts = EndpointTimeouts(body_min_rate=100.0, body_rate_window=1.0)
    # A replica that takes a request cut short in its stride (the proxy closes it then).
    async with replica(ok) as a, proxy(a.upstream, timeouts) as ep:
        stream = await trio.open_tcp_stream(*ep.address)
        async with stream, trio.open_nursery() as nursery:

            async def trickle() -> None:
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"b" * 10
                )
                for _ in range(100):  # 10 bytes/s: a tenth of the rate
                    await trio.sleep(0.1)
                    try:
                        await stream.send_all(b"b")
                    except trio.BrokenResourceError:
                        return

            nursery.start_soon(trickle)
            took, out = await closed_after(stream)
            nursery.cancel_scope.cancel()
    # One window (1 s) plus the poller's tick, then the 408 (nothing answered yet).
    assert 0.7 <= took <= 3.0, took
    assert out.startswith(b"HTTP/1.1 408 "), out
    stats = ep.statistics()
    assert stats.status.s4xx == 1 and stats.status.s2xx == 0


async def test_a_body_at_the_rate_passes() -> None:
    timeouts = EndpointTimeouts(body_min_rate=100.0, body_rate_window=1.0)
    async with backends("a") as (a,), proxy(a.upstream, timeouts) as ep:
        stream = await trio.open_tcp_stream(*ep.address)
        async with stream:
            with trio.fail_after(WAIT):
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n"
                    b"Connection: close\r\n\r\n"
                )
                for _ in range(10):  # 50 bytes every 0.2 s: 250 bytes/s, for 2 s
                    await trio.sleep(0.2)
                    await stream.send_all(b"c" * 50)
                took, out = await closed_after(stream)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"c" * 500)


# --- the connection cap -----------------------------------------------------------------------


async def test_over_the_cap_new_connections_wait_and_open_ones_are_served() -> None:
    async with (
        backends("a") as (a,),
        proxy(a.upstream, EndpointTimeouts(), max_connections=3) as ep,
    ):
        port = ep.address[1]
        async with Client.open(port) as c1, Client.open(port) as c2, Client.open(port) as c3:
            for c in (c1, c2, c3):
                assert (await c.request("GET", "/")).status == 200
            assert ep.connections() == 3
            # The fourth connects (the kernel's backlog) but is not accepted, not answered.
            fourth = await trio.open_tcp_stream("127.0.0.1", port)
            async with fourth:
                await fourth.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                with trio.move_on_after(0.5):
                    await fourth.receive_some(1)
                    pytest.fail("a connection over the cap was served")
                assert ep.connections() == 3
                for c in (c1, c2, c3):  # those already open are not hurt
                    assert (await c.request("GET", "/")).status == 200
                await c3.stream.aclose()  # one closes: the waiting one is accepted, served
                took, out = await closed_after(fourth)
                assert out.startswith(b"HTTP/1.1 200 ")
            ep.set_limits(4, ())  # in place: room for one more at once
            async with Client.open(port) as c4:
                assert (await c4.request("GET", "/")).status == 200


async def test_the_budget_is_shared_across_endpoints() -> None:
    budget = ConnectionBudget(2)
    async with (
        backends("a") as (a,),
        proxy(a.upstream, EndpointTimeouts(), budget=budget) as one,
        proxy(a.upstream, EndpointTimeouts(), budget=budget) as two,
    ):
        async with Client.open(one.address[1]) as c1, Client.open(two.address[1]) as c2:
            assert (await c1.request("GET", "/")).status == 200
            assert (await c2.request("GET", "/")).status == 200
            assert budget.open == 2
            waiting = await trio.open_tcp_stream(*two.address)
            async with waiting:
                await waiting.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                with trio.move_on_after(0.5):
                    await waiting.receive_some(1)
                    pytest.fail("a connection over the shared budget was served")
                await c1.stream.aclose()  # a slot freed at the *other* endpoint
                _, out = await closed_after(waiting)
                assert out.startswith(b"HTTP/1.1 200 ")


# --- slowloris --------------------------------------------------------------------------------


async def measure(port: int, seconds: float) -> list[float]:
    """Four keep-alive clients, one request after another, for `seconds`: latencies."""
    latencies: list[float] = []

    async def client() -> None:
        async with Client.open(port) as c:
            end = trio.current_time() + seconds
            for _ in range(100_000):
                if trio.current_time() >= end:
                    return
                t = trio.current_time()
                assert (await c.request("GET", "/")).status == 200
                latencies.append(trio.current_time() - t)

    with trio.fail_after(seconds + WAIT):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(client)
    return latencies


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(0.99 * (len(ordered) - 1))]


@pytest.mark.slow
async def test_slowloris_1000_connections_cut_at_header_read_while_others_are_served() -> None:
    header_read, trickle, slow = 3.0, 1.0, 1000
    timeouts = EndpointTimeouts(header_read=header_read)
    budget = ConnectionBudget(4000)
    async with backends("a") as (a,), proxy(a.upstream, timeouts, budget=budget) as ep:
        port = ep.address[1]
        await measure(port, 0.5)  # warm-up
        quiet = await measure(port, 4.0)
        with trio.fail_after(60):
            attacker = await trio.lowlevel.open_process(
                [sys.executable, str(SLOWLORIS), str(port), str(slow), str(trickle), "8"],
                stdout=subprocess.PIPE,
            )
            try:
                assert attacker.stdout is not None
                out = b""
                while b"open\n" not in out:
                    data = await attacker.stdout.receive_some(65536)
                    assert data, "the slowloris process ended early"
                    out += data
                loud = await measure(port, 4.0)
                held = ep.connections()
                while data := await attacker.stdout.receive_some(65536):
                    out += data
                await attacker.wait()
            finally:
                if attacker.returncode is None:
                    attacker.kill()  # ours, by its handle
                    await attacker.wait()
    report = json.loads(out.split(b"open\n", 1)[1])
    lifetimes = report["lifetimes"]
    print(
        f"quiet p99 {p99(quiet) * 1e3:.2f} ms ({len(quiet)} requests), "
        f"under slowloris p99 {p99(loud) * 1e3:.2f} ms ({len(loud)} requests), "
        f"{held} connections held, {len(lifetimes)} slow ones cut, "
        f"lifetimes {min(lifetimes):.2f}-{max(lifetimes):.2f} s"
    )
    assert held >= slow  # the slow ones were all being held while the others measured
    # Every slow connection was cut at header_read (within the watchdog's tick and the
    # attacker's 50 ms poll), each with a 408, and they were cut in their thousands.
    assert len(lifetimes) >= slow
    assert report["got_408"] == len(lifetimes)
    assert all(header_read - 0.6 <= t <= header_read + 1.0 for t in lifetimes)
    assert p99(loud) <= 2 * max(p99(quiet), 0.002), (p99(quiet), p99(loud))
