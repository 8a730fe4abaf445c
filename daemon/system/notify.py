"""sd_notify(3) without libsystemd: tell systemd (Type=notify) how berthd is doing.

The protocol is one datagram per message to the AF_UNIX socket named by `$NOTIFY_SOCKET`
("@name" is the abstract namespace), holding newline-separated `KEY=VALUE` fields:
READY=1 once berthd serves, STOPPING=1 when it begins to shut down, STATUS=... for
`systemctl status`, WATCHDOG=1 at least every `$WATCHDOG_USEC` microseconds.

Invariants:
- Without `$NOTIFY_SOCKET` (berthd run by hand, by tests, by `make run`) every call is a
  no-op: the daemon calls them unconditionally.
- A notification never stops the daemon: a missing or full socket is logged once and the
  message dropped (systemd then times the start out or the watchdog fires, which is the
  right outcome for a service manager that cannot be reached).
- Sends never block the trio thread: the socket is non-blocking.
- `from_environment` removes NOTIFY_SOCKET and WATCHDOG_* from `os.environ` (sd_notify's
  `unset_environment`), so that no child (the embedded `podman system service`, conmon)
  inherits them and talks to systemd in berthd's name.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, MutableMapping

import trio

log = logging.getLogger("berthd")

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, address: str | None, watchdog_interval: float | None = None) -> None:
        """`address`: the socket path ("@..." for abstract); `watchdog_interval`: the
        seconds between WATCHDOG=1 pings (half of systemd's WatchdogSec), None for none."""
        self.address = address
        self.watchdog_interval = watchdog_interval if address is not None else None
        self._warned = False

    @classmethod
    def from_environment(
        cls,
        environ: MutableMapping[str, str] | None = None,
        *,
        pid: int | None = None,
        unset: bool = True,
    ) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        our_pid = os.getpid() if pid is None else pid
        if usec.isdigit() and int(usec) > 0:
            # WATCHDOG_PID set for another process (we were exec'd by a wrapper that kept
            # the environment): the watchdog is not ours to feed.
            if not watchdog_pid or (watchdog_pid.isdigit() and int(watchdog_pid) == our_pid):
                interval = int(usec) / 2_000_000
        if unset:
            for key in _ENV_KEYS:
                env.pop(key, None)
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def __repr__(self) -> str:
        return f"<Notifier {self.address or 'off'} watchdog={self.watchdog_interval}>"

    def notify(self, *fields: str) -> bool:
        """Send `fields` ("READY=1", ...) as one message; True if it was sent."""
        if self.address is None:
            return False
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message, address)
        except OSError as exc:  # no such socket, refused, queue full (EAGAIN)
            if not self._warned:
                log.warning(
                    "sd_notify to %s failed: %s (further failures not logged)", self.address, exc
                )
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup is done: endpoints listen, adopted replicas were probed."""
        return self.notify("READY=1", *_status(status))

    def reloading(self) -> bool:
        """SIGHUP work begins; call `ready()` when it is done."""
        return self.notify("RELOADING=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def watchdog_loop(self, stalled: Callable[[], str | None] = lambda: None) -> None:
        """Ping the watchdog every WATCHDOG_USEC/2 until cancelled; returns at once if
        systemd asked for no watchdog. Run it in the control nursery: it then proves that
        the trio loop still schedules tasks, which is what a hung berthd stops doing.

        A ping is skipped while `stalled()` names a part that makes no progress (a store
        call or a reconcile round that has not returned for far too long): a berthd alive
        but stuck is then restarted by systemd, as a hung one is. Said once per stall."""
        interval = self.watchdog_interval
        if interval is None:
            return
        said: str | None = None
        while True:
            reason = stalled()
            if reason is None:
                self.watchdog()
                if said is not None:
                    log.warning("watchdog: progress again; pinging systemd again")
            elif reason != said:
                log.error("watchdog: not pinging systemd: %s", reason)
            said = reason
            await trio.sleep(interval)


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)  # one line: a newline ends the field
