"""End to end, health checks with real Podman: berthd as a process, replicas as containers.

- One of two replicas starts failing its probes under load: it leaves the rotation within
  period x failure_threshold + 1 s, no request fails, liveness restarts it, and it serves
  again.
- A container that exits at start: `crashloop`, growing delays, the reason in `berth events`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import podman_binary
from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.load import Load

pytestmark = pytest.mark.podman

PROBED = """
name = "health"
image = "{image}"
port = 8080
stop_timeout = "1s"
[replicas]
count = 2
[health.readiness]
path = "/cgi-bin/health"
period = "1s"
failure_threshold = 2
[health.liveness]
path = "/cgi-bin/health"
period = "1s"
failure_threshold = 4
[endpoint]
port = {port}
bind = "127.0.0.1"
"""

CRASHING = """
name = "crash"
image = "{image}"
command = ["sh", "-c", "echo starting; exit 3"]
port = 8080
stop_timeout = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


def replicas(daemon: Berthd, name: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = daemon.json("get", name)["replicas"]
    return result


def test_unhealthy_replica_leaves_rotation_is_restarted_and_returns(
    berthd: Berthd, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    spec = berthd.state_dir.parent / "health.toml"
    spec.write_text(PROBED.format(image=echo_image, port=port))
    berthd.start()
    berthd.berth("apply", str(spec), "--wait")
    sick, well = replicas(berthd, "health")
    sick_host = sick["container_id"][:12]  # the echo CGI answers with the container hostname

    with Load(f"http://127.0.0.1:{port}/cgi-bin/echo", threads=3, max_seconds=40) as load:
        load.wait_answers(20, since=0.0)
        subprocess.run(
            [
                podman_binary(),
                "exec",
                sick["container_id"],
                "sh",
                "-c",
                "touch /tmp/unhealthy-$(cut -d' ' -f22 /proc/1/stat)",
            ],
            check=True,
            capture_output=True,
        )
        marked = time.monotonic()
        # out of rotation within period x failure_threshold + 1 s (here 1 s x 2 + 1 s)
        deadline = marked + 1.0 * 2 + 1.0
        wait_until(
            "the sick replica to leave the rotation",
            lambda: any(
                r["id"] == sick["id"] and not r["ready"] for r in replicas(berthd, "health")
            ),
            timeout=10,
        )
        left = time.monotonic()
        assert left <= deadline + 0.5, f"left the rotation {left - marked:.1f}s after failing"
        time.sleep(0.3)
        after = load.replicas_since(time.monotonic())
        load.wait_answers(10, since=time.monotonic())
        recent = load.replicas_since(left + 0.3)
        assert sick_host not in recent, recent

        # liveness restarts it (same replica id), and it comes back into rotation
        wait_until(
            "the sick replica to be restarted and ready",
            lambda: (
                [
                    (r["restarts"], r["ready"])
                    for r in replicas(berthd, "health")
                    if r["id"] == sick["id"]
                ]
                == [(1, True)]
            ),
            timeout=30,
        )
        back = time.monotonic()
        load.wait_answers(30, since=back)
        assert sick_host in load.replicas_since(back)
        assert not after or sick_host not in after
    assert load.failures == [], load.failures[:5]
    (view,) = [r for r in replicas(berthd, "health") if r["id"] == sick["id"]]
    assert view["container_id"] == sick["container_id"]
    assert "liveness probe failed" in (view["last_exit_reason"] or "")
    events = berthd.berth("events", "health").stdout
    assert "unready" in events and "restarted" in events


def test_a_container_that_exits_at_start_crash_loops_with_growing_delays(
    berthd: Berthd, echo_image: str, free_port: Callable[[], int]
) -> None:
    spec = berthd.state_dir.parent / "crash.toml"
    spec.write_text(CRASHING.format(image=echo_image, port=free_port()))
    berthd.start()
    berthd.berth("apply", str(spec))
    wait_until(
        "three restarts",
        lambda: any(r["restarts"] >= 3 for r in replicas(berthd, "crash")),
        timeout=40,
    )
    (replica,) = replicas(berthd, "crash")
    assert replica["last_exit_reason"] == "exited with code 3"
    died = [line for line in berthd.berth("events", "crash").stdout.splitlines() if "died" in line]
    delays = [float(line.rsplit("restarting in ", 1)[1].rstrip("s")) for line in died]
    assert len(delays) >= 3
    assert 1.0 <= delays[0] <= 2.0
    assert all(b > a * 1.5 for a, b in zip(delays, delays[1:], strict=False)), delays
    wait_until(
        "the crashloop state",
        lambda: replicas(berthd, "crash")[0]["state"] == "crashloop",
        timeout=30,
    )
    assert "starting" in berthd.berth("logs", "crash").stdout
