"""A real registry on loopback for pull tests, a Podman service that may speak to it, and a
throttling TCP proxy in front of it.

- `start_registry(tmp, port)`: Debian's docker-registry (distribution 2.8) on
  127.0.0.1:PORT with an htpasswd file (USER / PASSWORD), TLS off, storage under `tmp`.
- `start_podman(tmp, addresses)`: a `podman system service` whose registries.conf marks
  these addresses (and no other) insecure = true, as an admin would: libpod's service reads
  `CONTAINERS_REGISTRIES_CONF` from its own environment, once, when it starts.
- `ThrottlingProxy`: 127.0.0.1:<free port> -> the registry, every connection's
  registry-to-client bytes drawn from one bucket of `rate` bytes/s (Podman downloads up
  to 6 layers at once: the link is slow, not each connection), counting what it passed;
  `cut()` breaks every connection open now (a link that drops; `cut_at` does it once that
  many bytes have passed), new ones go on.
Every process is started and ended by its PID. A missing binary FAILS the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import free_port, podman_binary, socket_answers

USER = "berth-ci"
PASSWORD = "S3cret pass:w0rd"  # a space and a colon: it must survive every encoding
START_TIMEOUT = 20.0


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"`{binary}` is not installed: the private-registry tests need Debian's `{package}` "
            "package (scripts/setup-host.sh installs docker-registry and apache2-utils)",
            pytrace=False,
        )
    return path


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([podman_binary(), *args], capture_output=True, text=True, check=False)


def start_registry(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    registry = need("docker-registry", "docker-registry")
    htpasswd = need("htpasswd", "apache2-utils")
    users = subprocess.run(
        [htpasswd, "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True
    ).stdout
    (tmp / "htpasswd").write_text(users)
    (tmp / "storage").mkdir()
    # JSON is YAML: no YAML writer needed.
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "auth": {"htpasswd": {"realm": "berth-test", "path": str(tmp / "htpasswd")}},
    }
    (tmp / "config.yml").write_text(json.dumps(config))
    with (tmp / "registry.log").open("wb") as log:
        proc = subprocess.Popen(
            [registry, "serve", str(tmp / "config.yml")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1.0).status_code == 401:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(
                f"docker-registry did not answer on 127.0.0.1:{port} (exit status {proc.poll()}):"
                "\n" + (tmp / "registry.log").read_text(errors="replace")[-2000:],
                pytrace=False,
            )
        time.sleep(0.05)


def start_podman(tmp: Path, addresses: list[str]) -> subprocess.Popen[bytes]:
    conf = tmp / "registries.conf"
    conf.write_text(
        "".join(f'[[registry]]\nlocation = "{a}"\ninsecure = true\n' for a in addresses)
    )
    sock = tmp / "podman.sock"
    with (tmp / "podman.log").open("wb") as log:
        proc = subprocess.Popen(
            [podman_binary(), "system", "service", "--time=0", f"unix://{sock}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)},
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not socket_answers(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(
                "podman system service did not answer:\n"
                + (tmp / "podman.log").read_text(errors="replace")[-2000:],
                pytrace=False,
            )
        time.sleep(0.05)
    return proc


def push(local: str, remote: str) -> None:
    pushed = podman("push", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}", local, remote)
    if pushed.returncode != 0:
        pytest.fail(f"podman push {local} {remote} failed: {pushed.stderr}", pytrace=False)


def build_random_image(context: Path, tag: str, base: str, layer_sizes: list[int]) -> None:
    """`tag`: `base` plus one layer of random bytes per size (incompressible, so what the
    registry serves is what the proxy throttles)."""
    context.mkdir(parents=True, exist_ok=True)
    lines = [f"FROM {base}"]
    for index, size in enumerate(layer_sizes):
        with (context / f"blob{index}").open("wb") as out:
            left = size
            while left:
                chunk = os.urandom(min(left, 1 << 20))
                out.write(chunk)
                left -= len(chunk)
        lines.append(f"COPY blob{index} /data/blob{index}")
    (context / "Containerfile").write_text("\n".join(lines) + "\n")
    built = podman("build", "-q", "-t", tag, str(context))
    if built.returncode != 0:
        pytest.fail(f"podman build {tag} failed: {built.stderr}", pytrace=False)


@dataclass(frozen=True)
class RegistryRig:
    address: str  # the registry, "127.0.0.1:PORT"
    podman_url: str  # a Podman service that may speak plain HTTP to it and to proxy_ports
    proxy_ports: list[int]  # free ports for ThrottlingProxy, marked insecure too
    tmp: Path

    def proxy_address(self, index: int) -> str:
        return f"127.0.0.1:{self.proxy_ports[index]}"


@contextmanager
def registry_rig(proxies: int = 1) -> Iterator[RegistryRig]:
    """A registry and a Podman service for it (and for `proxies` proxy ports), ended after."""
    tmp = Path(tempfile.mkdtemp(prefix="berth-test-registry-"))
    port = free_port()
    proxy_ports = [free_port() for _ in range(proxies)]
    registry = start_registry(tmp, port)
    service = None
    try:
        addresses = [f"127.0.0.1:{p}" for p in (port, *proxy_ports)]
        service = start_podman(tmp, addresses)
        yield RegistryRig(f"127.0.0.1:{port}", f"unix://{tmp / 'podman.sock'}", proxy_ports, tmp)
    finally:
        if service is not None:
            stop(service)
        stop(registry)
        shutil.rmtree(tmp, ignore_errors=True)


def remove_images(*references: str) -> None:
    for reference in references:
        podman("rmi", "--force", reference)


class ThrottlingProxy:
    """See the module docstring. Run `serve` with `nursery.start`."""

    CHUNK = 16 * 1024

    def __init__(self, upstream_port: int, rate: float, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.upstream_port = upstream_port
        self.rate = rate
        self.passed = 0  # registry-to-client bytes
        self.cut_at: int | None = None  # `cut()` once this many bytes have passed
        self._next = 0.0  # when the bucket has room again (trio clock)
        self._open: set[trio.CancelScope] = set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        for scope in list(self._open):
            scope.cancel()

    async def _take(self, size: int) -> None:
        start = max(trio.current_time(), self._next)
        self._next = start + size / self.rate
        await trio.sleep_until(self._next)

    async def _handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._open.add(scope)
            try:
                async with client:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream, False)
                        nursery.start_soon(self._pump, upstream, client, True)
            finally:
                self._open.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, throttled: bool
    ) -> None:
        try:
            while data := await source.receive_some(self.CHUNK):
                if throttled:
                    await self._take(len(data))
                    self.passed += len(data)
                    if self.cut_at is not None and self.passed >= self.cut_at:
                        self.cut_at = None
                        self.cut()
                await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
