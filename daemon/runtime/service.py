"""Which Podman berthd talks to, and the embedded `podman system service` when it must own one.

`PodmanService(podman_url, state_dir).run()` is started with `nursery.start` and reports the
URL to use (DESIGN.md, "berthd — contract"):
1. an explicit `podman_url` is used as is; if it does not answer, `run` fails at once;
2. otherwise the system socket (`unix:///run/podman/podman.sock`) if it answers;
3. otherwise `unix://{state_dir}/podman.sock`: reused if something already answers there (a
   service left by a berthd that was `kill -9`ed), else started as a child process.

Invariants:
- Only a child that this object started is ever ended (SIGTERM, then SIGKILL after a bound),
  and always when `run` is cancelled. A reused or system service is left alone.
- Containers do not depend on the service (conmon is their parent), so stopping and starting
  the service, or berthd, leaves them running.
- The child runs in its own session, so a Ctrl-C meant for berthd does not reach it; if it
  exits on its own it is restarted (a few quick failures in a row end `run` with the log tail).
- "Answers" means GET /_ping gets 200 within `PING_TIMEOUT`, asked with berthd's one HTTP
  client helper (`daemon.http.client`); anything else (refused, wedged, not HTTP) is "no".
"""

from __future__ import annotations

import logging
import subprocess
from functools import partial
from pathlib import Path

import trio

from daemon.http import client

log = logging.getLogger("berth.podman")

SYSTEM_URL = "unix:///run/podman/podman.sock"
# A healthy service answers /_ping in milliseconds; a wedged one is as good as none.
PING_TIMEOUT = 2.0


class PodmanUnavailable(Exception):
    """No Podman API service answers where berthd was told (or decided) to look."""


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
    ) -> None:
        self.explicit_url = podman_url
        self.state_dir = state_dir
        self.system_url = system_url
        self.podman_binary = podman_binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.socket_path = state_dir / "podman.sock"
        self.log_path = state_dir / "podman-service.log"
        self.url: str | None = None
        # "explicit" | "system" | "reused" | "embedded": where `url` came from.
        self.source: str | None = None
        self._process: trio.Process | None = None

    def __repr__(self) -> str:
        pid = self._process.pid if self._process is not None else None
        return f"<PodmanService url={self.url!r} source={self.source} child_pid={pid}>"

    @property
    def child_pid(self) -> int | None:
        """The PID of the `podman system service` this object started, while it runs."""
        return self._process.pid if self._process is not None else None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        if self.explicit_url is not None:
            if not await podman_answers(self.explicit_url):
                raise PodmanUnavailable(f"no Podman API service answers at {self.explicit_url}")
            self._ready(self.explicit_url, "explicit", task_status)
            return
        if await podman_answers(self.system_url):
            self._ready(self.system_url, "system", task_status)
            return
        own_url = f"unix://{self.socket_path}"
        if await podman_answers(own_url):
            self._ready(own_url, "reused", task_status)
            return
        await self._supervise(own_url, task_status)

    def _ready(self, url: str, source: str, task_status: trio.TaskStatus[str]) -> None:
        self.url, self.source = url, source
        log.info("podman: using %s (%s)", url, source)
        task_status.started(url)

    async def _supervise(self, url: str, task_status: trio.TaskStatus[str]) -> None:
        quick_failures = 0
        started = False
        while True:
            began = trio.current_time()
            status = await self._run_child(url, None if started else task_status)
            started = True
            quick_failures = quick_failures + 1 if trio.current_time() - began < 30 else 1
            log.warning("podman: `podman system service` exited with status %s", status)
            if quick_failures >= 3:
                raise PodmanUnavailable(
                    f"`podman system service` keeps exiting (status {status}); "
                    f"see {self.log_path}:\n{self._log_tail()}"
                )
            await trio.sleep(1.0)

    async def _run_child(self, url: str, task_status: trio.TaskStatus[str] | None) -> int:
        """Start the service, report it ready, and return its exit status when it ends."""
        await trio.to_thread.run_sync(partial(self.state_dir.mkdir, parents=True, exist_ok=True))
        # A socket file nobody answers on is left from a service that died: clear it.
        await trio.to_thread.run_sync(partial(self.socket_path.unlink, missing_ok=True))
        log_file = await trio.to_thread.run_sync(partial(open, self.log_path, "ab"))
        try:
            process = await trio.lowlevel.open_process(
                [self.podman_binary, "system", "service", "--time=0", url],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise PodmanUnavailable(f"cannot start `{self.podman_binary}`: {exc}") from exc
        finally:
            log_file.close()
        self._process = process
        try:
            await self._wait_answering(url, process)
            if task_status is not None:
                self._ready(url, "embedded", task_status)
            return await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._end(process)
            self._process = None

    async def _wait_answering(self, url: str, process: trio.Process) -> None:
        with trio.move_on_after(self.start_timeout):
            while process.returncode is None:
                if await podman_answers(url):
                    return
                await trio.sleep(0.05)
        raise PodmanUnavailable(
            f"`podman system service` did not answer on {url} within {self.start_timeout:g}s "
            f"(exit status {process.returncode}); see {self.log_path}:\n{self._log_tail()}"
        )

    async def _end(self, process: trio.Process) -> None:
        if process.returncode is not None:
            return
        process.terminate()
        with trio.move_on_after(self.stop_timeout):
            await process.wait()
            return
        log.warning("podman: service pid %d ignored SIGTERM; killing it", process.pid)
        process.kill()
        await process.wait()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
