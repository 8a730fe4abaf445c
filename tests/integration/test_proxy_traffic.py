"""Admission (max_concurrency, the queue, 429), least_request, passive health and
`retry = "all"` through a real Endpoint on 127.0.0.1, against small real backends.

Every wait is bounded (`trio.fail_after`), every loop has a fixed count, and the tests
synchronise on what the backends and the endpoint report, never on sleeps alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import httpx
import pytest
import trio

from config.spec import Outlier
from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.upstreams import Upstream

WAIT = 20.0
NO_OUTLIERS = Outlier(consecutive_5xx=0, failures=0)


@dataclass
class Replica:
    """A model server: /work?s=SECONDS takes that long, /hold waits for `release`,
    /infer hangs while `hang_infer`, /fail answers 500, /kill reads the request and closes."""

    name: str
    port: int = 0
    active: int = 0
    most: int = 0  # the most requests in flight at once
    seen: list[str] = field(default_factory=list)  # X-Seq of each request, in arrival order
    release: trio.Event = field(default_factory=trio.Event)
    hang_infer: bool = False
    kills: bool = False  # every request is read, then the connection closed unanswered
    arrived_at: list[tuple[int, float]] = field(default_factory=list)  # (X-Seq, time)

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.name, "127.0.0.1", self.port)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await self._serve(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request: h11.Request | None = None
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(ev, h11.Request):
                    request = ev
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    return
            assert request is not None
            seq = dict(request.headers).get(b"x-seq", b"").decode()
            self.seen.append(seq)
            if seq:
                self.arrived_at.append((int(seq), trio.current_time()))
            path = request.target.decode()
            self.active += 1
            self.most = max(self.most, self.active)
            try:
                status = 200
                if path == "/kill" or self.kills:
                    return  # read, then closed unanswered: a replica killed mid-request
                if path.startswith("/work"):
                    await trio.sleep(float(path.partition("s=")[2] or 0))
                elif path == "/hold":
                    with trio.fail_after(WAIT):
                        await self.release.wait()
                elif path == "/infer" and self.hang_infer:
                    await trio.sleep(WAIT)
                    return
                elif path == "/fail":
                    status = 500
            finally:
                self.active -= 1
            body = json.dumps({"replica": self.name, "seq": seq}).encode()
            for e in (
                h11.Response(status_code=status, headers=[("Content-Length", str(len(body)))]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                await stream.send_all(conn.send(e) or b"")
            conn.start_next_cycle()


@asynccontextmanager
async def replicas(*names: str) -> AsyncIterator[list[Replica]]:
    async with trio.open_nursery() as nursery:
        out = []
        for name in names:
            r = Replica(name)
            listeners = await nursery.start(partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
            r.port = listeners[0].socket.getsockname()[1]
            out.append(r)
        yield out
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def endpoint(
    upstreams: list[Upstream], timeouts: EndpointTimeouts | None = None, **admission: object
) -> AsyncIterator[Endpoint]:
    ep = Endpoint("test", bind="127.0.0.1", port=0, timeouts=timeouts or EndpointTimeouts())
    admission.setdefault("outlier", NO_OUTLIERS)
    ep.set_admission(**admission)  # type: ignore[arg-type]
    ep.set_upstreams(upstreams)
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        yield ep
        ep.begin_shutdown(0.5)


def client(ep: Endpoint) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{ep.address[1]}", limits=limits, timeout=WAIT
    )


async def until(condition: object, what: str) -> None:
    """Wait (bounded) for `condition()` to hold, looking every few milliseconds."""
    with trio.fail_after(WAIT):
        # The state of several parts (replicas, the endpoint, the clients): no one event.
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await trio.sleep(0.005)


# --- admission ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_burst_is_admitted_queued_in_order_and_the_rest_refused_429() -> None:
    """50 concurrent 2 s requests, 2 replicas, max_concurrency 2, max_queue 10: 4 in
    flight at the replicas at any time, 10 queued and served in arrival order, 36 x 429."""
    async with replicas("a", "b") as (a, b):
        async with endpoint(
            [a.upstream, b.upstream], max_concurrency=2, max_queue=10, queue_timeout=30.0
        ) as ep:
            results: dict[int, httpx.Response] = {}
            start = trio.current_time()
            async with client(ep) as http, trio.open_nursery() as nursery:

                async def one(i: int) -> None:
                    results[i] = await http.get("/work?s=2", headers={"X-Seq": str(i)})

                for i in range(50):
                    nursery.start_soon(one, i)
                    # The next request leaves only once this one is at a replica, queued or
                    # answered: the arrival order is the order sent.
                    await until(
                        lambda i=i: a.active + b.active + ep.waiting() + len(results) >= i + 1,
                        f"request {i} admitted",
                    )
                await until(lambda: ep.waiting() == 10 and len(results) == 36, "36 refused")
                assert a.active + b.active == 4
            statuses = [results[i].status_code for i in range(50)]
            assert statuses[:14] == [200] * 14
            assert statuses[14:] == [429] * 36
            refused = results[49]
            assert refused.headers["Retry-After"] == "1"
            assert (a.most, b.most) == (2, 2)  # never more than max_concurrency per replica
            # The queued ones were served in the order they arrived: 0-3 at once, then
            # each 2 s wave the next four (4-7, 8-11, 12-13), a slot going to the first
            # waiting; within a replica, in order.
            waves = {seq: round((t - start) / 2.0) for seq, t in a.arrived_at + b.arrived_at}
            assert waves == {i: 0 if i < 4 else (i - 4) // 4 + 1 for i in range(14)}
            for r in (a, b):
                seqs = [seq for seq, _ in r.arrived_at]
                assert seqs == sorted(seqs)
            stats = ep.statistics()
            assert stats.status.s4xx == 36
            assert stats.queue_time.count == 10  # those that queued (the refused never did)


async def test_a_queued_request_is_served_when_a_slot_frees_and_times_out_with_429() -> None:
    async with replicas("a") as (a,):
        async with endpoint([a.upstream], max_concurrency=1, queue_timeout=0.5) as ep:
            async with client(ep) as http, trio.open_nursery() as nursery:
                first: list[httpx.Response] = []

                async def hold() -> None:
                    first.append(await http.get("/hold"))

                nursery.start_soon(hold)
                await until(lambda: a.active == 1, "the slot taken")
                start = trio.current_time()
                late = await http.get("/work", headers={"Accept": "application/json"})
                waited = trio.current_time() - start
                assert late.status_code == 429 and 0.45 < waited < 3.0
                assert late.headers["Retry-After"] == "1"
                error = late.json()["error"]
                assert "no replica had room in time" in error["message"]
                assert (error["type"], error["code"]) == ("rate_limit_error", 429)
                assert late.reason_phrase == "Too Many Requests"
                # Another queues, and is served as soon as the slot frees.
                second: list[httpx.Response] = []

                async def queued() -> None:
                    second.append(await http.get("/work"))

                nursery.start_soon(queued)
                await until(lambda: ep.waiting() == 1, "queued")
                a.release.set()
                await until(lambda: len(first) == 1 and len(second) == 1, "both served")
                assert second[0].status_code == 200
            assert ep.statistics().queue_time.count == 2


async def test_a_client_that_hangs_up_leaves_the_queue_at_once() -> None:
    async with replicas("a") as (a,):
        async with endpoint([a.upstream], max_concurrency=1, max_queue=1) as ep:
            async with client(ep) as http, trio.open_nursery() as nursery:
                nursery.start_soon(http.get, "/hold")
                await until(lambda: a.active == 1, "the slot taken")
                with trio.socket.socket() as sock:
                    await sock.connect(("127.0.0.1", ep.address[1]))
                    await sock.send(b"GET /work HTTP/1.1\r\nHost: x\r\n\r\n")
                    await until(lambda: ep.waiting() == 1, "queued")
                await until(lambda: ep.waiting() == 0, "gone from the queue")
                # Its place is free: another request may queue (max_queue = 1).
                nursery.start_soon(http.get, "/work")
                await until(lambda: ep.waiting() == 1, "queued again")
                a.release.set()
                await until(lambda: ep.waiting() == 0 and a.active == 0, "served")
            assert len(a.seen) == 2  # the one that hung up never reached the replica


async def test_no_replica_is_503_not_429() -> None:
    async with endpoint([], max_concurrency=1) as ep, client(ep) as http:
        reply = await http.get("/")
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"


async def test_a_raised_cap_serves_the_queue_at_once() -> None:
    async with replicas("a") as (a,):
        async with endpoint([a.upstream], max_concurrency=1) as ep:
            async with client(ep) as http, trio.open_nursery() as nursery:
                nursery.start_soon(http.get, "/hold")
                await until(lambda: a.active == 1, "the slot taken")
                nursery.start_soon(http.get, "/hold")
                await until(lambda: ep.waiting() == 1, "queued")
                ep.set_admission(max_concurrency=2, outlier=NO_OUTLIERS)
                await until(lambda: a.active == 2 and ep.waiting() == 0, "admitted")
                a.release.set()


# --- balancing ---------------------------------------------------------------------------


async def test_least_request_keeps_a_busy_replica_out_of_the_next_picks() -> None:
    async with replicas("a", "b") as (a, b):
        async with endpoint([a.upstream, b.upstream], least_request=True) as ep:
            async with client(ep) as http, trio.open_nursery() as nursery:
                nursery.start_soon(http.get, "/hold")  # a long generation on one replica
                await until(lambda: a.active + b.active == 1, "busy")
                busy, idle = (a, b) if a.active else (b, a)
                for _ in range(10):
                    reply = await http.get("/work")
                    assert reply.json()["replica"] == idle.name
                busy.release.set()
            assert len(busy.seen) == 1 and len(idle.seen) == 10


async def test_round_robin_stays_the_default_and_skips_a_full_replica() -> None:
    async with replicas("a", "b") as (a, b):
        async with endpoint([a.upstream, b.upstream], max_concurrency=1) as ep:
            async with client(ep) as http, trio.open_nursery() as nursery:
                got = [(await http.get("/work")).json()["replica"] for _ in range(4)]
                assert got == ["a", "b", "a", "b"]
                nursery.start_soon(http.get, "/hold")
                await until(lambda: a.active + b.active == 1, "busy")
                idle = "b" if a.active else "a"
                for _ in range(4):
                    assert (await http.get("/work")).json()["replica"] == idle
                a.release.set()
                b.release.set()


# --- passive health ------------------------------------------------------------------------


@pytest.mark.parametrize("by_probe", [False, True], ids=["by-time", "by-probe"])
async def test_a_replica_whose_inference_hangs_is_ejected_and_returns(by_probe: bool) -> None:
    """/health would answer; /infer hangs: 3 read timeouts in the window eject it, the
    others serve, and it returns after its ejection time (and, with probes, its probe)."""
    rules = Outlier(consecutive_5xx=0, failures=3, window=30.0, ejection_time=1.0)
    ejected: list[tuple[str, str, float]] = []
    returned: list[str] = []
    suspects: list[str] = []
    async with replicas("a", "b") as (a, b):
        a.hang_infer = True
        ep = Endpoint(
            "test",
            bind="127.0.0.1",
            port=0,
            timeouts=EndpointTimeouts(read_idle=0.3),
            on_suspect=suspects.append,
        )
        ep.set_admission(outlier=rules)
        ep.watch_outliers(
            lambda u, why, s: ejected.append((u.replica_id, why, s)),
            lambda u: returned.append(u.replica_id),
            by_probe=by_probe,
        )
        ep.set_upstreams([a.upstream, b.upstream])
        async with trio.open_nursery() as nursery:
            await nursery.start(ep.run)
            async with client(ep) as http:
                statuses = [(await http.get("/infer")).status_code for _ in range(6)]
                assert statuses == [504, 200, 504, 200, 504, 200]
                assert ejected == [("a", ejected[0][1], 1.0)]
                assert "3 failed requests" in ejected[0][1]
                assert ep.ejected() == {"a"}
                for _ in range(4):
                    assert (await http.get("/infer")).json()["replica"] == "b"
                a.hang_infer = False
                with trio.fail_after(WAIT):
                    while not returned:
                        await trio.sleep(0.05)
                        await http.get("/work")  # a pick looks at the ejection's time
                        if by_probe and "a" in suspects:
                            ep.probe_passed("a")  # the daemon's prober, asked for a probe
                assert ep.ejected() == frozenset()
                got = {(await http.get("/infer")).json()["replica"] for _ in range(4)}
                assert got == {"a", "b"}
            ep.begin_shutdown(0.5)


async def test_consecutive_5xx_eject_but_never_past_the_percentage_or_the_last() -> None:
    rules = Outlier(consecutive_5xx=2, failures=0, max_ejected_percent=50.0)
    async with replicas("a", "b") as (a, b):
        async with endpoint([a.upstream, b.upstream], outlier=rules) as ep, client(ep) as http:
            for _ in range(4):  # both answer 500: one is ejected (50 %), never both
                await http.get("/fail")
            assert len(ep.ejected()) == 1
            for _ in range(4):
                await http.get("/fail")
            assert len(ep.ejected()) == 1
        async with endpoint([a.upstream], outlier=rules) as ep, client(ep) as http:
            for _ in range(4):
                await http.get("/fail")
            assert ep.ejected() == frozenset()  # the last replica standing stays


# --- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_all", [False, True], ids=["idempotent", "all"])
async def test_a_post_whose_replica_dies_is_replayed_once_only_with_retry_all(
    retry_all: bool,
) -> None:
    async with replicas("a", "b") as (a, b):
        async with endpoint([a.upstream, b.upstream], retry_all=retry_all) as ep:
            async with client(ep) as http:
                # Round robin sends the first to "a", which dies reading it.
                reply = await http.post("/kill", content=b"prompt", headers={"X-Seq": "1"})
                if not retry_all:
                    assert reply.status_code == 502
                    assert (a.seen, b.seen) == (["1"], [])
                    return
                # Replayed on "b", which dies too: not replayed again (at most once).
                assert reply.status_code == 502
                assert (a.seen, b.seen) == (["1"], ["1"])


async def test_retry_all_replays_on_a_healthy_replica_and_the_budget_bounds_it() -> None:
    async with replicas("a") as (a,):
        kill = Replica("k", kills=True)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, kill.handle, 0, host="127.0.0.1")
            )
            kill.port = listeners[0].socket.getsockname()[1]
            async with endpoint([kill.upstream, a.upstream], retry_all=True) as ep:
                async with client(ep) as http:
                    failed = 0
                    for _ in range(40):  # "k" dies on every request it reads
                        reply = await http.post("/work", content=b"x")
                        failed += reply.status_code == 502
                    # Those sent to "k" first were replayed on "a" until the budget (10 at
                    # once, then a fifth of a replay per request) ran out: not all of them.
                    replayed = len(kill.seen) - failed  # each request "k" read: replayed, or 502
                    assert len(a.seen) + failed == 40  # every other request was answered by "a"
                    assert 10 <= replayed <= 10 + 0.2 * 40 and failed >= 1
            nursery.cancel_scope.cancel()
