"""`berthd --supervise`'s supervisor (daemon/system/supervise.py) as a real process, with a
small child that speaks berthd's side of the protocol through daemon/system/fdstore.py
(FDSTORE=1 on a NOTIFY_SOCKET, LISTEN_FDS taken back) and serves one line per connection.
No Podman: this is the socket handling alone (tests/e2e/test_berthd_restarts.py has berthd).

- The child killed (SIGKILL): a connection made at once is not refused; the next child,
  started with the socket at descriptor 3 (LISTEN_* unset, FD_CLOEXEC set), answers it.
- SIGUSR2: the old child drains a slow request to its end while the new one answers new
  connections; SIGTERM: the supervisor forwards it and exits 0, and the port is closed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.berthd_process import wait_until

CHILD = textwrap.dedent(
    """
    import json, os, signal, socket, sys, threading, time
    from pathlib import Path
    from daemon.system.fdstore import FdStore
    from daemon.system.notify import Notifier

    state = Path(sys.argv[1])
    notifier = Notifier.from_environment()
    store = FdStore.from_environment(notifier.address)
    env = {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID")}
    sock = store.take("ep-test")
    info = {"pid": os.getpid(), "passed": sock is not None, "env": env}
    if sock is None:
        sock = socket.create_server(("127.0.0.1", 0))
        store.keep("ep-test", sock.fileno())
    else:
        info["fd"] = sock.fileno()
        info["cloexec"] = not os.get_inheritable(sock.fileno())
    info["port"] = sock.getsockname()[1]
    store.release_unclaimed()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def serve(conn):
        with conn:
            line = conn.makefile().readline().split()
            if line and line[0] == "slow":
                time.sleep(float(line[1]))
            conn.sendall(f"{os.getpid()}\\n".encode())

    n = len(list(state.glob("run-*.json")))
    (state / f"run-{n}.json").write_text(json.dumps(info))
    notifier.ready()
    sock.settimeout(0.05)
    threads = []
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        t = threading.Thread(target=serve, args=(conn,))
        t.start()
        threads.append(t)
    notifier.stopping()
    sock.close()  # our copy: the supervisor's keeps the port listening
    for t in threads:
        t.join(timeout=10)
    """
)


@pytest.fixture
def state() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="berth-sv-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def supervisor(state: Path) -> Iterator[subprocess.Popen[bytes]]:
    child = state / "child.py"
    child.write_text(CHILD)
    code = (
        "import sys; from pathlib import Path; from daemon.system.supervise import Supervisor; "
        f"sys.exit(Supervisor([sys.executable, {str(child)!r}, {str(state)!r}], "
        f"Path({str(state)!r})).run())"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for run in state.glob("run-*.json"):  # any child left: ours, by PID
            pid = json.loads(run.read_text())["pid"]
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_info(state: Path, n: int) -> dict[str, object]:
    path = state / f"run-{n}.json"
    wait_until(f"child run {n}", path.exists, 15)
    return dict(json.loads(path.read_text()))


def ask(port: int, line: str = "hi") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(line.encode() + b"\n")
    return sock


def answer(sock: socket.socket) -> int:
    with sock:
        return int(sock.makefile().readline())


def test_a_killed_child_is_restarted_with_its_socket_and_nothing_is_refused(
    state: Path, supervisor: subprocess.Popen[bytes]
) -> None:
    first = run_info(state, 0)
    port = int(str(first["port"]))
    assert first["passed"] is False
    assert answer(ask(port)) == first["pid"]
    os.kill(int(str(first["pid"])), signal.SIGKILL)
    waiting = ask(port)  # nobody accepts now: the backlog of the supervisor's copy holds it
    second = run_info(state, 1)
    assert answer(waiting) == second["pid"]
    assert second["passed"] is True and second["port"] == port
    assert second["fd"] == 3 and second["cloexec"] is True
    assert second["env"] == {"LISTEN_FDS": None, "LISTEN_FDNAMES": None, "LISTEN_PID": None}
    assert (state / "supervise.sock").exists()


def test_a_planned_restart_drains_the_old_child_while_the_new_one_answers(
    state: Path, supervisor: subprocess.Popen[bytes]
) -> None:
    first = run_info(state, 0)
    port = int(str(first["port"]))
    assert answer(ask(port)) == first["pid"]
    slow = ask(port, "slow 2")
    time.sleep(0.2)  # the old child has accepted it (it is in its thread, sleeping)
    supervisor.send_signal(signal.SIGUSR2)
    second = run_info(state, 1)
    started = time.monotonic()
    fresh = answer(ask(port))  # a new connection: the new child (the old one stopped accepting)
    assert fresh == second["pid"]
    assert answer(slow) == first["pid"]  # in flight: finished by the old one
    assert time.monotonic() - started < 5
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=15) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not (state / "supervise.sock").exists()
