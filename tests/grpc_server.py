"""The gRPC test server (config/examples/grpc-server-image/server.py), run in-process for
the unit tests or as the Podman image localhost/berth-grpc-server:1 (the session fixture
`grpc_image`: import `grpc_image_fixture` into a test module), and its raw-bytes client
calls (grpcio's blocking API, in a thread).

The same file is the server of the Podman image (scripts/build-grpc-image.sh), so what the
in-process tests check is what the replica runs.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import grpc
import pytest

from tests.conftest import REPO_ROOT, podman_binary

SERVER_PY = REPO_ROOT / "config" / "examples" / "grpc-server-image" / "server.py"
GRPC_SERVER_IMAGE = "localhost/berth-grpc-server:1"
TIMEOUT = 10.0  # every call's deadline
BUILD_TIMEOUT = 1200.0  # fresh: the Debian base (the model-server script's), wheels, build


@functools.cache
def server_module() -> ModuleType:
    """server.py, loaded once per test session."""
    spec = importlib.util.spec_from_file_location("berth_grpc_test_server", SERVER_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def grpc_servers(*names: str) -> Iterator[list[int]]:
    """In-process servers on 127.0.0.1, one per name; their ports."""
    module = server_module()
    servers = [module.serve(0, name, host="127.0.0.1") for name in names]
    try:
        yield [port for _, port in servers]
    finally:
        for server, _ in servers:
            server.stop(None).wait(TIMEOUT)


def _identity(data: bytes) -> bytes:
    return data


def unary(channel: grpc.Channel, request: bytes) -> bytes:
    call = channel.unary_unary(
        "/berth.test.Echo/Unary", request_serializer=_identity, response_deserializer=_identity
    )
    return call(request, timeout=TIMEOUT)  # type: ignore[no-any-return]


def stream(channel: grpc.Channel, count: int) -> list[bytes]:
    call = channel.unary_stream(
        "/berth.test.Echo/Stream", request_serializer=_identity, response_deserializer=_identity
    )
    return list(call(b"%d" % count, timeout=TIMEOUT))


def health(channel: grpc.Channel, service: str = "") -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


@pytest.fixture(scope="session", name="grpc_image")
def grpc_image_fixture() -> str:
    """Built by scripts/build-grpc-image.sh (a no-op when up to date)."""
    podman_binary()
    script = REPO_ROOT / "scripts" / "build-grpc-image.sh"
    result = subprocess.run(
        [str(script), GRPC_SERVER_IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{script.name} failed ({result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return GRPC_SERVER_IMAGE
