"""End to end, berthd as a service would run it: berthd.toml with `[metrics] listen` and
`[mounts] allowed_roots`, systemd's NOTIFY_SOCKET (a fake one, here: systemd is not PID 1 on
these machines), a bind mount served by a replica, a refused mount naming its field.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.berthd_process import Berthd, get_text, wait_until

pytestmark = pytest.mark.podman

SPEC = """
name = "svc"
image = "{image}"
port = 8080
stop_timeout = "1s"
[replicas]
count = 1
[health.readiness]
path = "/health"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
[[mounts]]
type = "bind"
source = "{source}"
target = "/www/shared"
"""


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def berthd(
    berthd_factory: Callable[..., Berthd], tmp_path: Path, free_port: Callable[[], int]
) -> Berthd:
    metrics_port = free_port()
    config = tmp_path / "berthd.toml"
    config.write_text(
        f'[mounts]\nallowed_roots = ["{tmp_path / "shared"}"]\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    )
    daemon = berthd_factory(
        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
        extra_args=["--config", str(config)],
    )
    daemon.metrics_port = metrics_port  # type: ignore[attr-defined]
    return daemon


def messages(sock: socket.socket, until: str, timeout: float = 20.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(until in m for m in seen):
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return seen


def test_berthd_as_a_service(
    berthd: Berthd,
    notify_socket: socket.socket,
    tmp_path: Path,
    echo_image: str,
    free_port: Callable[[], int],
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("from the host\n")
    berthd.start()
    assert any("READY=1" in m for m in messages(notify_socket, "READY=1"))

    port = free_port()
    spec = tmp_path / "svc.toml"
    spec.write_text(SPEC.format(image=echo_image, port=port, source=shared))
    berthd.berth("apply", str(spec), "--wait")
    assert get_text(f"http://127.0.0.1:{port}/shared/hello.txt") == (200, "from the host\n")

    # a mount outside the allowed roots is refused, naming the field; nothing is written
    spec.write_text(SPEC.format(image=echo_image, port=port, source="/etc"))
    refused = berthd.berth("apply", str(spec), check=False)
    assert refused.returncode != 0 and "mounts[0].source" in refused.stderr
    assert len(berthd.json("history", "svc")) == 1

    for _ in range(5):
        get_text(f"http://127.0.0.1:{port}/cgi-bin/echo")
    scrape = httpx.get(f"http://127.0.0.1:{berthd.metrics_port}/metrics", timeout=5)  # type: ignore[attr-defined]
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    assert scrape.status_code == 200
    requests = [
        sample
        for sample in families["berth_endpoint_requests"].samples
        if sample.labels.get("deployment") == "svc"
    ]
    assert sum(sample.value for sample in requests) >= 5
    ready = families["berth_deployment_ready_replicas"].samples
    assert [(x.labels["deployment"], x.value) for x in ready] == [("svc", 1.0)]

    stopping = berthd.proc
    assert stopping is not None
    stopping.send_signal(signal.SIGTERM)
    assert any("STOPPING=1" in m for m in messages(notify_socket, "STOPPING=1"))
    wait_until("berthd to exit", lambda: stopping.poll() is not None, timeout=60)
    assert stopping.returncode == 0
    berthd.proc = None
