"""gRPC through an endpoint to REAL Podman replicas (issue 14, point 5, acceptance): two
containers of localhost/berth-grpc-server:1 (grpcio, the health service, a unary and a
server-streaming method; scripts/build-grpc-image.sh) behind an endpoint with
`upstream_protocol = "h2c"`, and a real grpcio client through it: unary and server
streaming work, NOT_FOUND from the server arrives as NOT_FOUND, calls are balanced per
call over both replicas on the client's one connection, and the gRPC status counts say so.

Every wait is bounded; containers carry `test_labels`, so they are removed whatever happens.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
import pytest
import trio

from daemon.runtime.interface import LABEL_REPLICA, ContainerSpec
from daemon.runtime.podman import PodmanRuntime
from proxy.h2.attempt import grpc_counts, set_upstream_protocol
from proxy.upstreams import Upstream
from tests.grpc_server import grpc_image_fixture, health, stream, unary  # noqa: F401
from tests.h2_client import endpoint

pytestmark = pytest.mark.podman

WAIT = 60.0  # containers start, then every call has its own deadline


def _wait_serving(port: int) -> None:
    """Until the replica's health service says SERVING (each try bounded, 30 s in all)."""
    import time

    end = time.monotonic() + 30.0
    while True:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=2.0)
                if health(channel) == "SERVING":
                    return
        except (grpc.RpcError, grpc.FutureTimeoutError):
            if time.monotonic() > end:
                raise
        time.sleep(0.1)


async def test_grpc_unary_and_server_streaming_through_podman_replicas(
    runtime: PodmanRuntime,
    grpc_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    upstreams: list[Upstream] = []
    with trio.fail_after(WAIT):
        for rid in ("p1", "p2"):
            port = free_port()
            spec = ContainerSpec(
                name=f"berth-test-{uuid.uuid4().hex[:10]}",
                image=grpc_image,
                labels={**test_labels, LABEL_REPLICA: rid},
                app_port=50051,
                host_port=port,
                env={"NAME": rid},
                stop_timeout=1.0,
            )
            cid = await runtime.create(spec)
            await runtime.start(cid)
            upstreams.append(Upstream(rid, "127.0.0.1", port))
        for up in upstreams:
            await trio.to_thread.run_sync(_wait_serving, up.port)

    async with endpoint(upstreams) as ep:
        b = ep._balancer
        set_upstream_protocol(b, "h2c")
        target = f"127.0.0.1:{ep.address[1]}"

        def calls() -> dict[str, object]:
            out: dict[str, object] = {}
            with grpc.insecure_channel(target) as channel:
                out["unary"] = [unary(channel, b"q%d" % i) for i in range(4)]
                out["stream"] = stream(channel, 20)
                out["health"] = health(channel)
                try:
                    unary(channel, b"missing-model")
                except grpc.RpcError as exc:
                    out["missing"] = (exc.code(), exc.details())
            return out

        with trio.fail_after(WAIT):
            out = await trio.to_thread.run_sync(calls)
    answers = out["unary"]
    assert isinstance(answers, list)
    assert sorted(a.split(b":")[0] for a in answers) == [b"p1", b"p1", b"p2", b"p2"], answers
    assert [a.split(b":", 1)[1] for a in answers] == [b"q%d" % i for i in range(4)]
    streamed = out["stream"]
    assert isinstance(streamed, list)
    origin = streamed[0].split(b":")[0]
    assert origin in (b"p1", b"p2") and streamed == [origin + b":%d" % i for i in range(20)]
    assert out["health"] == "SERVING"
    assert out["missing"] == (grpc.StatusCode.NOT_FOUND, "no such thing: missing-model")
    assert grpc_counts(b).by_name() == {"OK": 6, "NOT_FOUND": 1}
