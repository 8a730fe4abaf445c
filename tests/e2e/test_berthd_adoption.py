"""End to end, a berthd killed with -9 and started again: what it serves at once and what it says.

- Replicas that were ready at the kill serve at once from their stored verdict: the
  deployment's readiness probe takes 5 s to answer (`/cgi-bin/sleep?5`, every 30 s, after a
  quick startup probe), yet the restarted berthd's endpoint answers 200 well before a probe
  could have passed; a replica that was not ready at the kill (its `/cgi-bin/health`
  answered 503; healthy again while berthd was down) is served only once its first probe
  after the restart has passed.
- Restarts are visible: `started` (first start, after an unclean stop with how long berthd
  was down, after a clean stop), `adopted`, `podman-service` (started, taken over, ended);
  `berth status` shows the uptime and the last unclean stop; the embedded Podman service the
  killed berthd left is taken over and ended when the berthd that took it over stops.
- A planned restart (`berthd --supervise`, SIGUSR2, a request in flight) leaves the embedded
  Podman service to the new berthd, which ends it when it stops.

berthd and the Podman services are processes these tests started; each is ended by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.runtime.service import SYSTEM_URL
from daemon.runtime.service_record import RECORD_NAME
from tests.conftest import podman_binary, socket_answers
from tests.e2e.berthd_process import Berthd, wait_until

pytestmark = pytest.mark.podman

SLOW_PROBE = """
name = "adopt-ready"
image = "{image}"
port = 8080
stop_timeout = "1s"
[replicas]
count = 2
[health.startup]
path = "/health"
period = "0.5s"
failure_threshold = 60
[health.readiness]
path = "/cgi-bin/sleep?5"
period = "30s"
timeout = "8s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""

TOGGLED = """
name = "adopt-unready"
image = "{image}"
port = 8080
stop_timeout = "1s"
[replicas]
count = 1
[health.readiness]
path = "/cgi-bin/health"
period = "1s"
failure_threshold = 1
[endpoint]
port = {port}
bind = "127.0.0.1"
"""

UNHEALTHY = "/tmp/unhealthy-$(cut -d' ' -f22 /proc/1/stat)"


def events(daemon: Berthd, kind: str, deployment: str | None = None) -> list[dict[str, Any]]:
    lines = daemon.berth("events", "--json").stdout.splitlines()
    found = [json.loads(line) for line in lines if line.strip()]
    return [
        e
        for e in found
        if e["kind"] == kind and (deployment is None or e["deployment"] == deployment)
    ]


def in_container(container_id: str, script: str) -> None:
    subprocess.run(
        [podman_binary(), "exec", container_id, "sh", "-c", script],
        check=True,
        capture_output=True,
        timeout=30,
    )


def replicas(daemon: Berthd, name: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = daemon.json("get", name)["replicas"]
    return result


def timed_get(url: str, timeout: float) -> tuple[int, float]:
    """The first answer from `url` (refused connections retried: the endpoint may not be
    bound yet), and how long it took from the first try."""
    began = time.monotonic()
    while True:
        try:
            response = httpx.get(url, timeout=timeout)
        except httpx.ConnectError:
            if time.monotonic() - began > timeout:
                raise
            time.sleep(0.05)
            continue
        return response.status_code, time.monotonic() - began


def test_replicas_ready_at_a_kill_serve_at_once_and_the_others_wait_for_a_probe(
    berthd: Berthd, echo_image: str, free_port: Callable[[], int]
) -> None:
    ready_port, unready_port = free_port(), free_port()
    ready_spec = berthd.state_dir.parent / "ready.toml"
    ready_spec.write_text(SLOW_PROBE.format(image=echo_image, port=ready_port))
    unready_spec = berthd.state_dir.parent / "unready.toml"
    unready_spec.write_text(TOGGLED.format(image=echo_image, port=unready_port))
    berthd.start()
    berthd.berth("apply", str(ready_spec), "--wait")
    berthd.berth("apply", str(unready_spec), "--wait")
    ready_before = {r["container_id"] for r in replicas(berthd, "adopt-ready")}
    (sick,) = replicas(berthd, "adopt-unready")
    in_container(sick["container_id"], f"touch {UNHEALTHY}")
    wait_until(
        "the toggled replica to leave the rotation",
        lambda: not replicas(berthd, "adopt-unready")[0]["ready"],
        timeout=10,
    )

    assert berthd.signal(signal.SIGKILL) == -signal.SIGKILL
    in_container(sick["container_id"], f"rm -f {UNHEALTHY}")  # healthy while berthd is away
    berthd.start()  # returns once `berth status` answers
    code, took = timed_get(f"http://127.0.0.1:{ready_port}/cgi-bin/echo", timeout=20)
    # Its probe takes 5 s, and the next is due 30 s later: only the stored verdict can
    # have put the replicas in rotation this soon.
    assert code == 200 and took < 2.0, f"{code} after {took:.2f}s:\n{berthd.log()}"
    assert {r["container_id"] for r in replicas(berthd, "adopt-ready")} == ready_before
    (adopted,) = events(berthd, "adopted", "adopt-ready")
    assert "adopted 2 running replicas" in adopted["message"]
    assert "2 back in rotation at once" in adopted["message"]
    assert "no container started" in adopted["message"]
    last_start = events(berthd, "started")[-1]["id"]
    ready_after = [e for e in events(berthd, "ready", "adopt-ready") if e["id"] > last_start]
    assert ready_after == []  # served with no readiness transition: it never left

    # The replica that was not ready at the kill: out of rotation until a probe passes.
    (unready_adopted,) = events(berthd, "adopted", "adopt-unready")
    assert "back in rotation" not in unready_adopted["message"]
    assert "1 in rotation once a probe passes" in unready_adopted["message"]
    wait_until(
        "the toggled replica's probe after the restart",
        lambda: any(e["id"] > last_start for e in events(berthd, "ready", "adopt-unready")),
        timeout=15,
    )
    assert httpx.get(f"http://127.0.0.1:{unready_port}/cgi-bin/echo", timeout=10).status_code == 200
    assert [r["container_id"] for r in replicas(berthd, "adopt-unready")] == [sick["container_id"]]


# -- restarts are visible, and the embedded Podman service is taken over ---------------------


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie has ended (a service whose berthd was killed is
    reparented, here to a PID 1 that may not reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def embedded(berthd_factory: Callable[..., Berthd]) -> Iterator[tuple[Berthd, list[int]]]:
    """berthd on its own embedded Podman service; the services it started are listed as the
    test learns their pids, and any left at the end is killed by PID."""
    if socket_answers(Path(SYSTEM_URL.removeprefix("unix://"))):
        pytest.skip(f"a system Podman answers at {SYSTEM_URL}: berthd would not start its own")
    daemon = berthd_factory()
    daemon.podman_url = None
    services: list[int] = []
    try:
        yield daemon, services
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.signal(signal.SIGTERM)
        for pid in services:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def service_pid(message: str) -> int:
    found = re.search(r"\(pid (\d+)\)", message)
    assert found, message
    return int(found.group(1))


def test_a_kill_and_a_clean_stop_are_said_and_the_left_podman_service_is_ended(
    embedded: tuple[Berthd, list[int]], echo_image: str, free_port: Callable[[], int]
) -> None:
    berthd, services = embedded
    port = free_port()
    spec = berthd.state_dir.parent / "echo.toml"
    spec.write_text(TOGGLED.format(image=echo_image, port=port).replace("adopt-unready", "vis"))
    berthd.start()
    (first,) = events(berthd, "started")
    assert "first start on this state dir" in first["message"]
    (service_started,) = events(berthd, "podman-service")
    assert "started on unix://" in service_started["message"]
    service = service_pid(service_started["message"])
    services.append(service)
    record = json.loads((berthd.state_dir / RECORD_NAME).read_text())
    assert record["pid"] == service
    berthd.berth("apply", str(spec), "--wait")
    (replica,) = replicas(berthd, "vis")
    killed_pid = berthd.proc.pid if berthd.proc else 0

    time.sleep(1.0)  # down for a while, so that the figure says something
    assert berthd.signal(signal.SIGKILL) == -signal.SIGKILL
    assert pid_alive(service)  # the service outlives the berthd that started it
    time.sleep(2.0)
    berthd.start()
    started = events(berthd, "started")[-1]["message"]
    assert "after an unclean stop" in started, started
    down = float(re.search(r"down (\d+\.\d)s at most", started).group(1))  # type: ignore[union-attr]
    assert 2.0 <= down <= 2.0 + 30.0 + 15.0  # the last heartbeat was at most 30 s before
    taken = events(berthd, "podman-service")[-1]["message"]
    assert f"(pid {service}) left by an earlier berthd reused" in taken and "taken over" in taken
    (adopted,) = events(berthd, "adopted", "vis")
    assert f"adopted 1 running replica ({replica['id']})" in adopted["message"]
    assert [r["container_id"] for r in replicas(berthd, "vis")] == [replica["container_id"]]

    status = berthd.json("status")
    assert status["uptime_s"] < 60 and status["pid"] == berthd.proc.pid  # type: ignore[union-attr]
    assert status["last_unclean_stop"]["pid"] == killed_pid
    assert 2.0 <= status["last_unclean_stop"]["down_s"] <= 47.0
    text = berthd.berth("status").stdout
    assert re.search(r"uptime:\s+\d+\.\ds \(since ", text), text
    assert re.search(rf"last unclean stop:\s+last alive .* \(pid {killed_pid}\), down ", text)

    # A clean stop ends the service it took over (and only that one: by its recorded pid).
    assert berthd.signal(signal.SIGTERM) == 0
    wait_until("the taken-over Podman service to end", lambda: not pid_alive(service), 10)
    assert not (berthd.state_dir / RECORD_NAME).exists()
    berthd.start()
    said = [e["message"] for e in events(berthd, "podman-service")]
    assert f"podman service (pid {service}) ended" in said
    started_clean = events(berthd, "started")[-1]["message"]
    assert "after a clean stop" in started_clean, started_clean
    services.append(service_pid(said[-1]))  # the new embedded one, ended by the fixture
    assert berthd.json("status")["last_unclean_stop"]["pid"] == killed_pid  # still the last
    # The replica lived through it all.
    assert [r["container_id"] for r in replicas(berthd, "vis")] == [replica["container_id"]]


def test_a_planned_restart_leaves_the_embedded_podman_service_to_the_new_berthd(
    berthd_factory: Callable[..., Berthd], echo_image: str, free_port: Callable[[], int]
) -> None:
    """`berthd --supervise`, SIGUSR2 while a request is in flight: the new berthd starts while
    the old one drains and takes the service over; the old one leaves it running; the
    service keeps its pid and is ended when the supervisor is stopped."""
    if socket_answers(Path(SYSTEM_URL.removeprefix("unix://"))):
        pytest.skip(f"a system Podman answers at {SYSTEM_URL}: berthd would not start its own")
    berthd = berthd_factory(extra_args=["--supervise"])
    berthd.podman_url = None
    port = free_port()
    spec = berthd.state_dir.parent / "echo.toml"
    spec.write_text(TOGGLED.format(image=echo_image, port=port).replace("adopt-unready", "plan"))
    service = 0
    try:
        berthd.start()
        berthd.berth("apply", str(spec), "--wait")
        service = service_pid(events(berthd, "podman-service")[0]["message"])
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(httpx.get, f"http://127.0.0.1:{port}/cgi-bin/sleep?8", timeout=30)
            time.sleep(1.0)  # in flight
            berthd.send(signal.SIGUSR2)
            assert slow.result().status_code == 200  # drained by the old berthd
        wait_until(
            "the old berthd to leave the service to the new one",
            lambda: any(
                "left running: berthd" in e["message"] for e in events(berthd, "podman-service")
            ),
            timeout=20,
        )
        said = [e["message"] for e in events(berthd, "podman-service")]
        assert f"podman service (pid {service}) left by an earlier berthd reused" in said[-2]
        assert said[-1].startswith(f"podman service (pid {service}) left running: berthd")
        assert "still runs" in events(berthd, "started")[-1]["message"]
        assert pid_alive(service)
        assert httpx.get(f"http://127.0.0.1:{port}/cgi-bin/echo", timeout=10).status_code == 200
        assert berthd.signal(signal.SIGTERM) == 0
        wait_until("the Podman service to end", lambda: not pid_alive(service), 10)
    finally:
        if berthd.proc is not None and berthd.proc.poll() is None:
            berthd.signal(signal.SIGTERM)
        if service and pid_alive(service):
            os.kill(service, signal.SIGKILL)
