"""End to end, traffic rules on real replicas (issue 14): berthd as a process, two replicas of
the real model-server image, traffic on loopback.

- Passive health: one replica's inference hangs while its health and readiness answer (the
  server's fault knob, hit on that replica's own published port). Its requests time out
  (`read_timeout`), 2 failures within the window eject it (an `ejected` event saying why),
  the other serves every request, and once its inference works again and its ejection time
  is up, its next passing readiness probe brings it back (a `returned` event) and it serves.
- Admission applies in place: with `max_concurrency = 1` and 3 s inferences, two replicas
  take two requests and the third waits in the queue (`berth metrics` shows it) and is
  answered; past `queue_timeout` a fourth is 429 with Retry-After.
Every wait is bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.berthd_process import Berthd, wait_until
from tests.model_server import (
    INFER_BODY,
    model_server_image_fixture,  # noqa: F401 (the model_server_image fixture)
    requests_answered,
)

pytestmark = pytest.mark.podman

JSON = {"Accept": "application/json"}
SPEC = """
name = "{name}"
image = "{image}"
port = 8000
stop_timeout = "5s"
[env]
LOAD_SECONDS = "0"
FAULTS = "1"
INFER_SECONDS = "{infer}"
[replicas]
count = 2
[health.readiness]
path = "/v2/models/tiny/ready"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
read_timeout = "1s"
{endpoint}
[endpoint.outlier]
failures = 2
window = "1m"
ejection_time = "5s"
"""


def infer(port: int, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/v2/models/tiny/infer",
        json=INFER_BODY,
        headers=JSON,
        timeout=timeout,
    )


def ready_replicas(daemon: Berthd, name: str) -> list[dict[str, Any]]:
    replicas: list[dict[str, Any]] = daemon.json("get", name)["replicas"]
    return [r for r in replicas if r["ready"]]


def replica_metrics(replica: dict[str, Any]) -> str:
    """A replica's own /metrics, on its published port (not through the endpoint)."""
    return httpx.get(f"http://127.0.0.1:{replica['host_port']}/metrics", timeout=5).text


def events(daemon: Berthd, name: str) -> str:
    return daemon.berth("events", name).stdout


def test_a_half_alive_replica_is_ejected_and_returns_after_its_probe(
    berthd: Berthd, model_server_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    spec = berthd.state_dir.parent / "half.toml"
    spec.write_text(
        SPEC.format(name="half", image=model_server_image, port=port, infer=0, endpoint="")
    )
    berthd.start()
    berthd.berth("apply", str(spec))
    wait_until("2 replicas ready", lambda: len(ready_replicas(berthd, "half")) == 2, 120)
    sick, well = ready_replicas(berthd, "half")
    hang = httpx.put(
        f"http://127.0.0.1:{sick['host_port']}/faults/infer", json={"hang": True}, timeout=5
    )
    assert hang.status_code == 200, hang.text

    # Round robin: the sick one's requests time out (504) until 2 of them eject it.
    statuses = [infer(port).status_code for _ in range(6)]
    assert statuses.count(504) == 2, statuses
    wait_until("the ejected event", lambda: "ejected" in events(berthd, "half"), 10)
    said = events(berthd, "half")
    assert f"replica {sick['id']} out of rotation for 5s: 2 failed requests" in said, said
    # Its probes still pass (health answers), yet it gets no request while ejected.
    assert len(ready_replicas(berthd, "half")) == 2
    metrics = berthd.berth("metrics", "half").stdout
    assert f"ejected: {sick['id']}" in metrics, metrics
    answered_before = requests_answered(replica_metrics(sick))

    # Healed: after its ejection time, its next passing probe brings it back.
    httpx.put(f"http://127.0.0.1:{sick['host_port']}/faults/infer", json={"hang": False}, timeout=5)
    deadline = time.monotonic() + 30
    while "returned" not in events(berthd, "half"):  # each request looks at the time
        assert time.monotonic() < deadline, events(berthd, "half")
        assert infer(port).status_code == 200
        time.sleep(0.2)
    assert f"replica {sick['id']} back in rotation" in events(berthd, "half")
    assert [infer(port).status_code for _ in range(4)] == [200] * 4
    answered = requests_answered(replica_metrics(sick))
    assert answered[("infer", "200")] > answered_before.get(("infer", "200"), 0), answered
    assert well["id"] != sick["id"]


def test_max_concurrency_queues_then_refuses_429_in_place(
    berthd: Berthd, model_server_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    spec = berthd.state_dir.parent / "busy.toml"
    admission = 'max_concurrency = 1\nmax_queue = 1\nqueue_timeout = "10s"\nread_timeout = "30s"'
    text = SPEC.format(name="busy", image=model_server_image, port=port, infer=3, endpoint="")
    spec.write_text(text.replace('read_timeout = "1s"\n', ""))
    berthd.start()
    berthd.berth("apply", str(spec))
    wait_until("2 replicas ready", lambda: len(ready_replicas(berthd, "busy")) == 2, 120)
    # The same deployment with admission: applied in place, no replica replaced.
    before = {r["id"] for r in ready_replicas(berthd, "busy")}
    spec.write_text(
        SPEC.format(name="busy", image=model_server_image, port=port, infer=3, endpoint="")
        .replace('read_timeout = "1s"\n', "")
        .replace("[endpoint.outlier]", admission + "\n[endpoint.outlier]")
    )
    berthd.berth("apply", str(spec))
    got: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        got[i] = infer(port, timeout=30)

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.3)  # in order: two in flight, then one queued
    wait_until(
        "one queued", lambda: "queue: 1 waiting" in berthd.berth("metrics", "busy").stdout, 5
    )
    refused = infer(port)  # the queue is full
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    for t in threads:
        t.join(timeout=30)
    assert [got[i].status_code for i in range(3)] == [200, 200, 200]
    assert {r["id"] for r in ready_replicas(berthd, "busy")} == before
