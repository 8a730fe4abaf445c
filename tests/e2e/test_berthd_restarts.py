"""End to end, issue 15: berthd crashes and restarts under steady load without refusing a
connection. berthd runs as a process on the session's Podman service, a 2-replica echo
deployment behind its endpoint on 127.0.0.1, and 8 client threads send requests the whole
time (tests/e2e/restarts.py: a refused connection is told from a dropped one).

- `berthd --supervise`, 10 x `kill -9` of the berthd child (the supervisor starts a new
  one with the sockets): 0 refused, 0 failed GETs (one cut in flight by the kill is sent
  again once, as an HTTP client does for an idempotent request; the number is printed),
  the same two containers all along, no third one.
- `berthd --supervise`, 10 x SIGUSR2 (a planned restart: the old child drains while the new
  one accepts): 0 failed requests of any kind (GETs and POSTs with a body, no retry), and a
  5 s SSE stream that spans a restart gets all its events.
- This test playing systemd (FakeSystemd: the NOTIFY_SOCKET reader and the LISTEN_FDS
  passer): 10 x `kill -9` + start, then 10 x SIGTERM + start (stop, then start, as
  `systemctl restart`: new connections wait in the backlog while the old one drains), with
  the same counts and the SSE stream across one stop.

The per-restart figures (time from the kill to the first 200) are printed; bench/restarts.py
measures them for docs/benchmarks.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from daemon.berthd import instance_id
from daemon.runtime.interface import LABEL_INSTANCE
from tests.conftest import podman_binary
from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.restarts import (
    FakeSystemd,
    RestartLoad,
    children_running,
    kill_now,
    supervised_child,
    wait_gone,
)
from tests.specs import echo_spec

pytestmark = [pytest.mark.podman, pytest.mark.slow]

NAME = "e2e-restarts"
RESTARTS = int(os.environ.get("BERTH_TEST_RESTARTS", "10"))
SSE_EVENTS = 5


def container_ids(daemon: Berthd) -> set[str]:
    """Every container of the daemon's instance, running or not (Podman's own view)."""
    out = subprocess.run(
        [podman_binary(), "ps", "-aq", "--no-trunc", "--filter",
         f"label={LABEL_INSTANCE}={instance_id(daemon.state_dir)}"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return set(out.split())


def deploy(daemon: Berthd, tmp_path: Path, image: str, port: int) -> set[str]:
    spec = tmp_path / f"{NAME}.toml"
    spec.write_text(echo_spec(NAME, image, port))
    daemon.berth("apply", str(spec), "--wait", timeout=90)
    ids = container_ids(daemon)
    assert len(ids) == 2, ids
    return ids


def summary(load: RestartLoad, serve_times: list[float]) -> str:
    counts = load.counts()
    times = ", ".join(f"{t:.2f}" for t in serve_times)
    return (
        f"{dict(counts)}; retried after a cut {load.retried()}; stale keep-alive "
        f"{load.stale}; time to serve again (s): {times}; "
        f"first failures: {load.failures()[:5]}"
    )


class SseStream:
    """One `/cgi-bin/stream?5` read to its end in a thread: its events and its error."""

    def __init__(self, port: int) -> None:
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.opened = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(port,), daemon=True)
        self._thread.start()
        assert self.opened.wait(30), "the SSE stream did not open"

    def _read(self, port: int) -> None:
        url = f"http://127.0.0.1:{port}/cgi-bin/stream?{SSE_EVENTS}"
        try:
            with httpx.stream("GET", url, timeout=60) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line)
                        self.opened.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.opened.set()

    def result(self) -> list[str]:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the SSE stream did not end"
        assert self.error is None, repr(self.error)
        return self.events


@pytest.fixture
def supervised(berthd_factory: Callable[..., Berthd]) -> Iterator[Berthd]:
    """berthd --supervise; at the end the supervisor gets SIGTERM, any child left SIGKILL."""
    daemon = berthd_factory(extra_args=["--supervise"])
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            children = children_running(daemon.proc.pid, b"daemon.main")
            daemon.send(signal.SIGTERM)
            try:
                daemon.proc.wait(timeout=60)
            finally:
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def test_kill_9_of_the_supervised_berthd_refuses_nothing(
    supervised: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    supervised.start()
    before = deploy(supervised, tmp_path, echo_image, port)
    serve_times: list[float] = []
    with RestartLoad(port, keep_alive=True) as load:
        load.wait_ok_after(time.monotonic())
        for _ in range(RESTARTS):
            child = supervised_child(supervised)
            killed = kill_now(child)
            supervised_child(supervised, other_than=child)
            serve_times.append(load.wait_ok_after(killed) - killed)
            time.sleep(0.3)  # some steady load between kills
    print(summary(load, serve_times))
    assert load.counts()["refused"] == 0, summary(load, serve_times)
    assert load.failures() == [], summary(load, serve_times)
    assert container_ids(supervised) == before  # adopted every time, none started
    ready = supervised.json("get", NAME)["replicas"]
    assert {r["container_id"] for r in ready} <= before and len(ready) == 2


def test_planned_restarts_under_supervise_fail_nothing(
    supervised: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    supervised.start()
    before = deploy(supervised, tmp_path, echo_image, port)
    serve_times: list[float] = []
    drains: list[float] = []  # from the signal to the old child's exit
    with RestartLoad(port, keep_alive=False, post=True) as load:
        load.wait_ok_after(time.monotonic())
        stream: SseStream | None = None
        for i in range(RESTARTS):
            old = supervised_child(supervised)
            if i == 0:
                stream = SseStream(port)  # open, its first event read: it spans this one
            asked = time.monotonic()
            supervised.send(signal.SIGUSR2)
            wait_gone(old)  # drained: its in-flight requests (and the stream) finished
            drains.append(time.monotonic() - asked)
            supervised_child(supervised)
            serve_times.append(load.wait_ok_after(asked) - asked)
        assert stream is not None
        events = stream.result()
    print(summary(load, serve_times), "; old child gone after (s):", [f"{d:.1f}" for d in drains])
    assert len(events) == SSE_EVENTS, events
    assert load.failures() == [], summary(load, serve_times)
    assert load.retried() == 0 and load.counts()["ok"] > 0
    assert container_ids(supervised) == before


def test_restarts_with_the_sockets_passed_as_systemd_does(
    berthd_factory: Callable[..., Berthd],
    tmp_path: Path,
    echo_image: str,
    free_port: Callable[[], int],
) -> None:
    port = free_port()
    daemon = berthd_factory()
    systemd = FakeSystemd(daemon, tmp_path / "notify.sock")
    try:
        systemd.start()
        before = deploy(daemon, tmp_path, echo_image, port)
        wait_until(
            "the endpoint in the fd store", lambda: f"ep-127.0.0.1-{port}" in systemd.fds, 10
        )
        assert "admin" in systemd.fds
        kills: list[float] = []
        with RestartLoad(port, keep_alive=True) as load:
            load.wait_ok_after(time.monotonic())
            for _ in range(RESTARTS):
                assert daemon.proc is not None
                killed = kill_now(daemon.proc.pid)
                daemon.proc.wait(timeout=30)
                systemd.start()
                kills.append(load.wait_ok_after(killed) - killed)
        print("kill -9:", summary(load, kills))
        assert load.counts()["refused"] == 0, summary(load, kills)
        assert load.failures() == [], summary(load, kills)
        stops: list[float] = []
        with RestartLoad(port, keep_alive=False, post=True) as load:
            load.wait_ok_after(time.monotonic())
            stream: SseStream | None = None
            for i in range(RESTARTS):
                assert daemon.proc is not None
                if i == 0:
                    stream = SseStream(port)
                asked = time.monotonic()
                daemon.proc.send_signal(signal.SIGTERM)  # systemctl restart: stop ...
                assert daemon.proc.wait(timeout=60) == 0
                systemd.start()  # ... then start, with the store's sockets
                stops.append(load.wait_ok_after(asked) - asked)
            assert stream is not None
            events = stream.result()
        print("SIGTERM + start:", summary(load, stops))
        assert len(events) == SSE_EVENTS, events
        assert load.failures() == [] and load.retried() == 0, summary(load, stops)
        assert container_ids(daemon) == before
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.wait(timeout=60)
        systemd.close()
