"""Shared test fixtures, for unit, integration and end-to-end tests alike.

The Podman fixtures live here (not in tests/integration/) so tests/e2e can use them too:
- `podman_url` (session): a private `podman system service` on a socket in a temp dir,
  started once per test session and ended by its PID afterwards. Containers it ran outlive
  it, so `test_labels` removes them with the podman CLI (which needs no service).
- `echo_image` (session): localhost/berth-echo:1, built by scripts/build-echo-image.sh.
- `test_labels`: a unique `io.berth.instance` label; every container carrying it is removed
  when the test ends, whatever happened.
- `free_port`: a callable returning a free TCP port on 127.0.0.1.
- `slow_podman(directory)`: a `podman` wrapper that waits 0.5 s before it starts a service.

A missing `podman` binary FAILS the tests that need it, never skips them: CI must run them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.runtime.interface import LABEL_INSTANCE

REPO_ROOT = Path(__file__).resolve().parent.parent
ECHO_IMAGE = "localhost/berth-echo:1"
SERVICE_START_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def podman_binary() -> str:
    path = shutil.which("podman")
    if path is None:
        pytest.fail(
            "the `podman` binary is not on PATH: run scripts/setup-host.sh (as root) first; "
            "integration and end-to-end tests need a real Podman",
            pytrace=False,
        )
    return path


def socket_answers(path: Path) -> bool:
    """True when a Podman API service answers GET /_ping on this Unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200" in reply[:16]


SLOW_PODMAN = """#!/bin/sh
# A Podman service slow to come back (a loaded box): time enough to kill one before it answers.
if [ "$1 $2" = "system service" ]; then sleep {delay}; fi
exec {podman} "$@"
"""


def slow_podman(directory: Path, delay: float = 0.5) -> Path:
    """Write `directory/podman`: the real podman, but `podman system service` starts only
    after `delay` seconds (the wrapper's PID becomes the service's: it execs podman)."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "podman"
    wrapper.write_text(SLOW_PODMAN.format(delay=delay, podman=podman_binary()))
    wrapper.chmod(0o755)
    return wrapper


def remove_labelled_containers(podman: str, labels: dict[str, str]) -> None:
    filters = [f"--filter=label={key}={value}" for key, value in labels.items()]
    ids = subprocess.run(
        [podman, "ps", "-aq", *filters], capture_output=True, text=True, check=True
    ).stdout.split()
    if ids:
        subprocess.run(
            [podman, "rm", "-f", "-t", "0", *ids], capture_output=True, text=True, check=False
        )


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """`free_port()` -> a free port on 127.0.0.1 (call it once per port you need)."""
    return free_port


@pytest.fixture(scope="session")
def podman_url() -> Iterator[str]:
    """A private Podman service for this session; yields "unix:///tmp/.../podman.sock"."""
    podman = podman_binary()
    sock_dir = Path(tempfile.mkdtemp(prefix="berth-test-podman-"))
    sock_path = sock_dir / "podman.sock"
    log_path = sock_dir / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{sock_path}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVICE_START_TIMEOUT
        while not socket_answers(sock_path):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"`podman system service` did not answer on {sock_path} within "
                    f"{SERVICE_START_TIMEOUT:.0f}s (exit status {proc.poll()}):\n"
                    + log_path.read_text(errors="replace")[-2000:],
                    pytrace=False,
                )
            time.sleep(0.05)
        yield f"unix://{sock_path}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def echo_image() -> str:
    """The example image (busybox httpd on 8080), built locally once if missing."""
    podman_binary()
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-echo-image.sh"), ECHO_IMAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/build-echo-image.sh failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return ECHO_IMAGE


@pytest.fixture
def test_labels() -> Iterator[dict[str, str]]:
    """{"io.berth.instance": "test-<uuid>"}; containers with it are removed after the test."""
    podman = podman_binary()
    labels = {LABEL_INSTANCE: f"test-{uuid.uuid4().hex[:12]}"}
    try:
        yield labels
    finally:
        remove_labelled_containers(podman, labels)
