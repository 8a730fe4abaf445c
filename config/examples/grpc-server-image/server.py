"""A small gRPC server for berth's tests (localhost/berth-grpc-server:1): grpcio's own
server with the standard health service and two methods of `berth.test.Echo`, served
with generic handlers and raw-bytes messages (no generated code):

- `Unary`: answers b"<NAME>:" + the request; a request starting with b"missing" is
  answered NOT_FOUND, one starting with b"fail" INTERNAL (status codes relayed).
- `Stream` (server streaming): the request is a count N (ASCII digits); answers N
  messages b"<NAME>:0" ... b"<NAME>:N-1".

Environment: PORT (50051), NAME (the host name). SIGTERM stops it with a 5 s grace.
Importable too (`serve(port, name)`), so the unit tests run the same code in-process.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "berth.test.Echo"
# How each `Stream` call ended, "finished" or "cancelled" (the client or a proxy reset it),
# for the tests that run this module in-process.
STREAMS_ENDED: list[tuple[str, str]] = []
STREAM_ENDED = threading.Event()


def _identity(data: bytes) -> bytes:
    return data


def handlers(name: str) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request.startswith(b"missing"):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())
        if request.startswith(b"fail"):
            context.abort(grpc.StatusCode.INTERNAL, "failed on purpose")
        return name.encode() + b":" + request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        finished = False

        def ended() -> None:
            STREAMS_ENDED.append((name, "finished" if finished else "cancelled"))
            STREAM_ENDED.set()

        context.add_callback(ended)
        for i in range(int(request or b"0")):
            if not context.is_active():
                return
            yield b"%s:%d" % (name.encode(), i)
        finished = True

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=_identity, response_serializer=_identity
            ),
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )


def serve(port: int, name: str, host: str = "[::]") -> tuple[grpc.Server, int]:
    """A started server and its port (0: a free one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handlers(name),))
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    checker.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def main() -> None:
    port = int(os.environ.get("PORT", "50051"))
    name = os.environ.get("NAME") or socket.gethostname()
    server, bound = serve(port, name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"grpc server {name} on :{bound}", flush=True)
    stop.wait()
    server.stop(5).wait()


if __name__ == "__main__":
    main()
