"""End to end, scale to zero and back on one (fake) GPU: cold starts, the swap, the idle
unload and a cancelled start. berthd as a process, real Podman, a CDI spec declaring one
`nvidia.com/gpu` device (HOST.md); requests go to each deployment's own endpoint (the
model gateway's acceptance test, test_berthd_gateway.py, goes through the gateway).

Two echo deployments `a` and `b`, each `gpus = 1`, `min = 0`, `max = 1`: a request to `a`
cold-starts it; with `a` idle, a request to `b` swaps `a` out and `b` answers; a request to
`a` while a long one to `b` is in flight waits, `b` is not evicted, and `a` is answered
after `b`'s request ended. Then, alone: `scale_to_zero_after` unloads, and a cold start
whose only client hung up is cancelled.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.fake_gpus import fake_nvidia_gpus

pytestmark = pytest.mark.podman

SPEC = """
name = "{name}"
image = "{image}"
port = 8080
stop_timeout = "1s"
[resources]
gpus = {gpus}
[replicas]
min = 0
max = 1
{replicas}
[[autoscale.metrics]]
metric = "concurrency"
target = 1
[autoscale]
scale_down_delay = "1h"
[health.readiness]
path = "/health"
period = "250ms"
{readiness}
[update]
drain_timeout = "5s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


@pytest.fixture
def one_fake_gpu() -> Iterator[Path]:
    with fake_nvidia_gpus(1, "swap") as path:
        yield path


@pytest.fixture
def berthd(berthd_factory: Callable[..., Berthd], one_fake_gpu: Path) -> Berthd:
    daemon = berthd_factory()  # started after the CDI file exists: berthd reads it at start
    daemon.start()
    return daemon


def apply(
    berthd: Berthd,
    tmp_path: Path,
    image: str,
    port: int,
    name: str,
    *,
    gpus: int = 1,
    replicas: str = "",
    readiness: str = "",
) -> None:
    spec = tmp_path / f"{name}.toml"
    text = SPEC.format(
        name=name,
        image=image,
        port=port,
        gpus=gpus,
        replicas=replicas,
        readiness=readiness,
    )
    spec.write_text(text)
    berthd.berth("apply", str(spec))


def events(berthd: Berthd, name: str) -> list[dict[str, Any]]:
    out = berthd.berth("events", name, "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def kinds(berthd: Berthd, name: str, kind: str) -> list[str]:
    return [e["message"] for e in events(berthd, name) if e["kind"] == kind]


def replicas(berthd: Berthd, name: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = berthd.json("get", name)["replicas"]
    return got


class Call:
    """One request in a thread of its own: its answer and when it came."""

    def __init__(self, url: str, timeout: float = 90.0) -> None:
        self.status: int | None = None
        self.text = ""
        self.ended: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, timeout), daemon=True)
        self._thread.start()

    def _run(self, url: str, timeout: float) -> None:
        try:
            response = httpx.get(url, timeout=timeout)
            self.status, self.text = response.status_code, response.text
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request did not end in time"


def test_cold_start_then_swap_and_never_while_a_request_is_in_flight(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port_a, port_b = free_port(), free_port()
    apply(berthd, tmp_path, echo_image, port_a, "a")
    apply(berthd, tmp_path, echo_image, port_b, "b")
    wait_until("a and b idle at zero", lambda: _idle(berthd, "a") and _idle(berthd, "b"), 30)

    # A request to a: a cold start, answered.
    started = time.monotonic()
    first = httpx.get(f"http://127.0.0.1:{port_a}/cgi-bin/echo", timeout=60)
    cold = time.monotonic() - started
    assert first.status_code == 200 and "replica=" in first.text
    assert kinds(berthd, "a", "cold-start") == ["woken by 1 waiting request: 0 -> 1"]

    # a idle: a request to b swaps a out, and b answers.
    started = time.monotonic()
    second = httpx.get(f"http://127.0.0.1:{port_b}/cgi-bin/echo", timeout=60)
    swapped_in = time.monotonic() - started
    assert second.status_code == 200 and "replica=" in second.text
    (swap,) = kinds(berthd, "b", "swap")
    assert swap.startswith("swapping out a for b: its new replica is pending: needs 1 GPU")
    assert "victim a (idle " in swap and "priority 0 <= 0" in swap
    assert "swapped out for b: 1 -> 0" in kinds(berthd, "a", "scaled")
    assert replicas(berthd, "a") == []
    (b_replica,) = replicas(berthd, "b")
    assert b_replica["gpus"] == ["nvidia.com/gpu=0"]

    # A long request to b in flight; a request to a waits, and b is not evicted.
    long = Call(f"http://127.0.0.1:{port_b}/cgi-bin/sleep?6")
    wait_until(
        "b's long request in flight",
        lambda: (berthd.json("metrics", "b").get("in_flight") or 0) >= 1,
        timeout=5,
    )
    waiting = Call(f"http://127.0.0.1:{port_a}/cgi-bin/echo")
    wait_until(
        "a to say why it waits",
        lambda: (
            "nothing to swap out: b has 1 request in flight"
            in (berthd.json("get", "a").get("reason") or "")
        ),
        timeout=5,
    )
    assert waiting.ended is None and long.ended is None
    assert [r["id"] for r in replicas(berthd, "b")] == [b_replica["id"]]
    assert len(kinds(berthd, "a", "swap")) == 0

    long.join(15)
    assert long.status == 200 and "slept=6" in long.text
    waiting.join(60)
    assert waiting.status == 200 and "replica=" in waiting.text, (
        waiting.text,
        events(berthd, "a"),
        events(berthd, "b"),
    )
    assert long.ended is not None and waiting.ended is not None and waiting.ended > long.ended
    print(
        f"\ncold start {cold:.2f}s; swap a -> b answered in {swapped_in:.2f}s; a answered "
        f"{waiting.ended - long.ended:.2f}s after b's long request ended"
    )
    (swap_back,) = kinds(berthd, "a", "swap")
    assert swap_back.startswith("swapping out b for a:")
    assert replicas(berthd, "b") == []
    assert len(replicas(berthd, "a")) == 1


def _idle(berthd: Berthd, name: str) -> bool:
    got = berthd.json("get", name)
    return bool(got["status"] == "idle" and got["replicas"] == [])


def test_scale_to_zero_after_unloads_and_ls_says_when(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    apply(berthd, tmp_path, echo_image, port, "ttl", replicas='scale_to_zero_after = "3s"')
    wait_until("ttl idle at zero", lambda: _idle(berthd, "ttl"), timeout=30)
    response = httpx.get(f"http://127.0.0.1:{port}/cgi-bin/sleep?2", timeout=60)
    served = time.monotonic()
    assert response.status_code == 200
    wait_until("the idle unload", lambda: kinds(berthd, "ttl", "unloaded") != [], timeout=20)
    unloaded_after = time.monotonic() - served
    (message,) = kinds(berthd, "ttl", "unloaded")
    assert message.startswith("no request for ") and message.endswith(
        "(scale_to_zero_after 3s): 1 -> 0"
    )
    # From the last request's end: not before 3 s after it (the 2 s it took do not count).
    assert unloaded_after >= 2.5, unloaded_after
    wait_until("ttl at zero", lambda: _idle(berthd, "ttl"), timeout=20)
    listing = berthd.berth("ls").stdout
    (line,) = [x for x in listing.splitlines() if x.startswith("ttl ")]
    assert "idle (unloaded " in line and " ago)" in line


def test_a_cold_start_whose_only_client_hung_up_is_cancelled(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    # Its replica starts but is not ready for a minute: a model still loading.
    apply(berthd, tmp_path, echo_image, port, "slow", readiness='initial_delay = "60s"')
    wait_until("slow idle at zero", lambda: _idle(berthd, "slow"), timeout=30)
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"http://127.0.0.1:{port}/cgi-bin/echo", timeout=3)  # then hangs up
    assert kinds(berthd, "slow", "cold-start") == ["woken by 1 waiting request: 0 -> 1"]
    wait_until(
        "the start to be cancelled",
        lambda: bool(kinds(berthd, "slow", "start-cancelled")),
        timeout=10,
    )
    (message,) = kinds(berthd, "slow", "start-cancelled")
    assert message.startswith("every waiting request left ")
    assert message.endswith("before a replica was ready: 1 -> 0 (the starting replica is removed)")
    wait_until("its container removed", lambda: _idle(berthd, "slow"), timeout=20)
    assert any(e["kind"] == "removed" for e in events(berthd, "slow"))
