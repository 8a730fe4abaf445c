"""berthd's own runs (`berthd_runs`): when each started, how it stopped, how long it was down.

Theory of operation. A starting berthd calls `begin_run`: in one transaction, each earlier
run still marked `running` whose process is gone (its pid no longer names a process that
started when that one did: a `kill -9`, a crash, the watchdog's SIGABRT, a power cut) is
marked `unclean`, ended at its last heartbeat; then the new run's row goes in. The run
feeds `alive_at` every `HEARTBEAT` seconds (one small UPDATE), so an unclean stop is known
to within a heartbeat, and how long berthd was down (from the last sign of life to this
start) is at most one heartbeat too long. A clean stop (`end_run`) sets `ended = 'clean'`.
A run still `running` whose process lives is another berthd on this state dir: it is left
alone (that berthd keeps its socket; this one will refuse to start).

`RunMarker` is the daemon's handle on its own row (begin, heartbeat, end, through
`StoreAccess`, off the trio thread). Only the newest `KEEP` runs are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

import psutil  # type: ignore[import-untyped]  # psutil ships no type information
import trio

from daemon.store.access import StoreAccess
from daemon.store.database import Store

HEARTBEAT = 30.0
KEEP = 100


@dataclass(frozen=True)
class UncleanStop:
    at: str  # RFC 3339: the stopped run's last sign of life
    down_s: float  # from then until the next berthd started (at most HEARTBEAT too long)
    pid: int
    version: str

    def to_json(self) -> dict[str, object]:
        return {"at": self.at, "down_s": round(self.down_s, 1), "pid": self.pid}


@dataclass(frozen=True)
class RunStart:
    """What a starting berthd knows about the run before it (the `started` event)."""

    run_id: int
    started_at: str
    previous: str | None  # None (the first start), "clean", "unclean" or "running"
    previous_ended_at: str | None
    down_s: float | None  # since the previous run ended (unclean: its last heartbeat)
    previous_pid: int | None = None

    def message(self, pid: int, version: str) -> str:
        head = f"berthd {version} started (pid {pid})"
        if self.previous is None:
            return f"{head}; first start on this state dir"
        if self.previous == "running":
            return (
                f"{head} while the berthd before it (pid {self.previous_pid}) still runs "
                "(a planned restart, or a second berthd on this state dir)"
            )
        down = f"down {self.down_s:.1f}s" if self.down_s is not None else "down for a while"
        if self.previous == "clean":
            return f"{head} after a clean stop at {self.previous_ended_at}; {down}"
        return (
            f"{head} after an unclean stop (berthd was killed or crashed; last alive at "
            f"{self.previous_ended_at}); {down} at most"
        )


def process_started(pid: int) -> float | None:
    """When process `pid` started (psutil's create_time), None when there is none."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _gone(pid: int, started: float | None) -> bool:
    now_started = process_started(pid)
    if now_started is None:
        return True
    return started is not None and abs(now_started - started) > 0.5  # the pid was reused


def _seconds_between(earlier: str, later: str) -> float:
    def parse(s: str) -> datetime:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    return max(0.0, (parse(later) - parse(earlier)).total_seconds())


def begin_run(store: Store, pid: int, pid_started: float | None, version: str) -> RunStart:
    with store._write():
        now = store._stamp()
        for row in list(store._db.query("SELECT * FROM berthd_runs WHERE ended = 'running'")):
            if row["pid"] == pid or _gone(row["pid"], row["pid_started"]):
                store._db.execute(
                    "UPDATE berthd_runs SET ended = 'unclean', ended_at = alive_at "
                    "WHERE run_id = ?",
                    [row["run_id"]],
                )
        last = store._first("SELECT * FROM berthd_runs ORDER BY run_id DESC LIMIT 1", [])
        cursor = store._db.execute(
            "INSERT INTO berthd_runs (pid, pid_started, version, started_at, alive_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [pid, pid_started, version, now, now],
        )
        assert cursor.lastrowid is not None
        store._db.execute("DELETE FROM berthd_runs WHERE run_id <= ?", [cursor.lastrowid - KEEP])
    if last is None:
        return RunStart(cursor.lastrowid, now, None, None, None)
    if last["ended"] == "running":
        return RunStart(cursor.lastrowid, now, "running", None, None, last["pid"])
    ended_at = last["ended_at"] or last["alive_at"]
    down = _seconds_between(ended_at, now)
    return RunStart(cursor.lastrowid, now, last["ended"], ended_at, down, last["pid"])


def heartbeat(store: Store, run_id: int) -> None:
    store._db.execute(
        "UPDATE berthd_runs SET alive_at = ? WHERE run_id = ?", [store._stamp(), run_id]
    )


def end_run(store: Store, run_id: int) -> None:
    now = store._stamp()
    store._db.execute(
        "UPDATE berthd_runs SET ended = 'clean', ended_at = ?, alive_at = ? WHERE run_id = ?",
        [now, now, run_id],
    )


def last_unclean_stop(store: Store) -> UncleanStop | None:
    """The newest run that stopped uncleanly, and how long until the next one started."""
    row = store._first(
        "SELECT r.*, (SELECT MIN(n.started_at) FROM berthd_runs n WHERE n.run_id > r.run_id) "
        "AS next_started FROM berthd_runs r WHERE r.ended = 'unclean' "
        "ORDER BY r.run_id DESC LIMIT 1",
        [],
    )
    if row is None:
        return None
    at = row["ended_at"] or row["alive_at"]
    down = _seconds_between(at, row["next_started"]) if row["next_started"] else 0.0
    return UncleanStop(at, down, row["pid"], row["version"])


class RunMarker:
    """This berthd's row: begun at start, fed every `every` seconds, ended on a clean stop."""

    def __init__(self, store: StoreAccess, version: str, *, pid: int | None = None) -> None:
        self._store = store
        self.version = version
        self.pid = os.getpid() if pid is None else pid
        self.start: RunStart | None = None
        self.started_clock: float | None = None  # trio clock at begin, for the uptime

    def __repr__(self) -> str:
        run = self.start.run_id if self.start else None
        return f"<RunMarker run={run} pid={self.pid}>"

    async def begin(self) -> RunStart:
        pid_started = await trio.to_thread.run_sync(process_started, self.pid)
        self.start = await self._store.call(begin_run, self.pid, pid_started, self.version)
        self.started_clock = trio.current_time()
        return self.start

    def uptime(self) -> float | None:
        if self.started_clock is None:
            return None
        return trio.current_time() - self.started_clock

    async def heartbeat_forever(self, every: float = HEARTBEAT) -> None:
        assert self.start is not None
        while True:
            await trio.sleep(every)
            await self._store.call(heartbeat, self.start.run_id)

    async def end(self) -> None:
        if self.start is not None:
            with trio.CancelScope(shield=True):
                await self._store.call(end_run, self.start.run_id)
