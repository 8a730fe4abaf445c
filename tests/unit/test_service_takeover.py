"""The embedded Podman service's record, and the takeover of one a crashed berthd left.

A stand-in `podman` (a Python script answering GET /_ping on the Unix socket it is given)
plays the service: real processes, started by these tests and ended by PID. Real Podman
runs in tests/integration/test_podman_service.py and tests/e2e/test_berthd_adoption.py.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from daemon.runtime import service_record
from daemon.runtime.service import PodmanService, podman_answers

FAKE_PODMAN = """#!{python}
import socket, sys
path = sys.argv[-1].removeprefix("unix://")
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(16)
while True:
    conn, _ = server.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nOK")
    conn.close()
"""


DEAD = 4_999_999  # above Linux's largest pid_max (2**22): the pid of a berthd that is gone


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="berth-tk-", dir="/tmp"))  # a short socket path
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_podman(state_dir: Path) -> Path:
    binary = state_dir / "bin" / "podman"
    binary.parent.mkdir()
    binary.write_text(FAKE_PODMAN.format(python=sys.executable))
    binary.chmod(0o755)
    return binary


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever is left is killed, by PID."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for p in processes:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)


def url_of(state_dir: Path) -> str:
    return f"unix://{state_dir}/podman.sock"


def spawn(started: list[subprocess.Popen[bytes]], *command: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command)
    started.append(process)
    return process


async def until(check: Callable[[], Awaitable[bool] | bool]) -> None:
    """Until `check()` holds (it looks at other processes: polled), at most 10 s."""
    with trio.fail_after(10):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await trio.sleep(0.02)


async def orphan(
    fake_podman: Path, state_dir: Path, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """A service that a kill -9ed berthd left on the state dir's socket."""
    url = url_of(state_dir)
    process = spawn(started, str(fake_podman), "system", "service", "--time=0", url)
    await until(partial(podman_answers, url))
    return process


class Said:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def __call__(self, message: str, *, level: int) -> None:
        self.messages.append(message)


def service(
    state_dir: Path, fake_podman: Path, said: Said, berthd_pid: int | None = None
) -> PodmanService:
    return PodmanService(
        None,
        state_dir,
        system_url=f"unix://{state_dir}/no-system.sock",
        podman_binary=str(fake_podman),
        watch_period=0.05,
        stop_timeout=2.0,
        on_event=said,
        berthd_pid=berthd_pid,
    )


def test_the_service_command_line_is_recognised() -> None:
    url = "unix:///var/lib/berth/podman.sock"
    yes = [
        ["podman", "system", "service", "--time=0", url],
        ["/usr/bin/podman", "--log-level=info", "system", "service", "--time=0", url],
        [sys.executable, "/tmp/x/podman", "system", "service", url],
    ]
    no = [
        ["podman", "system", "service", "--time=0", "unix:///elsewhere.sock"],
        ["sleep", "system", "service", url],
        ["podman", "service", "system", url],
        ["podman", "run", "system", url],
        [url],
    ]
    assert all(service_record.is_service_command(c, url) for c in yes)
    assert not any(service_record.is_service_command(c, url) for c in no)


async def test_the_embedded_service_is_recorded_and_ended_with_berthd(
    state_dir: Path, fake_podman: Path
) -> None:
    said = Said()
    svc = service(state_dir, fake_podman, said)
    record = state_dir / service_record.RECORD_NAME
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(svc.run)
        pid = svc.child_pid
        assert pid is not None and svc.source == "embedded"
        assert json.loads(record.read_text())["pid"] == pid
        nursery.cancel_scope.cancel()
    assert said.messages == [
        f"podman service (pid {pid}) started on {url_of(state_dir)}",
        f"podman service (pid {pid}) ended",
    ]
    assert not record.exists()


async def test_a_service_a_crashed_berthd_left_is_taken_over_and_ended(
    state_dir: Path, fake_podman: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    left = await orphan(fake_podman, state_dir, started)
    record = state_dir / service_record.RECORD_NAME
    service_record.record(record, left.pid, url_of(state_dir), DEAD)  # what it wrote
    said = Said()
    svc = service(state_dir, fake_podman, said)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            assert await nursery.start(svc.run) == url_of(state_dir)
        assert svc.source == "reused" and svc.taken_over is not None
        assert svc.taken_over.pid == left.pid
        await trio.sleep(0.2)  # watched a few times: it answers, nothing is said
        nursery.cancel_scope.cancel()
    assert left.wait(timeout=5) is not None
    assert said.messages == [
        f"podman service (pid {left.pid}) left by an earlier berthd reused on "
        f"{url_of(state_dir)}; taken over: this berthd ends it when it stops",
        f"podman service (pid {left.pid}) ended",
    ]
    assert not record.exists()


async def test_a_taken_over_service_that_dies_is_replaced_by_an_embedded_one(
    state_dir: Path, fake_podman: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    left = await orphan(fake_podman, state_dir, started)
    service_record.record(state_dir / service_record.RECORD_NAME, left.pid, url_of(state_dir), DEAD)
    said = Said()
    svc = service(state_dir, fake_podman, said)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(svc.run)
        left.kill()
        left.wait(timeout=5)
        await until(lambda: any("answering again" in m for m in said.messages))
        child = svc.child_pid
        nursery.cancel_scope.cancel()
    assert f"podman service (pid {left.pid}) exited; restarting in 0.5s" in said.messages
    assert said.messages[-1] == f"podman service (pid {child}) ended"


async def test_a_record_that_names_another_process_is_not_trusted(
    state_dir: Path, fake_podman: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    left = await orphan(fake_podman, state_dir, started)
    bystander = spawn(started, "sleep", "30")
    record = state_dir / service_record.RECORD_NAME
    service_record.record(record, bystander.pid, url_of(state_dir), DEAD)
    said = Said()
    svc = service(state_dir, fake_podman, said)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(svc.run)
        assert svc.source == "reused" and svc.taken_over is None
        nursery.cancel_scope.cancel()
    assert bystander.poll() is None and left.poll() is None  # neither is berthd's to end
    assert "no record names its process" in said.messages[0]


async def test_a_record_with_another_start_time_is_a_reused_pid(
    state_dir: Path, fake_podman: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    left = await orphan(fake_podman, state_dir, started)
    record = state_dir / service_record.RECORD_NAME
    found = service_record.record(record, left.pid, url_of(state_dir), DEAD)
    assert found is not None
    raw = json.loads(record.read_text())
    record.write_text(json.dumps({**raw, "started": found.started - 3600.0}))
    svc = service(state_dir, fake_podman, Said())
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(svc.run)
        assert svc.taken_over is None
        nursery.cancel_scope.cancel()
    assert left.poll() is None
    assert (
        service_record.end_process(
            service_record.ServiceProcess(left.pid, found.started - 3600.0, url_of(state_dir)), 1.0
        )
        == "already gone"
    )
    assert left.poll() is None


async def test_two_berthds_overlapping_leave_the_service_to_the_one_that_took_it_over(
    state_dir: Path, fake_podman: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """A planned restart: the new berthd takes the old one's service over while the old one
    drains; the old one, stopping, leaves it running; the new one ends it when it stops."""
    old_berthd = spawn(started, "sleep", "30")  # stand for the two berthds' pids
    new_berthd = spawn(started, "sleep", "30")
    old_said, new_said = Said(), Said()
    old = service(state_dir, fake_podman, old_said, berthd_pid=old_berthd.pid)
    new = service(state_dir, fake_podman, new_said, berthd_pid=new_berthd.pid)
    async with trio.open_nursery() as both:
        async with trio.open_nursery() as old_one:
            with trio.fail_after(10):
                await old_one.start(old.run)
            pid = old.child_pid
            assert pid is not None
            with trio.fail_after(10):
                await both.start(new.run)
            assert new.taken_over is not None and new.taken_over.pid == pid
            old_one.cancel_scope.cancel()
        assert old_said.messages[-1] == (
            f"podman service (pid {pid}) left running: berthd (pid {new_berthd.pid}) took it over"
        )
        old_berthd.kill()  # the old berthd exits once it has stopped
        old_berthd.wait(timeout=5)
        await trio.sleep(0.2)  # watched by the new one: still there, still answering
        assert service_record.running(new.taken_over)
        assert await podman_answers(url_of(state_dir))
        both.cancel_scope.cancel()
    assert new_said.messages[-1] == f"podman service (pid {pid}) ended"
    assert not (state_dir / service_record.RECORD_NAME).exists()
    (left,) = old.left_running
    with trio.fail_after(5):
        await left.wait()  # ended by the new one; this process started it, so it reaps it


async def test_a_second_berthd_that_stops_hands_the_service_back_to_the_first(
    state_dir: Path, fake_podman: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """A second berthd on the same state dir (it will refuse to start: the admin socket is
    taken) must not end the service of the first, which still runs."""
    first_said, second_said = Said(), Said()
    first = service(state_dir, fake_podman, first_said)  # this process: alive throughout
    second_berthd = spawn(started, "sleep", "30")
    second = service(state_dir, fake_podman, second_said, berthd_pid=second_berthd.pid)
    async with trio.open_nursery() as outer:
        with trio.fail_after(10):
            await outer.start(first.run)
        pid = first.child_pid
        async with trio.open_nursery() as inner:
            with trio.fail_after(10):
                await inner.start(second.run)
            assert second.taken_over is not None
            inner.cancel_scope.cancel()
        assert second_said.messages[-1] == (
            f"podman service (pid {pid}) left running: handed back to berthd "
            f"(pid {first.berthd_pid})"
        )
        assert first.child_pid == pid and await podman_answers(url_of(state_dir))
        outer.cancel_scope.cancel()
    assert first_said.messages[-1] == f"podman service (pid {pid}) ended"
    assert not (state_dir / service_record.RECORD_NAME).exists()


def test_logging_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert service_record.left_running(Path("/nonexistent/record"), "unix:///x") is None
    assert caplog.records == []
