"""Which process is the embedded `podman system service`: a record in the state dir.

berthd writes `STATE/podman-service.pid` (JSON: pid, its start time as psutil's
`create_time`, the URL it serves) each time it starts the embedded service, and removes it
once it has ended that service. A berthd killed with `-9` leaves both the service and the
record; the next berthd finds the service answering on the socket and takes it over only if
the record still names it: that pid is alive, started at the recorded time (so a reused pid
never passes), and its command line is `podman ... system service ... URL`. Only such a
process is ever signalled (`end_process`, which checks again first). Blocking by contract
(psutil reads /proc, the record is a file): called through `trio.to_thread`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

RECORD_NAME = "podman-service.pid"
# psutil derives create_time from the boot time and the start tick: the same each reading.
START_TOLERANCE = 0.05

log = logging.getLogger("berthd.podman")


@dataclass(frozen=True)
class ServiceProcess:
    pid: int
    started: float  # psutil create_time
    url: str


def record(path: Path, pid: int, url: str) -> ServiceProcess | None:
    """Write the record for the service just started; None when the process is already gone."""
    try:
        started = float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
    found = ServiceProcess(pid, started, url)
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(json.dumps({"pid": pid, "started": started, "url": url}))
        os.replace(temporary, path)
    except OSError as exc:  # a full disk must not stop Podman: only the takeover is lost
        log.warning("podman: cannot record the service's pid in %s: %s", path, exc)
        return None
    return found


def forget(path: Path, pid: int) -> None:
    """Remove the record if it still names `pid` (a newer child may have replaced it)."""
    found = _read(path)
    if found is None or found.pid == pid:
        path.unlink(missing_ok=True)


def _read(path: Path) -> ServiceProcess | None:
    try:
        raw = json.loads(path.read_text())
        return ServiceProcess(int(raw["pid"]), float(raw["started"]), str(raw["url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_service_command(cmdline: list[str], url: str) -> bool:
    """`podman [options] system service [options] URL`: the embedded service on `url`."""
    if len(cmdline) < 4 or cmdline[-1] != url:
        return False
    names = [os.path.basename(a) for a in cmdline[:-1]]
    if "podman" not in names:
        return False
    try:
        at = cmdline.index("system")
    except ValueError:
        return False
    return at + 1 < len(cmdline) and cmdline[at + 1] == "service"


def verified(found: ServiceProcess) -> psutil.Process | None:
    """The live process the record names, or None: gone, a reused pid, another command."""
    try:
        process = psutil.Process(found.pid)
        if abs(float(process.create_time()) - found.started) > START_TOLERANCE:
            return None
        if not is_service_command(list(process.cmdline()), found.url):
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return process


def left_running(path: Path, url: str) -> ServiceProcess | None:
    """The service a berthd before this one started on `url` and left running, if the record
    names one that still runs (and is that service)."""
    found = _read(path)
    if found is None or found.url != url or verified(found) is None:
        return None
    return found


def running(found: ServiceProcess) -> bool:
    return verified(found) is not None


def end_process(found: ServiceProcess, timeout: float) -> str:
    """SIGTERM the recorded service (checked again first), SIGKILL after `timeout`; says how
    it ended: "ended", "killed" (ignored SIGTERM) or "already gone"."""
    process = verified(found)
    if process is None:
        return "already gone"
    try:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
            return "ended"
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(timeout)
            return "killed"
    except psutil.NoSuchProcess:
        return "ended"
