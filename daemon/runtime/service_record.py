"""Which process is the embedded `podman system service`: a record in the state dir.

berthd writes `STATE/podman-service.pid` (JSON: pid, its start time as psutil's
`create_time`, the URL it serves, and the owner: the pid of the berthd that ends it) each
time it starts the embedded service, and removes it once it has ended that service. A
berthd killed with `-9` leaves both the service and the record; the next berthd finds the
service answering on the socket and takes it over only if the record still names it: that
pid is alive, started at the recorded time (so a reused pid never passes), and its command
line is `podman ... system service ... URL`; it then writes itself in as the owner. A
berthd that stops while another (live) one owns the service it started (the two overlap in
a planned restart) leaves it running for that one. Only such a process is ever signalled
(`end_process`, which checks again first). Blocking by contract (psutil reads /proc, the
record is a file): called through `trio.to_thread`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
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
    owner: int | None = None  # the berthd that ends it when it stops


def _write(path: Path, found: ServiceProcess) -> bool:
    temporary = path.with_name(path.name + ".tmp")
    raw = {"pid": found.pid, "started": found.started, "url": found.url, "owner": found.owner}
    try:
        temporary.write_text(json.dumps(raw))
        os.replace(temporary, path)
    except OSError as exc:  # a full disk must not stop Podman: only the takeover is lost
        log.warning("podman: cannot record the service's pid in %s: %s", path, exc)
        return False
    return True


def record(path: Path, pid: int, url: str, owner: int) -> ServiceProcess | None:
    """Write the record for the service just started; None when the process is already gone."""
    try:
        started = float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
    found = ServiceProcess(pid, started, url, owner)
    return found if _write(path, found) else None


def take_over(path: Path, found: ServiceProcess, owner: int) -> ServiceProcess:
    """Write `owner` in as the berthd that ends the service from now on."""
    mine = ServiceProcess(found.pid, found.started, found.url, owner)
    _write(path, mine)
    return mine


def hand_back(path: Path, found: ServiceProcess, previous: int, owner: int) -> bool:
    """If berthd `previous` still lives and the record is still `owner`'s, write `previous`
    back in as the owner; whether it was handed back."""
    current = _read(path)
    if current is None or current.pid != found.pid or current.owner != owner:
        return False
    if not _alive(previous):
        return False
    return _write(path, ServiceProcess(found.pid, found.started, found.url, previous))


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def owned_elsewhere(path: Path, pid: int, owner: int) -> int | None:
    """The pid of another live berthd that took service `pid` over from `owner`, if one did."""
    found = _read(path)
    if found is None or found.pid != pid or found.owner in (None, owner):
        return None
    return found.owner if _alive(found.owner) else None


def forget(path: Path, pid: int, owner: int) -> None:
    """Remove the record if it still names service `pid` owned by `owner` (a newer child may
    have replaced it, another berthd may own it now)."""
    found = _read(path)
    if found is None or (found.pid == pid and found.owner in (None, owner)):
        path.unlink(missing_ok=True)


def _read(path: Path) -> ServiceProcess | None:
    try:
        raw = json.loads(path.read_text())
        owner = raw.get("owner")
        return ServiceProcess(
            int(raw["pid"]),
            float(raw["started"]),
            str(raw["url"]),
            None if owner is None else int(owner),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
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
        if _gone_within(process, timeout):
            return "ended"
        process.kill()
    except psutil.NoSuchProcess:
        return "ended"
    _gone_within(process, timeout)
    return "killed"


def _gone_within(process: psutil.Process, timeout: float) -> bool:
    """Whether the process ends within `timeout`. Not psutil's `wait`: the service is not
    berthd's child once a crashed berthd left it, and a zombie nobody reaps (a PID 1 that
    reaps nothing, in a container) has ended all the same."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
