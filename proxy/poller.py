"""The endpoint's event source: one edge-triggered epoll set, and a watchdog for timeouts.

trio registers a file descriptor for one event at a time (EPOLLONESHOT), which costs an
`epoll_ctl` syscall per wait; here each connection joins the poller's own epoll set once,
edge-triggered, and the poller waits on that set's descriptor through trio: one
`epoll_ctl` per batch of ready connections instead of one per wait (measured: 1.8 of the
7.7 syscalls per proxied request). See `proxy.sockets` for the waiting side.

Invariants:
- The dispatcher only wakes tasks already parked on a connection (`Conn.reader`/`writer`);
  a read edge that finds nobody parked sets `Conn.maybe_readable` instead.
- Every hang-up (FIN, reset) is noted on its connection (`peer_closed`); a hang-up on a
  connection whose `hangup_watcher` is set interrupts the read wait on that watcher.
- Something arriving on an idle pooled connection gets one peek (`check_idle`): the
  replica closed it or sent stray bytes -> `stale`, never handed out again.
- The watchdog ends overdue waits with `Timeout` every `tick` seconds, on a coarse clock:
  a timeout fires between `timeout - tick` and `timeout + tick` after the wait began.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Final

import trio
from trio.lowlevel import reschedule

if TYPE_CHECKING:
    from proxy.sockets import Conn

EPOLL_MASK: Final = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_HANGUP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_READ_READY: Final = select.EPOLLIN | _HANGUP
_WRITE_READY: Final = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class Poller:
    """One edge-triggered epoll set and one watchdog for all connections of an endpoint.

    `run` starts two tasks: the dispatcher (waits on the epoll descriptor through trio,
    then wakes the tasks parked on the ready connections) and the watchdog (every `tick`
    seconds, ends the overdue waits with `Timeout`, on a coarse clock: a timeout fires
    between `timeout - tick` and `timeout + tick` after the wait began). A cancel scope
    per wait cost more than parsing a request; this costs nothing per wait.
    """

    __slots__ = ("now", "tick", "waiting", "_epoll", "_conns")

    def __init__(self, tick: float) -> None:
        self.now = 0.0
        self.tick = tick
        self.waiting: set[Conn] = set()
        self._epoll: select.epoll | None = None
        self._conns: dict[int, Conn] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.now = trio.current_time()
        self._epoll = select.epoll()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dispatch, self._epoll)
                nursery.start_soon(self._watch)
                task_status.started()
        finally:
            for conn in list(self._conns.values()):
                conn.close()
            self._epoll.close()
            self._epoll = None

    def register(self, conn: Conn) -> None:
        if self._epoll is None:
            raise RuntimeError("the poller is not running")
        try:
            self._epoll.register(conn.fd, EPOLL_MASK)
        except FileExistsError:  # a descriptor number reused behind a dup: re-arm it
            self._epoll.modify(conn.fd, EPOLL_MASK)
        self._conns[conn.fd] = conn

    def forget(self, conn: Conn) -> None:
        """Before `conn` closes (closing drops it from the epoll set)."""
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]

    async def _dispatch(self, ep: select.epoll) -> None:
        conns = self._conns
        epfd = ep.fileno()
        while True:
            await trio.lowlevel.wait_readable(epfd)
            for fd, mask in ep.poll(0):
                conn = conns.get(fd)
                if conn is None:
                    continue
                if mask & _READ_READY:
                    task = conn.reader
                    if task is not None:
                        conn.reader = None
                        reschedule(task)
                    else:
                        conn.maybe_readable = True
                        if conn.pooled:
                            conn.check_idle()
                if mask & _WRITE_READY:
                    task = conn.writer
                    if task is not None:
                        conn.writer = None
                        reschedule(task)
                if mask & _HANGUP:
                    conn.peer_closed = True
                    watcher = conn.hangup_watcher
                    if watcher is not None:
                        watcher.interrupt()

    async def _watch(self) -> None:
        while True:
            await trio.sleep(self.tick)
            now = self.now = trio.current_time()
            overdue = [c for c in self.waiting if c.deadline <= now]
            for conn in overdue:
                conn.expire()
