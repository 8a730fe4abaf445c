"""End to end, a slow model load (issue 12, point 3's acceptance) with the real model-server
image: berthd as a process, the replica a real container, traffic on loopback.

A replica whose model loads for 45 s becomes ready with 0 restarts and gets no request
before it is ready; requests sent meanwhile wait at the endpoint (cold_start_timeout, 10 min
by default) and are served once it is:
- a fixed-count deployment, startup probe on `/v2/health/live` and readiness on
  `/v2/models/tiny/ready`: `berth get` shows the replica `loading` (up, its model not yet)
  for the load, never restarted; the requests sent through its endpoint during the load are
  all held and then answered 200, and the server's own counter shows no infer before ready;
- a scale-from-zero deployment (`min = 0`), startup probe on `/v2/health/ready` with a 15 min
  budget (`[health.startup] timeout_total`): one request sent to the idle endpoint is held
  while the replica starts and loads, then served; the server answered that one infer and
  nothing before it.
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
path = "{startup}"
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
    for name, port, replicas, startup in (
        ("slow", fixed_port, FIXED, "/v2/health/live"),
        ("cold", zero_port, FROM_ZERO, "/v2/health/ready"),
    ):
        (specs / f"{name}.toml").write_text(
            SLOW.format(
                name=name,
                image=model_server_image,
                load=LOAD_SECONDS,
                port=port,
                replicas=replicas,
                startup=startup,
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

    # During the load: requests wait at the endpoint, and berth shows the replica loading.
    results: list[tuple[int, float]] = []  # (status, seconds after apply), one per request

    def send_one() -> None:
        response = infer(fixed_port, timeout=READY_WITHIN + 30)
        assert response.json()["outputs"][0]["data"] == INFER_ANSWER, response.text
        results.append((response.status_code, time.monotonic() - applied))

    senders: list[threading.Thread] = []
    states: set[str] = set()
    deadline = applied + READY_WITHIN
    for i in range(int(READY_WITHIN)):  # one look a second: bounded in count and time
        assert time.monotonic() < deadline, f"not ready {READY_WITHIN:g}s after apply"
        replicas = berthd.json("get", "slow")["replicas"]
        if replicas:
            (replica,) = replicas
            assert replica["restarts"] == 0, replica
            if replica["ready"]:
                break
            states.add(replica["state"])
            if replica["state"] == "loading" and len(senders) < 4 and i % 5 == 0:
                sender = threading.Thread(target=send_one, daemon=True)
                sender.start()
                senders.append(sender)
        time.sleep(1.0)
    loaded_after = time.monotonic() - applied
    assert loaded_after >= LOAD_SECONDS - 5, f"ready {loaded_after:.1f}s after apply"
    assert "loading" in states and states <= {"starting", "loading"}, states
    assert senders, "no request was sent during the load"
    for sender in senders:
        sender.join(timeout=60)
        assert not sender.is_alive(), "a held request never ended"
    assert [status for status, _ in results] == [200] * len(senders), results
    assert all(at >= LOAD_SECONDS for _, at in results), results  # held till it was ready

    text = server_metrics(fixed_port)
    answered = requests_answered(text)
    assert ("infer", "503") not in answered, answered  # no infer reached it before ready
    assert answered[("infer", "200")] == len(senders), answered
    assert (gauge(text, "model_load_duration_seconds") or 0) >= LOAD_SECONDS
    replica = replica_of(berthd, "slow")
    assert replica["ready"] and replica["state"] == "ready" and replica["restarts"] == 0, replica
    assert re.search(r"^startup:\s+15m budget$", berthd.berth("get", "cold").stdout, re.M)

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
