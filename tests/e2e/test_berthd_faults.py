"""End to end, faults of the box under steady load: berthd as a process on the Podman service
it started itself (no `--podman-url`), a 2-replica echo deployment, client threads sending
requests to its endpoint on 127.0.0.1 the whole time.

- The embedded Podman service killed (SIGKILL, by the PID of berthd's child), and killed
  again while it comes back (before it answers): zero failed requests through the endpoint,
  berthd keeps running, restarts the service with a back-off and says so in its events; a
  changed spec applied while the service is away, and another within 10 s of it answering
  again, roll out (the last one completes, still with zero failed requests).

The `podman` that berthd runs is the real one behind a wrapper that waits 0.5 s before it
starts a service (as a loaded box does): time enough to kill a service before it answers.
Load is bounded: a few threads, a request cap each, a wall-clock cap.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.runtime.service import SYSTEM_URL
from tests.conftest import slow_podman, socket_answers
from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.load import Load
from tests.specs import echo_spec

pytestmark = pytest.mark.podman

NAME = "e2e-faults"


def service_children(parent: int) -> list[int]:
    """PIDs of the `podman system service` processes whose parent is `parent` (zombies,
    whose command line is empty, are not counted)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and b"\0system\0service\0" in cmdline:
            found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def berthd(berthd_factory: Callable[..., Berthd], tmp_path: Path) -> Iterator[Berthd]:
    """berthd on its own embedded Podman service; stopped with SIGTERM (which ends that
    service) when the test ends, and any service it left killed by PID."""
    if socket_answers(Path(SYSTEM_URL.removeprefix("unix://"))):
        pytest.skip(f"a system Podman answers at {SYSTEM_URL}: berthd would not start its own")
    bin_dir = slow_podman(tmp_path / "bin").parent
    daemon = berthd_factory(env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    daemon.podman_url = None
    services: list[int] = []
    daemon.services = services  # type: ignore[attr-defined]
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            services += service_children(daemon.proc.pid)
            daemon.signal(signal.SIGTERM)
        for pid in services:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def the_service(daemon: Berthd, not_one_of: tuple[int, ...] = ()) -> int:
    """The PID of berthd's Podman service child, once there is one not in `not_one_of`."""
    assert daemon.proc is not None
    found: list[int] = []

    def started() -> bool:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(f"berthd exited ({daemon.proc.returncode}):\n{daemon.log()}")
        found[:] = [pid for pid in service_children(daemon.proc.pid) if pid not in not_one_of]
        return bool(found)

    wait_until("berthd's Podman service child", started, timeout=15, interval=0.02)
    (pid,) = found
    daemon.services.append(pid)  # type: ignore[attr-defined]
    return pid


def events(daemon: Berthd, kind: str) -> list[str]:
    """The messages of berthd's events of this kind, oldest first."""
    lines = daemon.berth("events", "--json").stdout.splitlines()
    found = [json.loads(line) for line in lines if line.strip()]
    return [event["message"] for event in found if event["kind"] == kind]


def report(load: Load) -> str:
    lat = sorted(load.latencies) or [0.0]
    return (
        f"{load.ok} ok, {len(load.failures)} failed, latency p50 {lat[len(lat) // 2]:.3f}s "
        f"max {lat[-1]:.3f}s; first failures: {load.failures[:5]}"
    )


def test_podman_service_killed_twice_under_load(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    berthd.start()
    first = the_service(berthd)
    podman_socket = berthd.state_dir / "podman.sock"
    spec = tmp_path / f"{NAME}.toml"
    spec.write_text(echo_spec(NAME, echo_image, port, message="v1"))
    berthd.berth("apply", str(spec), "--wait", timeout=60)
    old_spec_id = berthd.json("get", NAME)["spec_id"]

    with Load(f"http://127.0.0.1:{port}/cgi-bin/echo", max_seconds=45) as load:
        load.wait_answers(30, since=0.0)
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        # Killed again while it comes back: the wrapper holds the new one 0.5 s before it
        # starts Podman, so this kill lands before it answers.
        second = the_service(berthd, not_one_of=(first,))
        os.kill(second, signal.SIGKILL)
        # A changed spec applied while the service is away (1.5 s of back-off and slow start).
        spec.write_text(echo_spec(NAME, echo_image, port, message="v2"))
        assert "revision 2" in berthd.berth("apply", str(spec), timeout=10).stdout
        applied_while_away = not socket_answers(podman_socket)
        third = the_service(berthd, not_one_of=(first, second))
        wait_until("the Podman service to answer again", lambda: socket_answers(podman_socket), 15)
        answering_at = time.monotonic()

        spec.write_text(echo_spec(NAME, echo_image, port, message="v3"))
        assert "revision 3" in berthd.berth("apply", str(spec), timeout=10).stdout
        applied_at = time.monotonic()
        new_spec_id = berthd.json("get", NAME)["spec_id"]
        assert new_spec_id != old_spec_id

        def rolled_out() -> bool:
            now = berthd.json("get", NAME)
            return (
                now["spec_id"] == new_spec_id
                and now["ready"] == 2
                and len(now["replicas"]) == 2
                and {r["spec_id"] for r in now["replicas"]} == {now["spec_id"]}
            )

        wait_until("the update to replace both replicas", rolled_out, timeout=30)
        done_at = time.monotonic()
        load.wait_answers(20, since=done_at + 0.5)

    print(
        f"\nPodman service killed twice under load: {report(load)}; revision 2 applied "
        f"{'while it was away' if applied_while_away else 'after it answered'}; answering again "
        f"{answering_at - killed_at:.1f}s after the first kill; apply returned "
        f"{applied_at - answering_at:.1f}s and the update was done "
        f"{done_at - answering_at:.1f}s after it answered"
    )
    assert load.failures == [], report(load)
    assert berthd.proc is not None and berthd.proc.poll() is None, berthd.log()
    assert applied_at - answering_at < 10
    assert load.messages_since(done_at + 0.5).keys() == {"v3"}
    said = events(berthd, "podman-service")
    assert said == [
        f"podman service (pid {first}) started on unix://{berthd.state_dir}/podman.sock",
        f"podman service (pid {first}) killed by SIGKILL; restarting in 0.5s",
        f"podman service (pid {second}) killed by SIGKILL before answering; restarting in 1s",
        f"podman service (pid {third}) answering again",
    ], said
    # berthd still stops cleanly, and ends the service it started.
    assert berthd.signal(signal.SIGTERM) == 0
    wait_until("the Podman service to end with berthd", lambda: not pid_alive(third), 10)
