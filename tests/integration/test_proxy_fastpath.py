"""The fast path (`proxy.fastpath`) and its fallbacks, against the real proxy on 127.0.0.1.

The fast path serves a kept-alive client's second and later requests when each side fits
one read; these tests make the replica (a scripted keep-alive socket server) or the client
do what it does not handle, on a connection where it was just serving, and check that the
general path goes on from there: nothing lost, nothing sent twice, slots given back,
statistics and passive health as before. Each test first checks that the fast path did
serve on that connection (`Balancer.fast_served`), so that it cannot pass by not using it.
Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import trio
from pytest import MonkeyPatch

from config.spec import Outlier
from proxy import fastpath
from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.upstreams import Upstream
from tests.integration.test_proxy_endpoint import WAIT, Client

# Answers one request: (replica, stream, request, body, index on its connection).
Script = Callable[["Replica", trio.SocketStream, h11.Request, bytes, int], Awaitable[None]]


@dataclass
class Replica:
    """A keep-alive HTTP/1.1 server that answers each request with `script`."""

    name: str
    script: Script
    port: int = 0
    requests: list[tuple[str, bytes]] = field(default_factory=list)  # (target, body)
    connections: int = 0
    closed: trio.Event = field(default_factory=trio.Event)  # a connection ended (EOF/reset)

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.name, "127.0.0.1", self.port)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            conn = h11.Connection(h11.SERVER)
            index = 0
            try:
                while True:
                    request: h11.Request | None = None
                    body = b""
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            data = await stream.receive_some(65536)
                            if not data:
                                self.closed.set()
                                return
                            conn.receive_data(data)
                            continue
                        if isinstance(ev, h11.Request):
                            request = ev
                        elif isinstance(ev, h11.Data):
                            body += ev.data
                        elif isinstance(ev, h11.EndOfMessage):
                            break
                        else:
                            return
                    assert request is not None
                    self.requests.append((request.target.decode(), body))
                    await self.script(self, stream, request, body, index)
                    index += 1
                    # The script answered with raw bytes: h11 is told the response is over.
                    conn = h11.Connection(h11.SERVER)
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
                self.closed.set()


def response(body: bytes, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


async def ok(r: Replica, s: trio.SocketStream, req: h11.Request, body: bytes, i: int) -> None:
    await s.send_all(response(b"%s %s %d" % (r.name.encode(), req.target, len(body))))


@asynccontextmanager
async def replicas(*scripts: tuple[str, Script]) -> AsyncIterator[list[Replica]]:
    out = []
    async with trio.open_nursery() as nursery:
        for name, script in scripts:
            r = Replica(name, script)
            listeners = await nursery.start(partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
            r.port = listeners[0].socket.getsockname()[1]
            out.append(r)
        yield out
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def proxy(rs: list[Replica], **kw: object) -> AsyncIterator[Endpoint]:
    ep = Endpoint("fast", bind="127.0.0.1", port=0, **kw)  # type: ignore[arg-type]
    ep.set_upstreams([r.upstream for r in rs])
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        yield ep
        nursery.cancel_scope.cancel()


def fast_served(ep: Endpoint) -> int:
    return ep._balancer.fast_served


def slots_free(ep: Endpoint) -> bool:
    b = ep._balancer
    return not any(b.slots.taken.values()) and b.totals.in_flight == 0


async def warm(ep: Endpoint, c: Client, n: int = 3, replicas: int = 1) -> None:
    """A few requests on `c`: the first, and the first to each other replica (it
    connects), through the general path, the rest fast."""
    before = fast_served(ep)
    for _ in range(n):
        assert (await c.request("GET", "/warm")).status == 200
    assert fast_served(ep) >= before + n - replicas


async def test_fast_path_serves_kept_alive_requests_and_counts_them() -> None:
    async with replicas(("a", ok), ("b", ok)) as rs, proxy(rs) as ep:
        async with Client.open(ep.address[1]) as c:
            names = [(await c.request("GET", f"/{i}")).body.split()[0] for i in range(6)]
            assert names == [b"a", b"b"] * 3  # round robin per request, as before
            # All but the connection's first request and the first to "b" (it connects).
            assert fast_served(ep) == 4
            # Head and body in one write (this client's POST writes them apart).
            with trio.fail_after(WAIT):
                await c.stream.send_all(
                    b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n12345"
                )
                c.conn.send(
                    h11.Request(
                        method="POST", target="/p", headers=[("Host", "t"), ("Content-Length", "5")]
                    )
                )
                c.conn.send(h11.Data(data=b"12345"))
                c.conn.send(h11.EndOfMessage())
                assert (await c.read_head()).status_code == 200
                assert (await c.read_body()).endswith(b"/p 5")
            assert fast_served(ep) == 5
        stats = ep.statistics()
        assert stats.requests_total == 7 and stats.status.s2xx == 7
        assert sorted(r.requests_total for r in stats.replicas) == [3, 4]
        assert slots_free(ep)
        assert rs[0].connections == 1 and rs[1].connections == 1  # pooled, reused


async def test_response_in_two_reads_goes_on_in_the_general_path() -> None:
    async def split(r: Replica, s: trio.SocketStream, req: h11.Request, b: bytes, i: int) -> None:
        if req.target != b"/split":
            await ok(r, s, req, b, i)
            return
        whole = response(b"x" * 1000)
        await s.send_all(whole[:20])
        await trio.sleep(0.05)  # the proxy has read the first part by now
        await s.send_all(whole[20:])

    async with replicas(("a", split)) as rs, proxy(rs) as ep:
        async with Client.open(ep.address[1]) as c:
            await warm(ep, c)
            reply = await c.request("GET", "/split")
            assert reply.status == 200 and reply.body == b"x" * 1000
            served = fast_served(ep)
            assert (await c.request("GET", "/after")).body == b"a /after 0"
            assert fast_served(ep) == served + 1  # and the next one is fast again
        assert [t for t, _ in rs[0].requests].count("/split") == 1
        assert rs[0].connections == 1  # the connection was pooled after the general path
        assert slots_free(ep)


async def test_request_body_over_several_reads_is_sent_whole_once() -> None:
    async with replicas(("a", ok)) as rs, proxy(rs) as ep:
        async with Client.open(ep.address[1]) as c:
            await warm(ep, c)
            served = fast_served(ep)
            with trio.fail_after(WAIT):
                head = b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"
                await c.stream.send_all(head + b"01234")
                await trio.sleep(0.05)
                await c.stream.send_all(b"56789")
                c.conn.send(
                    h11.Request(
                        method="POST",
                        target="/body",
                        headers=[("Host", "t"), ("Content-Length", "10")],
                    )
                )
                c.conn.send(h11.Data(data=b"0123456789"))
                c.conn.send(h11.EndOfMessage())
                assert (await c.read_head()).status_code == 200
                assert await c.read_body() == b"a /body 10"
            assert fast_served(ep) == served  # not the fast path's case: the general path
            assert (await c.request("GET", "/after")).status == 200
            assert fast_served(ep) == served + 1
        assert rs[0].requests.count(("/body", b"0123456789")) == 1
        assert slots_free(ep)


async def test_stale_pooled_connection_sends_the_request_once_on_a_fresh_one() -> None:
    async def close_after(
        r: Replica, s: trio.SocketStream, req: h11.Request, b: bytes, i: int
    ) -> None:
        await ok(r, s, req, b, i)
        if req.target.startswith(b"/last"):
            await s.aclose()  # kept alive by its headers, closed while pooled

    async with replicas(("a", close_after)) as rs, proxy(rs) as ep:
        async with Client.open(ep.address[1]) as c:
            await warm(ep, c)
            for i in range(5):  # a POST each time: never replayed once read
                assert (await c.request("POST", f"/last{i}", b"x")).body == b"a /last%d 1" % i
        assert [t for t, _ in rs[0].requests if t.startswith("/last")] == [
            f"/last{i}" for i in range(5)
        ]
        assert rs[0].connections == 5  # each request after a close on a fresh connection
        assert slots_free(ep)


async def test_replica_that_reads_a_post_and_closes_gives_502_once() -> None:
    async def drop(r: Replica, s: trio.SocketStream, req: h11.Request, b: bytes, i: int) -> None:
        if req.target == b"/drop":
            await s.aclose()
        else:
            await ok(r, s, req, b, i)

    async with replicas(("a", drop)) as rs, proxy(rs) as ep:
        async with Client.open(ep.address[1]) as c:
            await warm(ep, c)
            assert (await c.request("POST", "/drop", b"x")).status == 502
        assert [t for t, _ in rs[0].requests].count("/drop") == 1
        assert ep.statistics().status.s5xx == 1
        assert slots_free(ep)


async def test_5xx_from_the_fast_path_feeds_passive_health() -> None:
    async def fail(r: Replica, s: trio.SocketStream, req: h11.Request, b: bytes, i: int) -> None:
        await s.send_all(response(b"down", 500))

    rules = Outlier(consecutive_5xx=3, failures=0, ejection_time=30.0)
    async with replicas(("good", ok), ("bad", fail)) as rs, proxy(rs) as ep:
        ep.set_admission(outlier=rules)
        async with Client.open(ep.address[1]) as c:
            statuses = [(await c.request("GET", f"/{i}")).status for i in range(8)]
            assert fast_served(ep) >= 6  # the first to each replica connects
            assert ep.ejected() == frozenset({"bad"})
            assert statuses[:6] == [200, 500] * 3  # three 5xx in a row: out
            assert statuses[6:] == [200, 200]
        stats = ep.statistics()
        assert stats.status.s5xx == 3 and stats.status.s2xx == 5
        assert slots_free(ep)


async def test_replica_silent_past_read_timeout_gives_504() -> None:
    async def hang(r: Replica, s: trio.SocketStream, req: h11.Request, b: bytes, i: int) -> None:
        if req.target == b"/hang":
            await trio.sleep(WAIT)
        await ok(r, s, req, b, i)

    timeouts = EndpointTimeouts(read_idle=0.3)
    async with replicas(("a", hang)) as rs, proxy(rs, timeouts=timeouts) as ep:
        async with Client.open(ep.address[1]) as c:
            await warm(ep, c)
            with trio.fail_after(WAIT):
                assert (await c.request("GET", "/hang")).status == 504
        assert ep.statistics().status.s5xx == 1
        assert slots_free(ep)


async def test_client_that_hangs_up_while_the_replica_works_cuts_it() -> None:
    arrived = trio.Event()

    async def slow(r: Replica, s: trio.SocketStream, req: h11.Request, b: bytes, i: int) -> None:
        if req.target == b"/slow":
            arrived.set()
            with trio.move_on_after(WAIT):
                try:
                    await s.receive_some(1)  # works on, until the proxy cuts it
                except trio.BrokenResourceError:
                    pass
                r.closed.set()
            return
        await ok(r, s, req, b, i)

    async with replicas(("a", slow)) as rs, proxy(rs) as ep:
        async with Client.open(ep.address[1]) as c:
            await warm(ep, c)
            with trio.fail_after(WAIT):
                await c.send_request("GET", "/slow")
                await arrived.wait()
        with trio.fail_after(WAIT):  # the client left: the replica's connection is cut
            await rs[0].closed.wait()
        await trio.sleep(0.05)  # the proxy's side of it ends moments later
        assert slots_free(ep)
        assert ep.statistics().requests_total == 4


async def test_admission_slots_hold_through_the_fast_path() -> None:
    busy = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0}

    async def counted(r: Replica, s: trio.SocketStream, req: h11.Request, b: bytes, i: int) -> None:
        busy[r.name] += 1
        most[r.name] = max(most[r.name], busy[r.name])
        await trio.sleep(0.002)
        busy[r.name] -= 1
        await ok(r, s, req, b, i)

    async with replicas(("a", counted), ("b", counted)) as rs, proxy(rs) as ep:
        ep.set_admission(max_concurrency=1, least_request=True)
        async with Client.open(ep.address[1]) as c:
            # One client: a slot is always free, and the fast path serves.
            await warm(ep, c, 6, replicas=2)

        async def client(n: int) -> None:
            async with Client.open(ep.address[1]) as c:
                for i in range(n):
                    assert (await c.request("GET", f"/{i}")).status == 200

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(client, 20)
        assert most == {"a": 1, "b": 1}  # never over max_concurrency, fast path or not
        stats = ep.statistics()
        assert stats.requests_total == 86 and stats.status.s2xx == 86
        assert stats.queued_total > 0  # the others waited their turn, in the general path
        assert slots_free(ep)


async def test_an_error_in_a_callback_ends_that_connection_only(monkeypatch: MonkeyPatch) -> None:
    # A bug in the fast path runs inside the poller's callback: it must end that session
    # (logged by the endpoint), give back its slot, and leave the poller serving others.
    async with replicas(("a", ok)) as rs, proxy(rs) as ep:
        async with Client.open(ep.address[1]) as c:
            await warm(ep, c)

            def broken(*args: object) -> bytes:
                raise RuntimeError("a bug")

            monkeypatch.setattr(fastpath, "whole_response", broken)
            with trio.fail_after(WAIT):
                await c.send_request("GET", "/boom")
                assert await c.stream.receive_some(65536) == b""  # closed, nothing sent
            monkeypatch.undo()
        assert slots_free(ep)
        async with Client.open(ep.address[1]) as c:
            await warm(ep, c)  # the endpoint and its poller go on
