"""Which Podman berthd talks to, and the embedded `podman system service` when it must own one.

`PodmanService(podman_url, state_dir).run()` is started with `nursery.start`, reports the URL
to use (DESIGN.md, "berthd — contract") and then runs until cancelled:
1. an explicit `podman_url` is used as is; if it does not answer, `run` fails at once;
2. otherwise the system socket (`unix:///run/podman/podman.sock`) if it answers;
3. otherwise `unix://{state_dir}/podman.sock`: reused if something already answers there (a
   service left by a berthd that was `kill -9`ed), else started as a child process. A
   reused service that the state dir's record (`service_record`) names is taken over: this
   berthd ends it when it stops, and starts its own in its place if it ends before.

Invariants:
- Before `started`, failing is a startup error (`PodmanUnavailable`, one line saying why):
  berthd cannot start without Podman. After it, `run` never raises (but for cancellation):
  Podman going away is a fault berthd lives through. Its calls fail as
  `TemporaryRuntimeError` meanwhile and are retried; the endpoints do not need Podman.
- The embedded child that exits, fails to start, does not answer within `start_timeout`, or
  stops answering (`WATCH_MISSES` pings in a row, one every `watch_period`) is ended and
  started again after a back-off: `BACKOFF_FIRST` doubling up to `BACKOFF_MAX`, from the
  beginning again once a child has answered for `BACKOFF_RESET_AFTER`. Each exit with its
  restart delay, and each child answering again, is said (`on_event`, else the log).
- A service berthd did not start (explicit, system, reused) is only watched: that it stops
  answering is said once, and that it answers again.
- Only a child that this object started, or the service it took over (a process the record
  names, checked by pid, start time and command line), is ever ended (SIGTERM, then SIGKILL
  after a bound), and always when `run` is cancelled. Any other reused service, and the
  system one, is left alone. Each start, takeover and end is said, with the pid.
- Containers do not depend on the service (conmon is their parent), so stopping and starting
  the service, or berthd, leaves them running.
- The child runs in its own session, so a Ctrl-C meant for berthd does not reach it. It writes
  straight to `podman-service.log` (O_APPEND), not through a pipe to berthd: a service that
  outlives a crashed berthd must not die of a broken pipe. So the log is rotated by copy and
  truncate (logrotate's `copytruncate`) once it passes `log_max_bytes`, one old file kept
  (`podman-service.log.1`); a line written between the copy and the truncate is lost.
- "Answers" means GET /_ping gets 200 within `PING_TIMEOUT`, asked with berthd's one HTTP
  client helper (`daemon.http.client`); anything else (refused, wedged, not HTTP) is "no".
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from daemon.http import client
from daemon.runtime import service_record
from daemon.runtime.service_record import ServiceProcess

log = logging.getLogger("berthd.podman")

SYSTEM_URL = "unix:///run/podman/podman.sock"
# A healthy service answers /_ping in milliseconds; a wedged one is as good as none.
PING_TIMEOUT = 2.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 60.0
WATCH_PERIOD = 5.0
# A service busy with a big pull may miss a ping; three in a row (~15 s) is not busy.
WATCH_MISSES = 3
LOG_MAX_BYTES = 10 * 1024 * 1024


class PodmanUnavailable(Exception):
    """No Podman API service answers where berthd was told (or decided) to look."""


class ServiceEvents(Protocol):
    """Where the service's exits and restarts are said (berthd: its event log)."""

    async def __call__(self, message: str, *, level: int) -> object: ...


async def podman_answers(url: str) -> bool:
    """True when a Podman API service answers GET /_ping with 200 at this URL (unix:// or
    tcp://) within PING_TIMEOUT; only the response head is read."""
    address = client.address_of_url(url)
    if address is None:
        return False
    with trio.move_on_after(PING_TIMEOUT):
        try:
            async with client.request(address, "GET", "/_ping", [("Host", "podman")]) as reply:
                return reply.status == 200
        except client.HttpClientError:
            return False
    return False


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


class PodmanService:
    def __init__(
        self,
        podman_url: str | None,
        state_dir: Path,
        *,
        system_url: str = SYSTEM_URL,
        podman_binary: str = "podman",
        start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        watch_period: float = WATCH_PERIOD,
        log_max_bytes: int = LOG_MAX_BYTES,
        on_event: ServiceEvents | None = None,
        berthd_pid: int | None = None,
    ) -> None:
        self.explicit_url = podman_url
        self.state_dir = state_dir
        self.system_url = system_url
        self.podman_binary = podman_binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.watch_period = watch_period
        self.log_max_bytes = log_max_bytes
        self.on_event = on_event
        self.berthd_pid = os.getpid() if berthd_pid is None else berthd_pid  # the record's owner
        self.socket_path = state_dir / "podman.sock"
        self.log_path = state_dir / "podman-service.log"
        self.record_path = state_dir / service_record.RECORD_NAME
        self.url: str | None = None
        # "explicit" | "system" | "reused" | "embedded": where `url` came from.
        self.source: str | None = None
        self._process: trio.Process | None = None
        self.taken_over: ServiceProcess | None = None  # a crashed berthd's, now ours to end
        # Children left running for a berthd that took them over (a planned restart): held
        # here so that they are not collected as garbage while they run.
        self.left_running: list[trio.Process] = []

    def __repr__(self) -> str:
        return f"<PodmanService url={self.url!r} source={self.source} child_pid={self.child_pid}>"

    @property
    def child_pid(self) -> int | None:
        """The PID of the `podman system service` this object started, while it runs."""
        return self._process.pid if self._process is not None else None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        if self.explicit_url is not None:
            if not await podman_answers(self.explicit_url):
                raise PodmanUnavailable(f"no Podman API service answers at {self.explicit_url}")
            self._ready(self.explicit_url, "explicit", task_status)
        elif await podman_answers(self.system_url):
            self._ready(self.system_url, "system", task_status)
        else:
            own_url = f"unix://{self.socket_path}"
            if not await podman_answers(own_url):
                await self._supervise(own_url, task_status)
                return
            left = await trio.to_thread.run_sync(
                service_record.left_running, self.record_path, own_url
            )
            previous = left.owner if left is not None else None
            if left is not None:  # ours from now on, before anyone is told of the URL
                left = self.taken_over = await trio.to_thread.run_sync(
                    service_record.take_over, self.record_path, left, self.berthd_pid
                )
            self._ready(own_url, "reused", task_status)
            if left is not None:
                await self._take_over(own_url, left, previous)
                return
            await self._say(
                f"podman service at {own_url} reused; no record names its process, so it is "
                "left running when berthd stops",
                logging.INFO,
            )
        await self._watch_theirs()

    def _ready(self, url: str, source: str, task_status: trio.TaskStatus[str]) -> None:
        self.url, self.source = url, source
        log.info("podman: using %s (%s)", url, source)
        task_status.started(url)

    async def _say(self, message: str, level: int) -> None:
        if self.on_event is not None:
            await self.on_event(message, level=level)
        else:
            log.log(level, message)

    # -- a service berthd did not start ----------------------------------------------------

    async def _watch_theirs(self) -> None:
        """Say once when the service stops answering, and when it answers again."""
        assert self.url is not None
        misses = 0
        while True:
            await trio.sleep(self.watch_period)
            if self.source == "reused":  # it writes the log a berthd before this one opened
                await self._rotate_log()
            if await podman_answers(self.url):
                if misses >= WATCH_MISSES:
                    await self._say(f"podman service at {self.url} answering again", logging.INFO)
                misses = 0
                continue
            misses += 1
            if misses == WATCH_MISSES:
                await self._say(
                    f"podman service at {self.url} ({self.source}) does not answer; berthd did "
                    "not start it, so it waits for it (Podman calls fail as temporary "
                    "meanwhile, endpoints keep serving)",
                    logging.WARNING,
                )

    # -- a service a crashed berthd left ---------------------------------------------------

    async def _take_over(self, url: str, left: ServiceProcess, previous: int | None) -> None:
        """Watch the service a crashed berthd left as if this one had started it: end it when
        berthd stops, and start an embedded one in its place if it ends or stops answering.
        If the berthd that owned it (`previous`) still lives when this one stops (it is the
        old one of a planned restart, or this one is a second berthd that could not start),
        the service is handed back to it instead."""
        await self._say(
            f"podman service (pid {left.pid}) left by an earlier berthd reused on {url}; "
            "taken over: this berthd ends it when it stops",
            logging.INFO,
        )
        stopping = False
        try:
            why = await self._watch_taken_over(url, left)
        except trio.Cancelled:
            stopping = True
            raise
        finally:
            with trio.CancelScope(shield=True):
                self.taken_over = None
                await self._end_taken_over(left, previous if stopping else None)
        await self._say(
            f"podman service (pid {left.pid}) {why}; restarting in {BACKOFF_FIRST:g}s",
            logging.WARNING,
        )
        await trio.sleep(BACKOFF_FIRST)
        await self._supervise(url, None)

    async def _end_taken_over(self, left: ServiceProcess, previous: int | None) -> None:
        record = self.record_path
        if previous is not None and await trio.to_thread.run_sync(
            service_record.hand_back, record, left, previous, self.berthd_pid
        ):
            await self._say(
                f"podman service (pid {left.pid}) left running: handed back to berthd "
                f"(pid {previous})",
                logging.INFO,
            )
            return
        how = await trio.to_thread.run_sync(service_record.end_process, left, self.stop_timeout)
        await trio.to_thread.run_sync(service_record.forget, record, left.pid, self.berthd_pid)
        if how != "already gone":
            await self._say(f"podman service (pid {left.pid}) {how}", logging.INFO)

    async def _watch_taken_over(self, url: str, left: ServiceProcess) -> str:
        misses = 0
        while True:
            await trio.sleep(self.watch_period)
            await self._rotate_log()
            if not await trio.to_thread.run_sync(service_record.running, left):
                return "exited"
            if await podman_answers(url):
                misses = 0
                continue
            misses += 1
            if misses >= WATCH_MISSES:
                return f"stopped answering ({misses} pings in a row)"

    # -- the embedded service --------------------------------------------------------------

    async def _supervise(self, url: str, task_status: trio.TaskStatus[str] | None) -> None:
        """Run the child for good: started once (or raise), then restarted whenever it ends.
        Without `task_status` (a taken-over service ended) the first child is a restart."""
        delay = BACKOFF_FIRST
        starting: trio.TaskStatus[str] | None = task_status
        while True:
            pid, why, answered_for = await self._life(url, starting)
            starting = None  # `_life` returns only after the first child answered
            if answered_for >= BACKOFF_RESET_AFTER:
                delay = BACKOFF_FIRST
            who = f" (pid {pid})" if pid is not None else ""
            await self._say(f"podman service{who} {why}; restarting in {delay:g}s", logging.WARNING)
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _life(
        self, url: str, starting: trio.TaskStatus[str] | None
    ) -> tuple[int | None, str, float]:
        """Start one child and watch it until it ends or must be ended; returns its PID, why it
        ended, and for how long it answered. While `starting`, a child that does not come up
        raises PodmanUnavailable instead."""
        try:
            process = await self._spawn(url)
        except OSError as exc:
            if starting is not None:
                raise PodmanUnavailable(f"cannot start `{self.podman_binary}`: {exc}") from exc
            return None, f"cannot be started ({exc})", 0.0
        self._process = process
        stopping = False
        await trio.to_thread.run_sync(
            service_record.record, self.record_path, process.pid, url, self.berthd_pid
        )
        try:
            why_not = await self._wait_answering(url, process)
            if why_not is not None:
                if starting is not None:
                    raise PodmanUnavailable(
                        f"`podman system service` {why_not} on {url} "
                        f"(see {self.log_path}: {self._log_last_line()})"
                    )
                return process.pid, why_not, 0.0
            if starting is not None:
                self._ready(url, "embedded", starting)
                await self._say(
                    f"podman service (pid {process.pid}) started on {url}", logging.INFO
                )
            else:
                await self._say(f"podman service (pid {process.pid}) answering again", logging.INFO)
            since = trio.current_time()
            why = await self._watch_child(url, process)
            return process.pid, why, trio.current_time() - since
        except trio.Cancelled:
            stopping = True  # berthd stops: the service ends with it
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self._end_own(process, stopping)
            self._process = None

    async def _spawn(self, url: str) -> trio.Process:
        await trio.to_thread.run_sync(partial(self.state_dir.mkdir, parents=True, exist_ok=True))
        # A socket file nobody answers on is left from a service that died: clear it.
        await trio.to_thread.run_sync(partial(self.socket_path.unlink, missing_ok=True))
        await self._rotate_log()
        log_file = await trio.to_thread.run_sync(partial(open, self.log_path, "ab"))
        try:
            return await trio.lowlevel.open_process(
                [self.podman_binary, "system", "service", "--time=0", url],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # berthd may run under UMask=0077 (its unit): the Podman service and what it
                # makes (volumes, container files) keep Podman's usual 0022, as before.
                umask=0o022,
            )
        finally:
            log_file.close()

    async def _wait_answering(self, url: str, process: trio.Process) -> str | None:
        """None once the child answers; else why not (it exited, or start_timeout passed)."""
        with trio.move_on_after(self.start_timeout):
            while process.returncode is None:
                if await podman_answers(url):
                    return None
                await trio.sleep(0.05)
            return f"{describe_exit(process.returncode)} before answering"
        return f"did not answer within {self.start_timeout:g}s"

    async def _watch_child(self, url: str, process: trio.Process) -> str:
        """Until the child exits or stops answering: says which."""
        misses = 0
        while True:
            with trio.move_on_after(self.watch_period):
                return describe_exit(await process.wait())
            await self._rotate_log()
            if await podman_answers(url):
                misses = 0
                continue
            misses += 1
            if misses >= WATCH_MISSES and process.returncode is None:
                return f"stopped answering ({misses} pings in a row)"

    async def _end_own(self, process: trio.Process, stopping: bool) -> None:
        """End the child this object started, unless berthd stops and another berthd has
        taken the service over meanwhile (a planned restart): that one ends it."""
        record, me = self.record_path, self.berthd_pid
        if stopping:
            other = await trio.to_thread.run_sync(
                service_record.owned_elsewhere, record, process.pid, me
            )
            if other is not None:
                self.left_running.append(process)
                await self._say(
                    f"podman service (pid {process.pid}) left running: berthd (pid {other}) "
                    "took it over",
                    logging.INFO,
                )
                return
        how = await self._end(process)
        await trio.to_thread.run_sync(service_record.forget, record, process.pid, me)
        if stopping and how is not None:
            await self._say(f"podman service (pid {process.pid}) {how}", logging.INFO)

    async def _end(self, process: trio.Process) -> str | None:
        """End the child; how ("ended", "killed"), or None when it had ended already."""
        if process.returncode is not None:
            return None
        process.terminate()
        with trio.move_on_after(self.stop_timeout):
            await process.wait()
            return "ended"
        log.warning("podman: service pid %d ignored SIGTERM; killing it", process.pid)
        process.kill()
        await process.wait()
        return "killed"

    # -- its log ---------------------------------------------------------------------------

    async def _rotate_log(self) -> None:
        try:
            await trio.to_thread.run_sync(self._rotate_log_sync)
        except OSError as exc:  # a full disk must not stop Podman: say it and go on
            log.warning("podman: cannot rotate %s: %s", self.log_path, exc)

    def _rotate_log_sync(self) -> None:
        try:
            if self.log_path.stat().st_size <= self.log_max_bytes:
                return
        except FileNotFoundError:
            return
        shutil.copyfile(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        # The child's descriptor is O_APPEND: its next write lands at the new end, offset 0.
        os.truncate(self.log_path, 0)

    def _log_last_line(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 2000))
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "nothing logged"
