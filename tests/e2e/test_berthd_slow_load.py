"""End to end, a slow model load (issue 12, point 3's acceptance) with the real model-server
image: berthd as a process, the replica a real container, traffic on loopback.

A replica whose model loads for 45 s, with a startup probe on `/v2/health/ready` and a
15 min budget (`[health.startup] timeout_total`), becomes ready with 0 restarts, and gets no
request before it is ready:
- a fixed-count deployment: requests sent through its endpoint during the load are answered
  by the endpoint itself (503, berth's JSON error, not the server's "model not ready yet"),
  and the server's own request counter shows no infer answered before its model was loaded;
  `berth get` shows the replica starting, not ready, with its budget, the whole time;
- a scale-from-zero deployment (`min = 0`): one request sent to the idle endpoint is held
  (cold_start_timeout, 10 min by default) while the replica starts and loads, then served;
  the server answered that one infer and nothing before it.
Both load at once (one wait of ~50 s for the two). Every wait is bounded.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.berthd_process import Berthd, wait_until
from tests.model_server import (
    INFER_ANSWER,
    INFER_BODY,
    gauge,
    model_server_image_fixture,  # noqa: F401 (the model_server_image fixture)
    requests_answered,
)

pytestmark = pytest.mark.podman

LOAD_SECONDS = 45
READY_WITHIN = LOAD_SECONDS + 60.0  # the load, the container's start, probes, a busy box
JSON = {"Accept": "application/json"}

SLOW = """
name = "{name}"
image = "{image}"
port = 8000
stop_timeout = "5s"
[env]
LOAD_SECONDS = "{load}"
{replicas}
[health.startup]
path = "/v2/health/ready"
period = "1s"
timeout_total = "15m"
[health.readiness]
path = "/v2/models/tiny/ready"
period = "2s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""
FIXED = "[replicas]\ncount = 1"
FROM_ZERO = (
    '[replicas]\nmin = 0\nmax = 1\n[[autoscale.metrics]]\nmetric = "concurrency"\ntarget = 4'
)


def infer(port: int, timeout: float) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/v2/models/tiny/infer",
        json=INFER_BODY,
        headers=JSON,
        timeout=timeout,
    )


def listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def replica_of(daemon: Berthd, name: str) -> dict[str, Any]:
    replicas: list[dict[str, Any]] = daemon.json("get", name)["replicas"]
    assert len(replicas) == 1, replicas
    return replicas[0]


def server_metrics(port: int) -> str:
    """The replica's own /metrics, through the endpoint (which forwards every path)."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
    assert response.status_code == 200, response.text
    return response.text


def test_a_45s_load_with_a_15m_budget_is_ready_with_no_restart_and_no_request_before(
    berthd: Berthd, model_server_image: str, free_port: Callable[[], int]
) -> None:
    fixed_port, zero_port = free_port(), free_port()
    specs = berthd.state_dir.parent
    for name, port, replicas in (("slow", fixed_port, FIXED), ("cold", zero_port, FROM_ZERO)):
        (specs / f"{name}.toml").write_text(
            SLOW.format(
                name=name,
                image=model_server_image,
                load=LOAD_SECONDS,
                port=port,
                replicas=replicas,
            )
        )
    berthd.start()
    berthd.berth("apply", str(specs / "cold.toml"))
    wait_until("the idle endpoint to listen", lambda: listens(zero_port), timeout=30)
    assert berthd.json("get", "cold")["replicas"] == []  # min = 0: nothing runs yet
    held: dict[str, Any] = {}

    def send_held() -> None:
        started = time.monotonic()
        try:
            held["response"] = infer(zero_port, timeout=READY_WITHIN + 30)
        finally:
            held["waited"] = time.monotonic() - started

    holder = threading.Thread(target=send_held, daemon=True)
    holder.start()
    applied = time.monotonic()
    berthd.berth("apply", str(specs / "slow.toml"))

    # During the load: the endpoint answers for the replica, and berth shows it starting.
    refused = 0
    first: httpx.Response | None = None
    deadline = applied + READY_WITHIN
    for _ in range(1000):  # at most ~0.25 s apart: bounded in count and time
        assert time.monotonic() < deadline, f"not ready {READY_WITHIN:g}s after apply"
        response = infer(fixed_port, timeout=10.0)
        if response.status_code == 200:
            first = response
            break
        assert response.status_code == 503, response.text
        # berth's own answer (the endpoint's), not the server's {"error": "model not ready yet"}
        assert response.json()["error"]["type"] == "unavailable", response.text
        refused += 1
        if refused % 20 == 1:
            replica = replica_of(berthd, "slow")
            if not replica["ready"]:  # it may pass its probe between two reads
                assert replica["state"] in ("starting", "loading"), replica
                assert replica["restarts"] == 0, replica
        time.sleep(0.2)
    assert first is not None, "no answer from the replica within 1000 requests"
    loaded_after = time.monotonic() - applied
    assert first.json()["outputs"][0]["data"] == INFER_ANSWER
    assert loaded_after >= LOAD_SECONDS, f"an answer {loaded_after:.1f}s after apply"
    assert refused >= 20, f"only {refused} requests during the load"

    text = server_metrics(fixed_port)
    answered = requests_answered(text)
    assert ("infer", "503") not in answered, answered  # no infer reached it before ready
    assert answered[("infer", "200")] == 1, answered
    assert (gauge(text, "model_load_duration_seconds") or 0) >= LOAD_SECONDS
    replica = replica_of(berthd, "slow")
    assert replica["ready"] and replica["state"] == "ready" and replica["restarts"] == 0, replica
    assert re.search(r"^startup:\s+15m budget$", berthd.berth("get", "slow").stdout, re.M)

    # The held request: served once the other replica had loaded too, never refused.
    holder.join(timeout=READY_WITHIN + 40)
    assert not holder.is_alive(), "the held request never ended"
    response = held["response"]
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == INFER_ANSWER
    assert held["waited"] >= LOAD_SECONDS, held
    answered = requests_answered(server_metrics(zero_port))
    assert ("infer", "503") not in answered and answered[("infer", "200")] == 1, answered
    assert replica_of(berthd, "cold")["restarts"] == 0
    log = berthd.berth("logs", "cold").stdout + berthd.berth("logs", "slow").stdout
    assert "infer before ready" not in log and log.count("model tiny loaded in") == 2, log
