"""Spec changes to a running endpoint, with real sockets on 127.0.0.1 and a real upstream.

The daemon's `EndpointManager` serves one deployment's endpoint through a small h11 server
while bounded client loops send requests; the spec then changes under them:
- a timeout: applies in place (the same listener), 0 refused and 0 failed requests, and the
  new value takes effect at once, also on a connection kept alive from before, while a
  request already waiting keeps its own (the read timeout; the client idle timeout from a
  kept-alive connection's next wait);
- the port: the new port listens before the old one closes (a client trying the old port
  and then the new one never finds neither), the old port is closed once `ensure` returns,
  and the old endpoint's in-flight request finishes afterwards;
- the bind address on the same port, overlapping the old one (127.0.0.1 ->
  ::ffff:127.0.0.1, which the kernel will not listen on twice): closes, then binds.
Every wait is bounded (`trio.fail_after`); every loop has a fixed count and a stop event.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import h11
import pytest
import trio

from config.spec import Endpoint as EndpointSpec
from daemon.reconcile.endpoints import EndpointManager
from proxy.upstreams import Upstream
from tests.conftest import free_port

WAIT = 10.0  # the bound on any single step
SLOW_S = 0.6  # how long the upstream takes to answer /slow
OLD_READ = 3.0  # read_timeout before the change: /slow passes
NEW_READ = 0.2  # after: /slow is a 504
LOAD_MAX = 3000  # requests (or connects) at most per loop


# --- a plain upstream ---------------------------------------------------------------------


@dataclass
class Upstream1:
    """An HTTP/1.1 replica: /fast at once, /slow after SLOW_S, /held when released."""

    port: int = 0
    arrived: trio.Event = field(default_factory=trio.Event)  # a /held request came in
    release: trio.Event = field(default_factory=trio.Event)

    @property
    def upstream(self) -> Upstream:
        return Upstream("r1", "127.0.0.1", self.port)

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(ev, h11.Request):
                        path = ev.target
                        continue
                    if not isinstance(ev, h11.EndOfMessage):
                        return  # ConnectionClosed
                    if path == b"/slow":
                        await trio.sleep(SLOW_S)  # the slowness under test, not a sync
                    elif path == b"/held":
                        self.arrived.set()
                        with trio.fail_after(WAIT):
                            await self.release.wait()
                    body = b"ok " + path
                    head = h11.Response(
                        status_code=200, headers=[("Content-Length", str(len(body)))]
                    )
                    await stream.send_all(conn.send(head) + conn.send(h11.Data(data=body)))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
                return  # the proxy cut the connection (a 504 does)


@asynccontextmanager
async def upstream() -> AsyncIterator[Upstream1]:
    up = Upstream1()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, up.handle, 0, host="127.0.0.1"))
        up.port = listeners[0].socket.getsockname()[1]
        yield up
        nursery.cancel_scope.cancel()


# --- clients ------------------------------------------------------------------------------


async def connect(port: int) -> trio.SocketStream:
    """A connection to 127.0.0.1:`port`; raises the connect's own OSError (refused: its
    errno is ECONNREFUSED), which trio.open_tcp_stream would wrap."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with trio.fail_after(WAIT):
            await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


class Client:
    """One keep-alive client connection (h11)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    @asynccontextmanager
    async def open(cls, port: int) -> AsyncIterator[Client]:
        stream = await connect(port)
        async with stream:
            yield cls(stream)

    async def get(self, path: str) -> int:
        """The status of GET `path`; reads the whole response."""
        with trio.fail_after(WAIT):
            req = h11.Request(method="GET", target=path, headers=[("Host", "t")])
            await self.stream.send_all(self.conn.send(req) + self.conn.send(h11.EndOfMessage()))
            status = 0
            while True:
                ev = self.conn.next_event()
                if ev is h11.NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(ev, h11.Response):
                    status = ev.status_code
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif not isinstance(ev, h11.Data):
                    raise AssertionError(f"unexpected {ev!r}")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return status


async def get(port: int, path: str) -> int:
    async with Client.open(port) as c:
        return await c.get(path)


def refused(exc: OSError) -> bool:
    return exc.errno == errno.ECONNREFUSED


class Milestones:
    """Events set when a count reaches a value: how a test waits on a loop's progress."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], int], int, trio.Event]] = []

    def check(self) -> None:
        for count, n, event in self._waiting:
            if count() >= n:
                event.set()

    async def reach(self, count: Callable[[], int], n: int) -> None:
        event = trio.Event()
        self._waiting.append((count, n, event))
        self.check()
        with trio.fail_after(WAIT):
            await event.wait()


@dataclass
class Load:
    """Clients sending GET /fast in a loop (keep-alive runs of a few, then a new connection)
    until `stop`; every outcome counted."""

    port: int
    ok: int = 0
    refused: int = 0
    failed: list[str] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)
    milestones: Milestones = field(default_factory=Milestones)

    async def run(self, workers: int = 3, per_connection: int = 5) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(self._worker, per_connection)

    async def _worker(self, per_connection: int) -> None:
        while not self.stop.is_set() and self.ok + self.refused + len(self.failed) < LOAD_MAX:
            try:
                stream = await connect(self.port)
            except OSError as exc:
                if refused(exc):
                    self.refused += 1
                else:
                    self.failed.append(f"connect: {exc!r}")
                continue
            async with stream:
                client = Client(stream)
                for _ in range(per_connection):
                    try:
                        status = await client.get("/fast")
                    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                        self.failed.append(repr(exc))
                        break
                    if status != 200:
                        self.failed.append(f"status {status}")
                        break
                    self._count()
                    if self.stop.is_set():
                        break

    def _count(self) -> None:
        self.ok += 1
        self.milestones.check()

    async def more(self, n: int) -> None:
        """Until `n` more requests have succeeded."""
        await self.milestones.reach(lambda: self.ok, self.ok + n)


@dataclass
class Held:
    """A GET /held: the upstream keeps it until released."""

    status: int | None = None
    done: trio.Event = field(default_factory=trio.Event)

    async def run(self, port: int) -> None:
        self.status = await get(port, "/held")
        self.done.set()

    async def result(self) -> int | None:
        with trio.fail_after(WAIT):
            await self.done.wait()
        return self.status


async def started_manager(nursery: trio.Nursery) -> EndpointManager:
    manager = EndpointManager(drain_timeout=WAIT)
    await nursery.start(manager.run)
    return manager


# --- the tests ----------------------------------------------------------------------------


async def test_a_read_timeout_change_applies_in_place_under_load() -> None:
    port = free_port()
    spec = EndpointSpec(port=port, bind="127.0.0.1", read_timeout=OLD_READ)
    async with upstream() as up, trio.open_nursery() as nursery:
        manager = await started_manager(nursery)
        with trio.fail_after(WAIT):
            ep = await manager.ensure("echo", spec)
        ep.set_upstreams([up.upstream])
        async with Client.open(port) as kept:  # a keep-alive connection from before
            assert await kept.get("/slow") == 200  # SLOW_S < OLD_READ
            held = Held()
            nursery.start_soon(held.run, port)
            with trio.fail_after(WAIT):
                await up.arrived.wait()  # waiting for its response, under OLD_READ

            load = Load(port)
            nursery.start_soon(load.run)
            await load.more(30)
            with trio.fail_after(WAIT):
                same = await manager.ensure("echo", replace(spec, read_timeout=NEW_READ))
            assert same is ep and ep.timeouts.read_idle == NEW_READ  # no rebind
            await load.more(30)

            # New requests take the new timeout: on the connection kept from before...
            started = trio.current_time()
            assert await kept.get("/slow") == 504
            assert trio.current_time() - started < SLOW_S  # the proxy's timeout, not the answer
            # ... and on a new one.
            assert await get(port, "/slow") == 504
            # Over 2 x NEW_READ has passed since the change: the request that was waiting
            # kept its OLD_READ, and is answered now.
            assert not held.done.is_set()
            up.release.set()
            assert await held.result() == 200

            await load.more(10)
            load.stop.set()
        assert load.refused == 0 and load.failed == [], (load.refused, load.failed[:5])
        assert load.ok >= 70
        nursery.cancel_scope.cancel()


async def test_a_client_idle_change_applies_to_a_kept_alive_connection_from_its_next_wait() -> None:
    port = free_port()
    spec = EndpointSpec(port=port, bind="127.0.0.1", client_idle_timeout=60.0)
    async with upstream() as up, trio.open_nursery() as nursery:
        manager = await started_manager(nursery)
        with trio.fail_after(WAIT):
            ep = await manager.ensure("echo", spec)
        ep.set_upstreams([up.upstream])
        async with Client.open(port) as kept:
            assert await kept.get("/fast") == 200
            # Its wait for the next request began under 60 s, and keeps it: still open.
            with trio.fail_after(WAIT):
                assert await manager.ensure("echo", replace(spec, client_idle_timeout=0.3)) is ep
            assert await kept.get("/fast") == 200
            # The wait after that takes the new 0.3 s: the endpoint closes the connection.
            started = trio.current_time()
            with trio.fail_after(WAIT):
                assert await kept.stream.receive_some(1) == b""
            assert trio.current_time() - started >= 0.3 - ep._balancer.poller.tick
        nursery.cancel_scope.cancel()


@dataclass
class Mover:
    """A client that connects to the old port, and to the new one when the old refuses;
    `neither` counts the attempts that found nobody listening on either. A connection the
    old listener had queued, not yet accepted, when it closed is reset by the kernel:
    `reset_on_old` (the old listener was there: not a gap)."""

    old: int
    new: int
    on_old: int = 0
    on_new: int = 0
    reset_on_old: int = 0
    neither: int = 0
    stop: trio.Event = field(default_factory=trio.Event)
    milestones: Milestones = field(default_factory=Milestones)

    async def run(self) -> None:
        for _ in range(LOAD_MAX):
            if self.stop.is_set():
                return
            old = await self._connects(self.old)
            if old == "ok":
                self.on_old += 1
            elif old == "reset":
                self.reset_on_old += 1
            elif await self._connects(self.new) == "ok":
                self.on_new += 1
            else:
                self.neither += 1
            self.milestones.check()

    @staticmethod
    async def _connects(port: int) -> str:
        try:
            stream = await connect(port)
        except ConnectionResetError:
            return "reset"
        except OSError as exc:
            if refused(exc):
                return "refused"
            raise
        await stream.aclose()
        return "ok"


async def test_a_port_change_binds_the_new_port_before_closing_the_old() -> None:
    old, new = free_port(), free_port()
    spec = EndpointSpec(port=old, bind="127.0.0.1")
    async with upstream() as up, trio.open_nursery() as nursery:
        manager = await started_manager(nursery)
        with trio.fail_after(WAIT):
            ep = await manager.ensure("echo", spec)
        ep.set_upstreams([up.upstream])
        held = Held()
        nursery.start_soon(held.run, old)
        with trio.fail_after(WAIT):
            await up.arrived.wait()

        mover = Mover(old, new)
        nursery.start_soon(mover.run)
        await mover.milestones.reach(lambda: mover.on_old, 20)
        with trio.fail_after(WAIT):
            moved = await manager.ensure("echo", replace(spec, port=new))
        moved.set_upstreams([up.upstream])  # as the worker does, right after
        assert moved is not ep and manager.get("echo") is moved

        # Reported: the old port is closed, the new one serves, nothing refused there.
        with pytest.raises(OSError) as closed:
            await get(old, "/fast")
        assert refused(closed.value)
        for _ in range(20):
            assert await get(new, "/fast") == 200
        await mover.milestones.reach(lambda: mover.on_new, 20)
        mover.stop.set()
        assert mover.neither == 0, mover
        assert mover.reset_on_old <= 3, mover  # only those queued at the instant it closed

        # The old endpoint drains in the background: its request finishes after the move,
        # counted where a replica's drain looks, and the statistics go on across the move.
        assert not held.done.is_set() and moved.in_flight("r1") == 1
        before = moved.statistics().requests_total
        assert before >= 20  # the 20 on the new port, and none lost
        up.release.set()
        assert await held.result() == 200
        assert moved.in_flight("r1") == 0 and moved.statistics().requests_total == before + 1
        nursery.cancel_scope.cancel()


async def test_a_bind_change_on_the_same_port_that_overlaps_closes_then_binds() -> None:
    port = free_port()
    spec = EndpointSpec(port=port, bind="127.0.0.1")
    async with upstream() as up, trio.open_nursery() as nursery:
        manager = await started_manager(nursery)
        with trio.fail_after(WAIT):
            ep = await manager.ensure("echo", spec)
        ep.set_upstreams([up.upstream])
        held = Held()
        nursery.start_soon(held.run, port)
        with trio.fail_after(WAIT):
            await up.arrived.wait()
            # 127.0.0.1 as IPv4-mapped IPv6: the same address to the kernel, so it cannot
            # listen there while the old listener does.
            moved = await manager.ensure("echo", replace(spec, bind="::ffff:127.0.0.1"))
        moved.set_upstreams([up.upstream])
        assert moved is not ep and moved.address[0] == "::ffff:127.0.0.1"
        for _ in range(5):
            assert await get(port, "/fast") == 200
        up.release.set()
        assert await held.result() == 200
        nursery.cancel_scope.cancel()


async def test_a_move_to_a_port_in_use_fails_and_leaves_the_old_endpoint_serving() -> None:
    old = free_port()
    spec = EndpointSpec(port=old, bind="127.0.0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        async with upstream() as up, trio.open_nursery() as nursery:
            manager = await started_manager(nursery)
            with trio.fail_after(WAIT):
                ep = await manager.ensure("echo", spec)
                ep.set_upstreams([up.upstream])
                with pytest.raises(OSError, match="cannot listen"):
                    await manager.ensure("echo", replace(spec, port=busy))
            assert manager.get("echo") is ep
            assert await get(old, "/fast") == 200
            nursery.cancel_scope.cancel()
