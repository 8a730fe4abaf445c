"""End to end, the replicas' own metrics (`[[metrics.scrape]]`, issue 12 point 5): berthd as a
process scrapes a gauge from each echo replica on a second port (busybox httpd's CGI
/cgi-bin/gauge, which reads its value from a file the test writes through a bind mount),
re-exports it on `[metrics] listen` with deployment and replica labels, shows it in `berth
metrics`, and its `metric = "prometheus"` autoscaler scales up on it and back down; no
request is sent to the endpoint (the queue is one the endpoint does not see). Every wait is
bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.berthd_process import Berthd, wait_until

pytestmark = pytest.mark.podman

SPEC = """
name = "queue"
image = "{image}"
port = 8080
# A second httpd on 9100 serves the metrics page; the endpoint forwards only 8080.
command = ["sh", "-c", "httpd -p 9100 -h /www && exec httpd -f -p 8080 -h /www"]
stop_timeout = "1s"
[env]
GAUGE_FILE = "/gauge/value"
[replicas]
min = 1
max = 3
[[metrics.scrape]]
port = 9100
path = "/cgi-bin/gauge"
period = "1s"
[[autoscale.metrics]]
metric = "prometheus"
query = "echo_queue_waiting"
target = 4
[autoscale]
scale_down_delay = "4s"
[health.readiness]
path = "/health"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
[[mounts]]
type = "bind"
source = "{gauge_dir}"
target = "/gauge"
"""


@pytest.fixture
def berthd(
    berthd_factory: Callable[..., Berthd], tmp_path: Path, free_port: Callable[[], int]
) -> Berthd:
    metrics_port = free_port()
    config = tmp_path / "berthd.toml"
    config.write_text(
        f'[mounts]\nallowed_roots = ["{tmp_path / "gauge"}"]\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    )
    daemon = berthd_factory(extra_args=["--config", str(config)])
    daemon.metrics_port = metrics_port  # type: ignore[attr-defined]
    return daemon


def scraped(berthd: Berthd) -> dict[str, float | None]:
    """Replica id -> the echo_queue_waiting its latest scrape gave (None: unknown)."""
    answer = berthd.json("metrics", "queue")["scraped"]
    return {r["replica_id"]: r["values"]["echo_queue_waiting"] for r in answer["replicas"]}


def test_a_scraped_gauge_scales_up_and_down_and_is_re_exported(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    gauge = tmp_path / "gauge" / "value"
    gauge.parent.mkdir()
    gauge.write_text("0\n")
    spec = tmp_path / "queue.toml"
    spec.write_text(SPEC.format(image=echo_image, port=free_port(), gauge_dir=gauge.parent))
    berthd.start()
    berthd.berth("apply", str(spec), "--wait")
    [first] = [r["id"] for r in berthd.json("get", "queue")["replicas"]]
    wait_until("the first scrape", lambda: scraped(berthd) == {first: 0.0}, timeout=15)

    # Re-exported on [metrics] listen: its own labels kept (replica -> exported_replica).
    url = f"http://127.0.0.1:{berthd.metrics_port}/metrics"  # type: ignore[attr-defined]
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url).text)}
    [sample] = families["echo_queue_waiting"].samples
    assert sample.value == 0.0 and sample.labels["deployment"] == "queue"
    assert sample.labels["replica"] == first and sample.labels["exported_replica"]
    assert families["echo_queue_waiting"].type == "gauge"
    up = [s for s in families["berth_scrape_up"].samples if s.labels["deployment"] == "queue"]
    assert [(s.labels["port"], s.labels["path"], s.value) for s in up] == [
        ("9100", "/cgi-bin/gauge", 1.0)
    ]

    # 10 waiting on the one replica, target 4 per replica: 3 replicas, at once.
    started = time.monotonic()
    gauge.write_text("10\n")
    wait_until("the scale-up", lambda: berthd.json("get", "queue")["desired"] == 3, timeout=20)
    print(f"\nscaled up {time.monotonic() - started:.1f}s after the gauge moved")
    wait_until("3 ready replicas", lambda: berthd.json("get", "queue")["ready"] == 3, timeout=30)
    events = berthd.berth("events", "queue").stdout
    assert "echo_queue_waiting avg 10 > target 4: 1 -> 3" in events, events
    wait_until("every replica scraped", lambda: len(scraped(berthd)) == 3, timeout=15)
    text = berthd.berth("metrics", "queue").stdout
    assert "echo_queue_waiting" in text and ":9100/cgi-bin/gauge ok" in text, text
    assert "echo_queue_waiting: 10 per replica" in text, text
    samples = [
        f
        for f in text_string_to_metric_families(httpx.get(url).text)
        if f.name == "echo_queue_waiting"
    ][0].samples
    assert sorted(s.labels["replica"] for s in samples) == sorted(scraped(berthd))
    # Stays at 3 while the queue holds (no flapping); the window is 4 s.
    time.sleep(5)
    assert berthd.json("get", "queue")["desired"] == 3

    # The queue drains: back to min once the stabilisation window has passed.
    gauge.write_text("0\n")
    wait_until("the scale-down", lambda: berthd.json("get", "queue")["desired"] == 1, timeout=30)
    wait_until(
        "one replica left", lambda: len(berthd.json("get", "queue")["replicas"]) == 1, timeout=30
    )
    assert "no traffic for 4s: 3 -> 1" in berthd.berth("events", "queue").stdout
