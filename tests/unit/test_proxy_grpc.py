"""gRPC through an endpoint (issue 14, point 5) with real grpcio on both sides, in-process:
two gRPC servers (tests/grpc_server.py: the health service, a unary and a server-streaming
method) behind an endpoint with `upstream_protocol = "h2c"`, and a grpcio client channel
to the endpoint. Unary and server streaming work, status codes are relayed (NOT_FOUND
arrives as NOT_FOUND, with its details), each call is balanced on its own over the two
servers although the client holds one HTTP/2 connection, and the gRPC status counts say
what happened.

grpcio's blocking calls run in threads; every call has a deadline (tests/grpc_server.py).
"""

from __future__ import annotations

import grpc
import httpx
import trio

from proxy.h2.attempt import grpc_counts, set_upstream_protocol
from proxy.h2.upstream import pool_for
from proxy.upstreams import Upstream
from tests.grpc_server import grpc_servers, health, server_module, stream, unary
from tests.h2_client import endpoint

WAIT = 20.0


async def test_grpc_unary_streaming_status_and_per_call_balancing() -> None:
    with grpc_servers("g1", "g2") as ports:
        upstreams = [Upstream(f"g{i + 1}", "127.0.0.1", p) for i, p in enumerate(ports)]
        async with endpoint(upstreams) as ep:
            b = ep._balancer
            set_upstream_protocol(b, "h2c")
            target = f"127.0.0.1:{ep.address[1]}"

            def calls() -> dict[str, object]:
                with grpc.insecure_channel(target) as channel:
                    out: dict[str, object] = {}
                    out["unary"] = [unary(channel, b"hello %d" % i) for i in range(4)]
                    out["stream"] = stream(channel, 5)
                    out["health"] = health(channel)
                    try:
                        unary(channel, b"missing-thing")
                    except grpc.RpcError as exc:
                        out["missing"] = (exc.code(), exc.details())
                    try:
                        unary(channel, b"fail now")
                    except grpc.RpcError as exc:
                        out["fail"] = exc.code()
                    return out

            with trio.fail_after(WAIT):
                out = await trio.to_thread.run_sync(calls)
    answers = out["unary"]
    assert isinstance(answers, list)
    assert sorted(answers) == [
        b"g1:hello 0",
        b"g1:hello 2",
        b"g2:hello 1",
        b"g2:hello 3",
    ] or sorted(a.split(b":")[0] for a in answers) == [b"g1", b"g1", b"g2", b"g2"], answers
    streamed = out["stream"]
    assert isinstance(streamed, list) and len(streamed) == 5
    origin = streamed[0].split(b":")[0]
    assert streamed == [origin + b":%d" % i for i in range(5)]
    assert out["health"] == "SERVING"
    assert out["missing"] == (grpc.StatusCode.NOT_FOUND, "no such thing: missing-thing")
    assert out["fail"] == grpc.StatusCode.INTERNAL
    counts = grpc_counts(b).by_name()
    assert counts == {"OK": 6, "NOT_FOUND": 1, "INTERNAL": 1}, counts
    stats = ep.statistics()
    assert stats.requests_total == 8
    assert {r.replica_id: r.requests_total for r in stats.replicas} == {"g1": 4, "g2": 4}


def grpc_frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


async def test_an_http_1_1_client_reaches_an_h2c_replica() -> None:
    """gRPC's wire format posted over HTTP/1.1 (httpx): translated both ways; the response
    trailers are dropped, but their grpc-status is counted."""
    with grpc_servers("g1") as [port]:
        async with endpoint([Upstream("g1", "127.0.0.1", port)]) as ep:
            b = ep._balancer
            set_upstream_protocol(b, "h2c")
            headers = {"content-type": "application/grpc", "te": "trailers"}
            url = f"http://127.0.0.1:{ep.address[1]}/berth.test.Echo/Unary"
            with trio.fail_after(WAIT):
                async with httpx.AsyncClient() as client:
                    first = await client.post(url, content=grpc_frame(b"over 1.1"), headers=headers)
                    second = await client.post(url, content=grpc_frame(b"again"), headers=headers)
    assert first.status_code == 200 and first.http_version == "HTTP/1.1"
    assert first.headers["content-type"] == "application/grpc"
    assert first.content == grpc_frame(b"g1:over 1.1")
    assert second.content == grpc_frame(b"g1:again")
    assert grpc_counts(b).by_name() == {"OK": 2}


async def test_a_cancelled_call_is_cancelled_at_the_replica() -> None:
    """The client cancels a server-streaming call (RST_STREAM to the endpoint): the replica's
    stream is reset too, and its handler sees the call cancelled, not finished."""
    module = server_module()
    module.STREAMS_ENDED.clear()
    module.STREAM_ENDED.clear()
    with grpc_servers("g1") as [port]:
        async with endpoint([Upstream("g1", "127.0.0.1", port)]) as ep:
            set_upstream_protocol(ep._balancer, "h2c")
            target = f"127.0.0.1:{ep.address[1]}"

            def cancel_after_three() -> list[bytes]:
                with grpc.insecure_channel(target) as channel:
                    call = channel.unary_stream(
                        "/berth.test.Echo/Stream",
                        request_serializer=bytes,
                        response_deserializer=bytes,
                    )(b"100000000", timeout=WAIT)
                    got = [next(call) for _ in range(3)]
                    call.cancel()
                    assert module.STREAM_ENDED.wait(WAIT)
                    return got

            with trio.fail_after(WAIT * 2):
                got = await trio.to_thread.run_sync(cancel_after_three)
            stats = ep.statistics()
    assert got == [b"g1:0", b"g1:1", b"g1:2"]
    assert module.STREAMS_ENDED == [("g1", "cancelled")]
    assert stats.in_flight == 0


async def test_many_calls_at_once_share_the_replicas_connections() -> None:
    """50 unary calls in flight at once on one client channel: all answered, spread over
    both servers, on a few h2c connections per replica (streams multiplexed)."""
    with grpc_servers("g1", "g2") as ports:
        upstreams = [Upstream(f"g{i + 1}", "127.0.0.1", p) for i, p in enumerate(ports)]
        async with endpoint(upstreams) as ep:
            b = ep._balancer
            set_upstream_protocol(b, "h2c")
            target = f"127.0.0.1:{ep.address[1]}"

            def calls() -> list[bytes]:
                with grpc.insecure_channel(target) as channel:
                    call = channel.unary_unary(
                        "/berth.test.Echo/Unary",
                        request_serializer=bytes,
                        response_deserializer=bytes,
                    )
                    pending = [call.future(b"n%d" % i, timeout=WAIT) for i in range(50)]
                    return [f.result() for f in pending]

            with trio.fail_after(WAIT):
                answers = await trio.to_thread.run_sync(calls)
            connections = {up.replica_id: len(c) for up, c in pool_for(b).conns.items()}
    assert [a.split(b":", 1)[1] for a in answers] == [b"n%d" % i for i in range(50)]
    by_server = [a.split(b":")[0] for a in answers]
    assert by_server.count(b"g1") == 25 and by_server.count(b"g2") == 25
    assert set(connections) == {"g1", "g2"} and all(1 <= n <= 2 for n in connections.values())
