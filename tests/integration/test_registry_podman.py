"""Private registries against a real one: Debian's docker-registry (distribution 2.8) on loopback.

The registry runs from this module's fixture, by PID, with its own config, htpasswd file and
storage in a temp dir, TLS off, on 127.0.0.1:<free port> (tests/local_registry.py). Podman is
told that this one address (and no other) may be spoken to without TLS the way an admin
would: an `insecure = true` entry in a registries.conf, read by a `podman system service` of
the module's own.

A missing `docker-registry` or `htpasswd` FAILS these tests (scripts/setup-host.sh installs the
`docker-registry` and `apache2-utils` packages): CI must run them.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from config.secret_ref import SecretRef
from config.spec import Registry
from daemon.integrations.registry import registry_auth
from daemon.runtime.interface import ContainerSpec, ImageNotFound, RegistryAuth, RuntimeFailure
from daemon.runtime.podman import PodmanRuntime
from daemon.secrets.references import resolve_secret
from daemon.secrets.store import SecretStore
from tests.conftest import free_port
from tests.local_registry import PASSWORD, USER, podman, push, start_podman, start_registry, stop

pytestmark = pytest.mark.podman


@dataclass(frozen=True)
class LocalRegistry:
    address: str  # "127.0.0.1:PORT"
    image: str  # the echo image, pushed there
    podman_url: str  # a Podman service that may speak plain HTTP to `address` (only)
    tmp: Path


@pytest.fixture(scope="module")
def local_registry(echo_image: str) -> Iterator[LocalRegistry]:
    tmp = Path(tempfile.mkdtemp(prefix="berth-test-registry-"))
    address = f"127.0.0.1:{free_port()}"
    registry = start_registry(tmp, int(address.rsplit(":", 1)[1]))
    service: subprocess.Popen[bytes] | None = None
    image = f"{address}/berth/echo:1"
    try:
        push(echo_image, image)
        service = start_podman(tmp, [address])
        yield LocalRegistry(address, image, f"unix://{tmp / 'podman.sock'}", tmp)
    finally:
        if service is not None:
            stop(service)
        stop(registry)
        podman("rmi", "--force", image)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def reg_runtime(local_registry: LocalRegistry) -> AsyncIterator[PodmanRuntime]:
    """A runtime on the registry-aware Podman, with the pushed image absent locally."""
    podman("rmi", "--force", local_registry.image)
    runtime = PodmanRuntime(local_registry.podman_url)
    try:
        assert not await runtime.image_exists(local_registry.image)
        yield runtime
    finally:
        await runtime.aclose()
        podman("rmi", "--force", local_registry.image)


def write_secret(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


async def test_pull_with_a_password_file_then_run(
    local_registry: LocalRegistry,
    reg_runtime: PodmanRuntime,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    password_file = write_secret(tmp_path / "password", PASSWORD + "\n")
    auth = registry_auth(Registry(username=USER, password_file=password_file), (tmp_path,))
    await reg_runtime.pull(local_registry.image, auth=auth)
    assert await reg_runtime.image_exists(local_registry.image)

    port = free_port()
    container_id = await reg_runtime.create(
        ContainerSpec(
            name=f"berth-test-{uuid.uuid4().hex[:10]}",
            image=local_registry.image,
            labels=test_labels,
            app_port=8080,
            host_port=port,
            command=("httpd", "-f", "-p", "8080", "-h", "/www"),
            stop_timeout=1.0,
        )
    )
    await reg_runtime.start(container_id)
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/health")
                    break
                except httpx.TransportError:
                    await trio.sleep(0.05)
    assert response.status_code == 200


async def test_pull_with_an_auth_file(
    local_registry: LocalRegistry, reg_runtime: PodmanRuntime, tmp_path: Path
) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth_file = write_secret(
        tmp_path / "auth.json",
        json.dumps(
            {"auths": {"other.example": {"auth": "eDp5"}, local_registry.address: {"auth": token}}}
        ),
    )
    auth = registry_auth(Registry(auth_file=auth_file), (tmp_path,))
    await reg_runtime.pull(local_registry.image, auth=auth)
    assert await reg_runtime.image_exists(local_registry.image)


async def test_pull_with_the_password_from_a_secret(
    local_registry: LocalRegistry, reg_runtime: PodmanRuntime, tmp_path: Path
) -> None:
    """`password = { secret = "NAME" }`: the value read from berthd's secret store (as
    replica_ops and `berth pull` read it) authenticates the pull."""
    store = SecretStore(tmp_path / "secrets")
    await store.open()
    await store.create("registry-password", f"{PASSWORD}\n".encode())
    registry = Registry(username=USER, password=SecretRef("registry-password"))
    password = await resolve_secret(store, SecretRef("registry-password"), "registry.password")
    auth = registry_auth(registry, (), password)
    assert auth is not None and PASSWORD not in repr(auth)
    await reg_runtime.pull(local_registry.image, auth=auth)
    assert await reg_runtime.image_exists(local_registry.image)


async def test_a_wrong_password_is_a_clear_error_without_the_password(
    local_registry: LocalRegistry, reg_runtime: PodmanRuntime
) -> None:
    wrong = "Wr0ng-pa55word"
    with pytest.raises(RuntimeFailure) as caught:
        await reg_runtime.pull(
            local_registry.image, auth=RegistryAuth(username=USER, password=wrong)
        )
    message = str(caught.value)
    assert not isinstance(caught.value, ImageNotFound)
    assert message.startswith(f"pull {local_registry.image}: the registry refused the credentials")
    assert "unauthorized" in message
    assert wrong not in message and PASSWORD not in message
    assert not await reg_runtime.image_exists(local_registry.image)


async def test_no_credentials_is_a_clear_error(
    local_registry: LocalRegistry, reg_runtime: PodmanRuntime
) -> None:
    with pytest.raises(RuntimeFailure) as caught:
        await reg_runtime.pull(local_registry.image)
    assert not isinstance(caught.value, ImageNotFound)
    assert "the registry refused an anonymous pull (no [registry])" in str(caught.value)


async def test_an_unknown_image_with_good_credentials(
    local_registry: LocalRegistry, reg_runtime: PodmanRuntime
) -> None:
    missing = f"{local_registry.address}/berth/missing:1"
    with pytest.raises(ImageNotFound) as caught:
        await reg_runtime.pull(missing, auth=RegistryAuth(username=USER, password=PASSWORD))
    assert "manifest unknown" in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_plain_http_needs_the_insecure_entry(
    local_registry: LocalRegistry, runtime: PodmanRuntime
) -> None:
    """The session's Podman has no registries.conf entry for it: TLS is not silently dropped."""
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.pull(
            local_registry.image, auth=RegistryAuth(username=USER, password=PASSWORD)
        )
    assert "insecure = true" in str(caught.value)
    assert PASSWORD not in str(caught.value)
