"""`berthd --supervise`: systemd's part in berthd's restarts, for a berthd without systemd.

The supervisor is a small process (no trio, no store, no Podman) that holds what must
outlive the daemon: the daemon's listening sockets. It speaks systemd's protocols from
systemd's side, so that berthd itself does the same under both:
- It makes a private notify socket (AF_UNIX datagram, `supervise.sock` in the state dir,
  or an abstract one when that path is too long for AF_UNIX) and starts berthd as its
  child with `NOTIFY_SOCKET` naming it.
- It reads the child's messages: `FDSTORE=1` + `FDNAME=` with the descriptor as
  SCM_RIGHTS (kept, one per name: a new descriptor under a known name replaces the old),
  `FDSTOREREMOVE=1` + `FDNAME=` (closed), `READY=1`, `STOPPING=1`. As `NotifyAccess=main`,
  only the current child is believed (SCM_CREDENTIALS names the sender).
- A child it starts gets the kept sockets as descriptors 3.. with `LISTEN_FDS`,
  `LISTEN_FDNAMES` and `LISTEN_PID` (set after the fork, as systemd does).

Restarts:
- The child exits while nobody asked (a crash, `kill -9`, the OOM killer): it is started
  again with the sockets, which kept listening, so clients wait in the backlog rather than
  being refused. A child that had said READY=1, or was killed by a signal, is restarted at
  once; one that exited with a status before READY=1 (a start that fails) is started again
  after a back-off that doubles (to `MAX_BACKOFF`). More than
  `MAX_RESTARTS` restarts within `RESTART_WINDOW` seconds: the supervisor gives up and
  exits 1 (systemd's StartLimitBurst).
- SIGUSR2 (a planned restart, an upgrade): the child gets SIGTERM (it stops accepting,
  closing its copies of the listeners, and drains in-flight requests up to its drain
  timeout); once it said STOPPING=1 (or `STOPPING_WAIT` passed, or it exited) the new
  child starts with the sockets and accepts the new connections while the old one drains.
  Waiting for STOPPING=1 keeps the two from reconciling side by side: berthd says it as
  it begins to stop, right before its reconcile rounds are cancelled, and a new berthd
  takes a second or more before its first round.
- SIGTERM / SIGINT: forwarded to the child, which drains and exits; the supervisor then
  exits with the child's status (and its sockets close). SIGHUP: forwarded.

Invariants: every descriptor the supervisor holds is close-on-exec except in the child it
starts, where exactly the kept sockets sit at 3..; it ends only its own children, by PID.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("berthd.supervise")

NOTIFY_SOCKET_NAME = "supervise.sock"
MAX_FDS = 512  # FileDescriptorStoreMax= of systemd/berthd.service
MAX_RESTARTS = 30
RESTART_WINDOW = 60.0
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
STOPPING_WAIT = 5.0
_SUN_PATH_MAX = 107
_DATAGRAM_MAX = 4096
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def parse_message(data: bytes) -> dict[str, str]:
    """sd_notify's `KEY=VALUE` lines; a line without '=' is ignored."""
    fields: dict[str, str] = {}
    for line in data.decode(errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


def receive(sock: socket.socket) -> tuple[dict[str, str], list[int], int | None]:
    """One notify datagram: its fields, the descriptors it carried, the sender's PID."""
    fds = array.array("i")
    ancillary = socket.CMSG_SPACE(MAX_FDS * fds.itemsize) + socket.CMSG_SPACE(_CREDS.size)
    data, ancdata, _flags, _addr = sock.recvmsg(_DATAGRAM_MAX, ancillary)
    pid: int | None = None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = _CREDS.unpack(payload[: _CREDS.size])[0]
    for fd in fds:
        os.set_inheritable(fd, False)
    return parse_message(data), list(fds), pid


def notify_address(state_dir: Path) -> str:
    """The notify socket's address: a file in the state dir, or an abstract name."""
    path = str(state_dir / NOTIFY_SOCKET_NAME)
    if len(path.encode()) <= _SUN_PATH_MAX:
        return path
    return f"@berth-supervise-{os.getpid()}"


@dataclass
class Supervisor:
    """Runs `argv` (berthd) as its child; see the module docstring."""

    argv: Sequence[str]
    state_dir: Path
    fds: dict[str, int] = field(default_factory=dict)  # name -> our kept descriptor
    child: int | None = None
    child_ready: bool = False
    stopping: bool = False  # a stop was asked: the child's exit ends the supervisor
    restarts: list[float] = field(default_factory=list)
    backoff: float = FIRST_BACKOFF
    old_children: set[int] = field(default_factory=set)  # draining after a handover
    exit_status: int = 0

    def __post_init__(self) -> None:
        self.address = notify_address(self.state_dir)
        self._start_at: float | None = None  # when to start the next child
        self._handover_deadline: float | None = None  # waiting for the old one's STOPPING=1
        self._stopping_pids: set[int] = set()

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        notify = self._open_notify_socket()
        wake_r, wake_w = socket.socketpair()
        for s in (wake_r, wake_w):
            s.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD)
        previous = {signum: signal.signal(signum, lambda *_: None) for signum in handled}
        selector = selectors.DefaultSelector()
        selector.register(notify, selectors.EVENT_READ, "notify")
        selector.register(wake_r, selectors.EVENT_READ, "signal")
        try:
            self._start_child()
            while self.child is not None or self._start_at is not None or self.old_children:
                for key, _ in selector.select(self._timeout()):
                    if key.data == "notify":
                        self._read_messages(notify)
                    else:
                        self._read_signals(wake_r)
                self._reap()
                self._due()
            return self.exit_status
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            selector.close()
            for s in (notify, wake_r, wake_w):
                s.close()
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()
            if not self.address.startswith("@"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.address)

    def _open_notify_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        if self.address.startswith("@"):
            sock.bind("\0" + self.address[1:])
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
            sock.bind(self.address)
            os.chmod(self.address, 0o600)
        return sock

    def _timeout(self) -> float | None:
        deadlines = [d for d in (self._start_at, self._handover_deadline) if d is not None]
        if not deadlines:
            return 1.0  # SIGCHLD also wakes the loop; this only bounds a lost one
        return max(0.0, min(deadlines) - time.monotonic())

    def _due(self) -> None:
        now = time.monotonic()
        if self._handover_deadline is not None and now >= self._handover_deadline:
            log.warning("supervise: the old berthd did not say STOPPING=1; starting anyway")
            self._handover_deadline = None
            self._start_at = now
        if self._start_at is not None and now >= self._start_at and not self.stopping:
            self._start_at = None
            self._start_child()
        elif self.stopping:
            self._start_at = None

    # -- messages and signals ----------------------------------------------------------

    def _read_messages(self, sock: socket.socket) -> None:
        while True:
            try:
                fields, fds, pid = receive(sock)
            except BlockingIOError:
                return
            self._handle(fields, fds, pid)

    def _handle(self, fields: dict[str, str], fds: list[int], pid: int | None) -> None:
        if fields.get("STOPPING") == "1" and pid is not None:
            self._stopping_pids.add(pid)
            if self._handover_deadline is not None and pid in self.old_children:
                self._handover_deadline = None
                self._start_at = time.monotonic()
        if pid is None or pid != self.child:  # NotifyAccess=main
            for fd in fds:
                os.close(fd)
            return
        if fields.get("READY") == "1" and not self.child_ready:
            self.child_ready = True
            self.backoff = FIRST_BACKOFF
            log.info("supervise: berthd %d is ready", pid)
        name = fields.get("FDNAME", "stored")
        if fields.get("FDSTOREREMOVE") == "1":
            old = self.fds.pop(name, None)
            if old is not None:
                os.close(old)
        if fields.get("FDSTORE") == "1":
            for fd in fds[:1]:
                self._keep(name, fd)
            fds = fds[1:]
        for fd in fds:  # extra descriptors, or some sent without FDSTORE=1
            os.close(fd)

    def _keep(self, name: str, fd: int) -> None:
        old = self.fds.get(name)
        if old is not None and _same_file(old, fd):
            os.close(fd)
            return
        if old is not None:
            os.close(old)
        elif len(self.fds) >= MAX_FDS:
            log.warning("supervise: %d descriptors kept already; not keeping %s", MAX_FDS, name)
            os.close(fd)
            return
        self.fds[name] = fd

    def _read_signals(self, wake: socket.socket) -> None:
        try:
            data = wake.recv(256)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
                self._start_at = None
                self._handover_deadline = None
                self._signal_child(signum)
            elif signum == signal.SIGHUP:
                self._signal_child(signum)
            elif signum == signal.SIGUSR2:
                self._hand_over()

    def _signal_child(self, signum: int) -> None:
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signum)

    def _hand_over(self) -> None:
        """SIGUSR2: the running child drains; a new one starts once it said STOPPING=1."""
        if self.stopping or self.child is None or self._handover_deadline is not None:
            return
        old = self.child
        log.info("supervise: planned restart: berthd %d drains, a new one takes over", old)
        self.old_children.add(old)
        self.child = None
        self._handover_deadline = time.monotonic() + STOPPING_WAIT
        if old in self._stopping_pids:
            self._handover_deadline = None
            self._start_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGTERM)

    # -- children ----------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            self._stopping_pids.discard(pid)
            if pid in self.old_children:
                self.old_children.discard(pid)
                log.info("supervise: the old berthd %d has drained (exit %d)", pid, code)
                if self._handover_deadline is not None:  # it exited without STOPPING=1
                    self._handover_deadline = None
                    self._start_at = time.monotonic()
                continue
            if pid != self.child:
                continue
            self.child = None
            if self.stopping:
                self.exit_status = code if code >= 0 else 128 - code
                continue
            self._restart_after_exit(pid, code)

    def _restart_after_exit(self, pid: int, code: int) -> None:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW]
        if len(self.restarts) >= MAX_RESTARTS:
            log.error(
                "supervise: berthd exited %d times within %gs; giving up",
                len(self.restarts) + 1,
                RESTART_WINDOW,
            )
            self.exit_status = 1
            self.stopping = True
            return
        self.restarts.append(now)
        # A start that fails (an exit status before READY=1: bad settings, no Podman) is
        # tried again after a back-off; a berthd that was serving, or that something
        # killed (kill -9, the OOM killer), at once.
        failed_start = not self.child_ready and code > 0
        delay = self.backoff if failed_start else 0.0
        self.backoff = min(self.backoff * 2, MAX_BACKOFF) if failed_start else FIRST_BACKOFF
        how = f"signal {-code}" if code < 0 else f"status {code}"
        log.warning("supervise: berthd %d exited (%s); starting it again in %.1fs", pid, how, delay)
        self._start_at = now + delay

    def _start_child(self) -> None:
        names = list(self.fds)
        kept = [self.fds[name] for name in names]
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = self.address
        for key in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"):
            env.pop(key, None)
        if kept:
            env["LISTEN_FDS"] = str(len(kept))
            env["LISTEN_FDNAMES"] = ":".join(names)
        pid = os.fork()
        if pid == 0:  # the child: nothing here may raise into the supervisor's code
            try:
                exec_with_fds(list(self.argv), env, kept)
            finally:
                os._exit(127)
        self.child = pid
        self.child_ready = False
        log.info("supervise: started berthd %d with %d sockets", pid, len(kept))


def exec_with_fds(argv: list[str], env: dict[str, str], kept: list[int]) -> None:
    """Exec `argv` with `kept` at descriptors 3.. (every other one above 2 closed) and
    LISTEN_PID set to this process: in a forked child, as systemd does, or in a wrapper
    process that execs berthd (the tests that play systemd)."""
    first = 3
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    # Out of the way first: a kept descriptor may sit where another must go.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, first + len(kept)) for fd in kept]
    for i, fd in enumerate(high):
        os.dup2(fd, first + i)  # dup2 leaves the new descriptor inheritable
    os.closerange(first + len(kept), os.sysconf("SC_OPEN_MAX"))
    if kept:
        env["LISTEN_PID"] = str(os.getpid())
    os.execve(argv[0], argv, env)


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def child_argv(argv: Sequence[str]) -> list[str]:
    """berthd's own command line without `--supervise`, run by this Python."""
    return [sys.executable, "-m", "daemon.main", *(a for a in argv if a != "--supervise")]


def supervise(argv: Sequence[str], state_dir: Path) -> int:
    return Supervisor(child_argv(argv), state_dir).run()
