"""End to end, autoscaling: a request_duration deployment scales up under load and back down
when idle; berthd as a process, replicas in real Podman, load bounded in count and time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.load import Load

pytestmark = pytest.mark.podman

SPEC = """
name = "scaled"
image = "{image}"
port = 8080
stop_timeout = "1s"
[replicas]
min = 1
max = 3
[[autoscale.metrics]]
metric = "request_duration"
summary = "average"
target = "100ms"
[autoscale]
scale_down_delay = "6s"
[health.readiness]
path = "/health"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


def test_request_duration_scales_up_under_load_and_down_when_idle(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    spec = tmp_path / "scaled.toml"
    spec.write_text(SPEC.format(image=echo_image, port=port))
    berthd.start()
    berthd.berth("apply", str(spec), "--wait")
    assert berthd.json("get", "scaled")["desired"] == 1

    # every request takes ~300 ms: 3x the target
    with Load(f"http://127.0.0.1:{port}/cgi-bin/sleep?0.3", threads=4, max_seconds=40) as load:
        started = time.monotonic()
        wait_until("a scale-up", lambda: berthd.json("get", "scaled")["desired"] > 1, timeout=30)
        wait_until(
            "the new replicas to serve",
            lambda: berthd.json("get", "scaled")["ready"] > 1,
            timeout=30,
        )
        print(f"\nscaled up and serving {time.monotonic() - started:.1f}s after the load began")
    assert load.failures == [], load.failures[:5]
    events = berthd.berth("events", "scaled").stdout
    assert "request_duration avg" in events and "> target 100ms: 1 ->" in events

    # idle: back to min after scale_down_delay
    wait_until("the scale-down", lambda: berthd.json("get", "scaled")["desired"] == 1, timeout=40)
    wait_until(
        "one replica left", lambda: len(berthd.json("get", "scaled")["replicas"]) == 1, timeout=30
    )
    assert "no traffic" in berthd.berth("events", "scaled").stdout


ZERO = """
name = "zero"
image = "{image}"
port = 8080
stop_timeout = "1s"
[replicas]
min = 0
max = 2
[[autoscale.metrics]]
metric = "concurrency"
target = 1
[autoscale]
scale_down_delay = "3s"
[health.readiness]
path = "/health"
period = "250ms"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


def test_min_zero_idles_to_zero_and_serves_the_next_request(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    spec = tmp_path / "zero.toml"
    spec.write_text(ZERO.format(image=echo_image, port=port))
    berthd.start()
    berthd.berth("apply", str(spec))
    wait_until(
        "the deployment to idle at zero replicas",
        lambda: (got := berthd.json("get", "zero"))["replicas"] == [] and got["status"] == "idle",
        timeout=60,
    )
    started = time.monotonic()
    response = httpx.get(f"http://127.0.0.1:{port}/cgi-bin/echo", timeout=60)
    took = time.monotonic() - started
    print(f"\ncold start from zero answered in {took:.2f}s")
    assert response.status_code == 200 and "replica=" in response.text
    assert len(berthd.json("get", "zero")["replicas"]) == 1
    assert "request waiting with 0 replicas: 0 -> 1" in berthd.berth("events", "zero").stdout
    # and back to zero, freeing the replica, once idle again
    wait_until("zero again", lambda: berthd.json("get", "zero")["replicas"] == [], timeout=60)


QUEUED = """
name = "queued"
image = "{image}"
port = 8080
stop_timeout = "1s"
[replicas]
min = 1
max = 3
[[autoscale.metrics]]
metric = "queue"
target = 1
[autoscale]
scale_down_delay = "6s"
[health.readiness]
path = "/health"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
max_concurrency = 1
queue_timeout = "30s"
"""


def test_a_queue_at_the_endpoint_scales_up_before_it_times_out(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    """max_concurrency = 1 and 4 clients of 0.5 s requests: 3 wait at the endpoint per
    replica, over the target of 1, so berth scales up, and none times out meanwhile."""
    port = free_port()
    spec = tmp_path / "queued.toml"
    spec.write_text(QUEUED.format(image=echo_image, port=port))
    berthd.start()
    berthd.berth("apply", str(spec), "--wait")
    with Load(f"http://127.0.0.1:{port}/cgi-bin/sleep?0.5", threads=4, max_seconds=40) as load:
        wait_until("a scale-up", lambda: berthd.json("get", "queued")["desired"] > 1, timeout=30)
        wait_until(
            "the new replicas to serve",
            lambda: berthd.json("get", "queued")["ready"] > 1,
            timeout=30,
        )
        metrics = berthd.berth("metrics", "queued").stdout
    assert load.failures == [], load.failures[:5]  # queued, never refused
    events = berthd.berth("events", "queued").stdout
    assert "queue " in events and "> target 1: 1 ->" in events, events
    assert "queue:" in metrics and "ever" in metrics, metrics
