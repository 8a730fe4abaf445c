"""Helpers for berthd's restarts (issue 15): a client load that tells a refused connection
from a dropped one, and the two managers that keep berthd's sockets: `berthd --supervise`,
and this test playing systemd (`FakeSystemd`: it reads FDSTORE=1 on its own NOTIFY_SOCKET
and starts berthd with LISTEN_FDS, as systemd does where it is not PID 1 here).

Used by tests/e2e/test_berthd_restarts.py and bench/restarts.py. Every loop is bounded
(request count and wall clock); every process is ended by PID.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from daemon.system.supervise import receive
from tests.e2e.berthd_process import BIN, START_TIMEOUT, Berthd, wait_until

REQUEST_TIMEOUT = 60.0  # a request may wait in the backlog while berthd starts again
# Runs berthd with the descriptors named in argv[1] at 3.. and LISTEN_PID = its own PID
# (the exec keeps the PID): what systemd does between its fork and exec.
_WRAPPER = (
    "import json, os, sys; from daemon.system.supervise import exec_with_fds; "
    "exec_with_fds(sys.argv[2:], dict(os.environ), json.loads(sys.argv[1]))"
)


@dataclass
class Outcome:
    sent: float
    done: float
    status: int | None  # None: no answer
    kind: str  # "ok", "status", "refused", "dropped", "timeout", "error"
    retried: bool = False
    error: str = ""  # the exception, for a request that got no answer


@dataclass
class RestartLoad:
    """`threads` clients sending requests one after another on 127.0.0.1:`port` until
    stopped or capped. `keep_alive`: one connection per client, else one per request.
    `post`: every other request is a POST with a body (not idempotent: never retried).

    A GET whose connection is cut before its whole answer came (berthd killed while it was
    in flight) is sent again once, on a new connection, as HTTP clients may for an
    idempotent request (RFC 9110 9.2.2); it counts as `retried`, and as failed only if the
    second try fails too. A refused connection is never retried: it is what issue 15
    removes."""

    port: int
    path: str = "/cgi-bin/echo"
    threads: int = 8
    keep_alive: bool = False
    post: bool = False
    max_seconds: float = 150.0
    max_requests_per_thread: int = 50_000
    outcomes: list[Outcome] = field(default_factory=list)
    stale: int = 0  # kept-alive connections found closed by the server, opened again
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> RestartLoad:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=REQUEST_TIMEOUT + 10)
        assert not any(t.is_alive() for t in self._workers), "a load thread did not stop"

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: http.client.HTTPConnection | None = None
        for n in range(self.max_requests_per_thread):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            method = "POST" if self.post and n % 2 else "GET"
            sent = time.monotonic()
            outcome, conn = self._once(conn, method, index, n, sent)
            if outcome.kind == "dropped" and method == "GET":
                outcome, conn = self._once(None, method, index, n, sent)
                outcome.retried = True
            with self._lock:
                self.outcomes.append(outcome)
        if conn is not None:
            conn.close()

    def _once(
        self,
        conn: http.client.HTTPConnection | None,
        method: str,
        index: int,
        n: int,
        sent: float,
    ) -> tuple[Outcome, http.client.HTTPConnection | None]:
        fresh = conn is None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        headers = {} if self.keep_alive else {"Connection": "close"}
        body = f"client {index} request {n}".encode() if method == "POST" else None
        try:
            conn.request(method, f"{self.path}?t={index}&n={n}", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except ConnectionRefusedError:
            conn.close()
            return Outcome(sent, time.monotonic(), None, "refused"), None
        except TimeoutError:
            conn.close()
            return Outcome(sent, time.monotonic(), None, "timeout"), None
        except (
            http.client.RemoteDisconnected,
            http.client.IncompleteRead,  # cut in the middle of its answer
            ConnectionResetError,
            BrokenPipeError,
        ) as exc:
            conn.close()
            if not fresh and isinstance(exc, http.client.RemoteDisconnected):
                # A kept-alive connection the server closed while idle: a new one, at once
                # (what every keep-alive client does; not a failure of the request).
                with self._lock:
                    self.stale += 1
                return self._once(None, method, index, n, sent)
            return Outcome(sent, time.monotonic(), None, "dropped", error=repr(exc)), None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            kind = "refused" if getattr(exc, "errno", None) == errno.ECONNREFUSED else "error"
            return Outcome(sent, time.monotonic(), None, kind, error=repr(exc)), None
        done = time.monotonic()
        ok = response.status == 200 and (body is None or body in data)
        keep = self.keep_alive and not response.will_close
        if not keep:
            conn.close()
        return Outcome(sent, done, response.status, "ok" if ok else "status"), (
            conn if keep else None
        )

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(o.kind for o in self.outcomes)

    def retried(self) -> int:
        with self._lock:
            return sum(o.retried for o in self.outcomes)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.kind != "ok"]

    def first_ok_after(self, t: float) -> float | None:
        """When the first request sent after `t` was answered 200 (monotonic): after a
        kill, only the new berthd can have answered it."""
        with self._lock:
            times = [o.done for o in self.outcomes if o.kind == "ok" and o.sent > t]
        return min(times, default=None)

    def longest_wait(self, start: float, end: float) -> float:
        """The longest any request sent between `start` and `end` took to be answered 200
        (a retried one counted from its first send): what a client saw of a restart."""
        with self._lock:
            waits = [o.done - o.sent for o in self.outcomes if start <= o.sent <= end]
        return max(waits, default=0.0)

    def wait_ok_after(self, t: float, timeout: float = 60.0) -> float:
        found: list[float] = []

        def served() -> bool:
            done = self.first_ok_after(t)
            if done is not None:
                found.append(done)
            return done is not None

        wait_until("a request answered 200 after the restart", served, timeout, 0.02)
        return found[-1]


def children_running(parent: int, marker: bytes) -> list[int]:
    """PIDs of `parent`'s live children whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == parent and fields[0] != "Z" and marker in cmdline:
            found.append(int(entry.name))
    return found


def supervised_child(daemon: Berthd, other_than: int | None = None, timeout: float = 30) -> int:
    """The PID of the berthd that `berthd --supervise` (daemon.proc) runs now."""
    assert daemon.proc is not None
    found: list[int] = []

    def one() -> bool:
        assert daemon.proc is not None
        pids = [p for p in children_running(daemon.proc.pid, b"daemon.main") if p != other_than]
        found[:] = pids
        return len(pids) == 1

    wait_until("the supervised berthd", one, timeout, 0.02)
    return found[0]


def wait_gone(pid: int, timeout: float = 60) -> None:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child: reap it
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            return False

    wait_until(f"process {pid} to end", gone, timeout, 0.02)


class FakeSystemd:
    """This test as systemd for one berthd: its NOTIFY_SOCKET (read in a thread: FDSTORE,
    FDSTOREREMOVE, READY, STOPPING, from the main PID only) and its fd store, passed
    again by LISTEN_FDS at each start."""

    def __init__(self, daemon: Berthd, notify_path: Path) -> None:
        self.daemon = daemon
        self.path = notify_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(notify_path))
        self.sock.settimeout(0.2)
        self.fds: dict[str, int] = {}
        self.messages: list[tuple[int | None, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="fake-systemd", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                fields, fds, pid = receive(self.sock)
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.messages.append((pid, fields))
                main = self.daemon.proc.pid if self.daemon.proc is not None else None
                if pid != main:  # NotifyAccess=main
                    for fd in fds:
                        os.close(fd)
                    continue
                name = fields.get("FDNAME", "stored")
                if fields.get("FDSTOREREMOVE") == "1" and name in self.fds:
                    os.close(self.fds.pop(name))
                if fields.get("FDSTORE") == "1" and fds:
                    if name in self.fds:
                        os.close(self.fds.pop(name))
                    self.fds[name] = fds.pop(0)
                for fd in fds:
                    os.close(fd)

    def start(self) -> None:
        """Start berthd (daemon.proc) with the store's sockets; wait until it answers."""
        daemon = self.daemon
        with self._lock:
            names = list(self.fds)
            kept = [self.fds[n] for n in names]
            env = {**os.environ, **daemon.env, "NOTIFY_SOCKET": str(self.path)}
            if kept:
                env["LISTEN_FDS"] = str(len(kept))
                env["LISTEN_FDNAMES"] = ":".join(names)
            argv = [
                str(BIN / "berthd"),
                "--state-dir",
                str(daemon.state_dir),
                "--socket",
                str(daemon.socket),
                *(["--podman-url", daemon.podman_url] if daemon.podman_url else []),
                *daemon.extra_args,
            ]
            with daemon.log_path.open("ab") as log:
                daemon.proc = subprocess.Popen(
                    [sys.executable, "-c", _WRAPPER, json.dumps(kept), *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=kept,
                )
        wait_until("berthd to answer `berth status`", daemon._answers, START_TIMEOUT)

    def said(self, pid: int, key: str) -> bool:
        with self._lock:
            return any(p == pid and fields.get(key) == "1" for p, fields in self.messages)

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=5)
        self.sock.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def kill_now(pid: int) -> float:
    """SIGKILL `pid`; the monotonic time it was sent."""
    t = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return t
