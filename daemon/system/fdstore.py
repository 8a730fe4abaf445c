"""systemd's file descriptor store without libsystemd: listening sockets that outlive berthd.

The protocol (sd_pid_notify_with_fds(3), sd_listen_fds_with_names(3)), spoken to whoever
reads `$NOTIFY_SOCKET`: systemd for a unit with `FileDescriptorStoreMax=`, or `berthd
--supervise` (`daemon.supervise`) without systemd.
- Keep: the datagram `FDSTORE=1\\nFDNAME=<name>` with the socket's descriptor attached as
  SCM_RIGHTS. The manager now holds its own copy of the socket: a listening socket stays
  bound and its backlog keeps taking connections while no berthd runs.
- Forget: `FDSTOREREMOVE=1\\nFDNAME=<name>`: the manager closes every copy of that name.
  Sent when a listener is gone for good (the deployment removed or disabled, its address
  changed, its listener failed); never at a stop, which is what the store is for.
- Take back: the manager starts berthd with the copies at descriptors 3.. and
  `LISTEN_FDS=<count>`, `LISTEN_FDNAMES=<name>:<name>...`, `LISTEN_PID=<berthd's pid>`.

Invariants:
- Names follow systemd's `fdname_is_valid`: ASCII 32..126 but ':', at most 255 bytes;
  an endpoint's listener is `ep-<bind>-<port>` (an IPv6 address's colons written as '_';
  `daemon.reconcile.endpoints.endpoint_fd_name`), the admin socket is `admin`
  (`ADMIN_FD_NAME`). A name that breaks the rule is refused by `keep`, said in the log.
- Inherited descriptors are taken only when `LISTEN_PID` is this process (a wrapper that
  passed its environment on is not us); the `LISTEN_*` variables are then removed from the
  environment and every descriptor gets FD_CLOEXEC, so no child (the embedded Podman
  service, conmon) inherits them.
- Every inherited socket is either taken by its owner (`take`) or, once the first
  reconcile rounds have run, closed and forgotten (`release_unclaimed`): a socket nobody
  wants does not keep a port bound.
- Without `$NOTIFY_SOCKET` keep and forget are no-ops; a failed send is logged once and
  never raises (as `daemon.system.notify`). Sends are non-blocking datagrams, from the
  main process (systemd's `NotifyAccess=main`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, MutableMapping

log = logging.getLogger("berthd")

ADMIN_FD_NAME = "admin"
FDNAME_MAX = 255
LISTEN_FDS_START = 3
_LISTEN_KEYS = ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID")


def fd_name_is_valid(name: str) -> bool:
    """systemd's rule for a name in FDNAME= and $LISTEN_FDNAMES."""
    return len(name.encode()) <= FDNAME_MAX and all(32 <= ord(c) < 127 and c != ":" for c in name)


def store_message(name: str) -> bytes:
    return f"FDSTORE=1\nFDNAME={name}".encode()


def remove_message(name: str) -> bytes:
    return f"FDSTOREREMOVE=1\nFDNAME={name}".encode()


def listen_fds(
    environ: MutableMapping[str, str] | None = None,
    *,
    pid: int | None = None,
    unset: bool = True,
) -> list[tuple[str, int]]:
    """The descriptors passed by `LISTEN_FDS` (name, fd), as sd_listen_fds_with_names: none
    unless `LISTEN_PID` is `pid` (this process); a missing or short `LISTEN_FDNAMES`
    names the rest "unknown". With `unset`, the variables leave the environment."""
    env = os.environ if environ is None else environ
    count, names, listen_pid = (env.get(key, "") for key in _LISTEN_KEYS)
    if unset:
        for key in _LISTEN_KEYS:
            env.pop(key, None)
    our_pid = os.getpid() if pid is None else pid
    if not (count.isdigit() and listen_pid.isdigit()) or int(listen_pid) != our_pid:
        return []
    labels = names.split(":") if names else []
    return [
        (labels[i] if i < len(labels) and labels[i] else "unknown", LISTEN_FDS_START + i)
        for i in range(int(count))
    ]


class FdStore:
    """berthd's side of the store: what it inherited, and the keep/forget messages."""

    def __init__(
        self, address: str | None, inherited: Iterable[tuple[str, socket.socket]] = ()
    ) -> None:
        """`address`: $NOTIFY_SOCKET ("@..." abstract), None for no store; `inherited`:
        the sockets passed at start, by name."""
        self.address = address
        self._inherited: dict[str, socket.socket] = {}
        self._taken: set[str] = set()
        self._warned = False
        for name, sock in inherited:
            if name in self._inherited:  # two of one name: the first one is used
                log.warning("fd store: a second socket named %s was passed; closed it", name)
                sock.close()
                continue
            self._inherited[name] = sock

    @classmethod
    def from_environment(
        cls,
        notify_address: str | None,
        environ: MutableMapping[str, str] | None = None,
        *,
        pid: int | None = None,
    ) -> FdStore:
        """The store at `notify_address` (what `Notifier.from_environment` read: it takes
        NOTIFY_SOCKET out of the environment), with the sockets `LISTEN_FDS` passed."""
        inherited: list[tuple[str, socket.socket]] = []
        for name, fd in listen_fds(environ, pid=pid):
            try:
                os.set_inheritable(fd, False)
                sock = socket.socket(fileno=fd)
            except OSError as exc:  # not a socket, or not open: nothing to take
                log.warning("fd store: passed descriptor %d (%s) is unusable: %s", fd, name, exc)
                continue
            inherited.append((name, sock))
        if inherited:
            log.info("fd store: passed %s", ", ".join(name for name, _ in inherited))
        return cls(notify_address, inherited)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def __repr__(self) -> str:
        return (
            f"<FdStore {self.address or 'off'} inherited={sorted(self._inherited)} "
            f"taken={sorted(self._taken)}>"
        )

    def take(self, name: str) -> socket.socket | None:
        """The inherited socket of that name (once; the caller owns it then), or None."""
        sock = self._inherited.pop(name, None)
        if sock is not None:
            self._taken.add(name)
        return sock

    def keep(self, name: str, fileno: int) -> bool:
        """Hand a copy of `fileno` to the store under `name`; True if it was sent."""
        if not fd_name_is_valid(name):
            log.warning("fd store: %r is no valid FDNAME; not kept", name)
            return False
        return self._send(store_message(name), [fileno])

    def forget(self, name: str) -> bool:
        """The store closes its copies of `name`; True if it was asked."""
        self._taken.discard(name)
        return self._send(remove_message(name), [])

    def release_unclaimed(self) -> list[str]:
        """Close every inherited socket nobody took, and have the store forget it."""
        names = sorted(self._inherited)
        for name in names:
            self._inherited.pop(name).close()
            self.forget(name)
        if names:
            log.info("fd store: released %s (no endpoint wants them)", ", ".join(names))
        return names

    def _send(self, message: bytes, fds: list[int]) -> bool:
        if self.address is None:
            return False
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.connect(address)
                socket.send_fds(sock, [message], fds)
        except OSError as exc:  # no such socket, refused, queue full (EAGAIN)
            if not self._warned:
                log.warning(
                    "fd store at %s: %s failed: %s (further failures not logged)",
                    self.address,
                    message.split(b"\n", 1)[0].decode(),
                    exc,
                )
                self._warned = True
            return False
        return True
