"""The endpoint's event source: one edge-triggered epoll set, and a watchdog for timeouts.

trio registers a file descriptor for one event at a time (EPOLLONESHOT), which costs an
`epoll_ctl` syscall per wait; here each connection joins the poller's own epoll set once,
edge-triggered, and one task at a time (the leader) waits on that set's descriptor
through trio: one `epoll_ctl` per batch of ready connections instead of one per wait
(measured: 1.8 of the 7.7 syscalls per proxied request). See `proxy.sockets` for the
waiting side; what the poller needs of a connection is `Polled` (below), so that this
module imports nothing of the proxy.

Invariants:
- While any task is parked on a connection, one task leads (waits on the set): a task
  that parks with no leader leads itself; a leader that leaves with followers parked
  wakes the standby task, which leads until none is left. With nobody parked, edges
  wait in the set until the next wait polls it.
- Polling only wakes tasks already parked on a connection (`reader`/`writer`); a read
  edge that finds nobody parked sets `maybe_readable` instead.
- Every hang-up (FIN, reset) is noted on its connection (`peer_closed`); a hang-up on a
  connection whose `hangup_watcher` is set interrupts the read wait on that watcher.
- Something arriving on an idle pooled connection gets one peek (`check_idle`): the
  replica closed it or sent stray bytes -> `stale`, never handed out again.
- The watchdog ends overdue waits with `Timeout` every `tick` seconds, on a coarse clock:
  a timeout fires between `timeout - tick` and `timeout + tick` after the wait began.
- With no wait in `waiting` the watchdog parks (an idle endpoint wakes nobody); the first
  wait to begin rouses it (`rouse`), which also brings the coarse clock `now` up to date
  before that wait's deadline is computed from it.
- The standby, leading, spins on the set (`SPIN_S`, polling it without sleeping) only
  while no task can run, and after a spin that found something or two sleeps on the set
  in a row shorter than `DENSE_S`: a missed spin costs `SPIN_S` of CPU and is followed
  by a sleep; an idle endpoint, or traffic with longer gaps, does not spin.
- `retick` (the endpoint's timeouts changed) takes effect at once: `now` is brought up to
  date and a watchdog sleep under way ends by the new tick, so a shorter tick never waits
  out the rest of a longer one.
- A callback wait (`watch`: the fast path of `proxy.fastpath`, no task parked) fires at
  most once per `watch`, with why it fired: `READY` (a read edge), `EXPIRED` (its
  deadline passed, from the watchdog), `INTERRUPTED` (the peer of a connection whose
  `hangup_watcher` it is hung up) or `CLOSED` (the connection closes); it is dropped
  before it runs, so it may `watch` again. While one is armed, somebody leads (the
  standby task when no session does), and the connection is in `waiting`.
- A write callback (`watch_writable`: the stream relay of `proxy.stream_relay`, waiting
  for a slow client to take more) is the same on a write edge, kept apart from the read
  callbacks (a connection may hold one of each); it fires `READY`, `EXPIRED` or `CLOSED`.
- `opens` and `closes` count the connections registered and forgotten (closed) by every
  poller of the process, for the garbage-collection policy (`proxy.gc_policy`).
- A callback's wake-up of its session's task (`wake_soon`) is at once for the first
  `WAKES_PER_POLL` since the set was last polled, and queued (in order) past that: each
  poll then wakes that many more, and while any is queued the leader polls again after a
  checkpoint instead of sleeping on the set. trio runs every task woken before its next
  look at I/O, so thousands woken by one poll (9,000 streams ending in one second, each
  ~75 us of teardown) made scheduler batches of ~100 ms in which no callback, no event of
  the streams still open, could run.
"""

from __future__ import annotations

import select
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Final, Protocol

import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

EPOLL_MASK: Final = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_HANGUP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_READ_READY: Final = select.EPOLLIN | _HANGUP
_WRITE_READY: Final = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR

# How long the standby polls the set before it sleeps on it, while no task can run: only
# after a spin that found something or two sleeps in a row shorter than DENSE_S (traffic
# whose gaps are longer, one in two at least, does not spin).
SPIN_S: Final = 50e-6
DENSE_S: Final = 250e-6

# Callback wake-ups of tasks made at once between two polls of the set (see `wake_soon`).
WAKES_PER_POLL: Final = 32

# Why a callback wait (`Poller.watch`) fired.
READY: Final = 0
EXPIRED: Final = 1
CLOSED: Final = 2
INTERRUPTED: Final = 3


# Connections registered and closed (`Poller.forget`) by every poller of the process: what
# the full garbage collection's schedule looks at (`proxy.gc_policy`). One-item lists, so
# that the hot path adds to them without a `global` statement.
opens: list[int] = [0]
closes: list[int] = [0]


class Polled(Protocol):
    """What the poller needs of a connection (`proxy.sockets.Conn` is the one there is).

    It wakes the task parked to read or write (and unsets `reader`/`writer`), notes a read
    edge nobody waited for (`maybe_readable`) and a hang-up (`peer_closed`), peeks at an
    idle pooled connection (`check_idle`), interrupts the `hangup_watcher`, ends overdue
    waits (`deadline`, `expire`), and closes what is left when it stops.
    """

    reader: Task | None
    writer: Task | None
    maybe_readable: bool
    peer_closed: bool
    deadline: float

    @property
    def fd(self) -> int: ...
    @property
    def pooled(self) -> bool: ...
    @property
    def hangup_watcher(self) -> Polled | None: ...
    def check_idle(self) -> None: ...
    def interrupt(self) -> None: ...
    def expire(self) -> None: ...
    def close(self) -> None: ...


class Poller:
    """One edge-triggered epoll set and one watchdog for all connections of an endpoint.

    Leader and followers: a task that must wait on a connection while nobody waits on the
    epoll set becomes the *leader*: it waits on the set's descriptor itself (through trio),
    wakes the tasks parked on the ready connections (the followers) and returns as soon
    as its own connection is ready, with no task hop. At one connection every wait is
    such a wait. A leader that leaves while followers are parked hands the set to the
    standby task, which leads until no follower is left (the busy case: one wait on the
    set for a batch of ready connections).

    The watchdog ends the overdue waits with `Timeout` every `tick` seconds, on a coarse
    clock: a timeout fires between `timeout - tick` and `timeout + tick` after the wait
    began. A cancel scope per wait cost more than parsing a request; this costs nothing
    per wait.
    """

    __slots__ = (
        "now",
        "tick",
        "waiting",
        "leader",
        "watchdog_parked",
        "_epoll",
        "_epfd",
        "_conns",
        "_standby",
        "_watchdog",
        "_tick_scope",
        "_callbacks",
        "_wcallbacks",
        "_wakes",
        "_woken",
    )

    def __init__(self, tick: float) -> None:
        self.now = 0.0
        self.tick = tick
        self.waiting: set[Polled] = set()
        self.leader: Task | None = None  # the task waiting on the epoll set, if any
        self._epoll: select.epoll | None = None
        self._epfd = -1
        self._conns: dict[int, Polled] = {}
        self._standby: Task | None = None  # the standby task, while parked
        self._watchdog: Task | None = None  # the watchdog task, while parked
        self._tick_scope: trio.CancelScope | None = None  # the watchdog's sleep, while asleep
        self.watchdog_parked = False  # read by every wait: a plain attribute is cheapest
        # Callback waits (`watch`): run by whoever polls, with no task switch.
        self._callbacks: dict[Polled, Callable[[int], None]] = {}
        self._wcallbacks: dict[Polled, Callable[[int], None]] = {}  # on write edges
        self._wakes: deque[Task] = deque()  # callback wake-ups queued (`wake_soon`)
        self._woken = 0  # callback wake-ups made at once since the last poll

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.now = trio.current_time()
        self._epoll = select.epoll()
        self._epfd = self._epoll.fileno()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stand_by)
                nursery.start_soon(self._watch)
                task_status.started()
        finally:
            while self._wakes:  # nobody polls any more: every queued wake-up now
                reschedule(self._wakes.popleft())
            for conn in list(self._conns.values()):
                conn.close()
            epoll, self._epoll = self._epoll, None
            trio.lowlevel.notify_closing(self._epfd)
            epoll.close()
            self._epfd = -1

    def register(self, conn: Polled) -> None:
        if self._epoll is None:
            raise RuntimeError("the poller is not running")
        try:
            self._epoll.register(conn.fd, EPOLL_MASK)
        except FileExistsError:  # a descriptor number reused behind a dup: re-arm it
            self._epoll.modify(conn.fd, EPOLL_MASK)
        self._conns[conn.fd] = conn
        opens[0] += 1

    def forget(self, conn: Polled) -> None:
        """Before `conn` closes (closing drops it from the epoll set); a callback armed on
        it fires with `CLOSED`."""
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
        closes[0] += 1
        if self._callbacks:
            self._fire(conn, CLOSED)
        if self._wcallbacks:
            self._fire_write(conn, CLOSED)

    def watch(self, conn: Polled, callback: Callable[[int], None], timeout: float | None) -> None:
        """Call `callback(why)` once, on the next read edge of `conn` or when `timeout`
        seconds have passed (None: the deadline `conn` has already). `conn` must have no
        task parked on it, and the caller must have seen EAGAIN (as for a parked wait)."""
        if self.watchdog_parked:
            self.rouse()
        if timeout is not None:
            conn.deadline = self.now + timeout
        self._callbacks[conn] = callback
        self.waiting.add(conn)
        if self.leader is None:
            standby = self._standby
            if standby is not None:
                self._standby = None
                reschedule(standby)

    def watch_writable(
        self, conn: Polled, callback: Callable[[int], None], timeout: float | None
    ) -> None:
        """As `watch`, on the next write edge of `conn`: the caller's last send on it was
        short (the kernel's buffer is full), and no task waits to write on it."""
        if self.watchdog_parked:
            self.rouse()
        if timeout is not None:
            conn.deadline = self.now + timeout
        self._wcallbacks[conn] = callback
        self.waiting.add(conn)
        if self.leader is None:
            standby = self._standby
            if standby is not None:
                self._standby = None
                reschedule(standby)

    def unwatch(self, conn: Polled) -> None:
        """Drop the callbacks armed on `conn` (read and write), if any, without calling them."""
        dropped = self._callbacks.pop(conn, None) is not None
        if self._wcallbacks and self._wcallbacks.pop(conn, None) is not None:
            dropped = True
        if dropped:
            self._settle(conn)

    def _settle(self, conn: Polled) -> None:
        """`conn` leaves `waiting` once nothing waits on it any more."""
        if (
            conn.reader is None
            and conn.writer is None
            and conn not in self._callbacks
            and conn not in self._wcallbacks
        ):
            self.waiting.discard(conn)

    def _fire(self, conn: Polled, why: int) -> bool:
        """Run the read callback armed on `conn` (dropped first); False when there was none."""
        callback = self._callbacks.pop(conn, None)
        if callback is None:
            return False
        self._settle(conn)
        callback(why)
        return True

    def _fire_write(self, conn: Polled, why: int) -> bool:
        """Run the write callback armed on `conn` (dropped first); False when there was none."""
        callback = self._wcallbacks.pop(conn, None)
        if callback is None:
            return False
        self._settle(conn)
        callback(why)
        return True

    def wake_soon(self, task: Task) -> None:
        """Wake `task`, parked by itself (`wait_task_rescheduled`, no connection holds it),
        from a callback: at once, or queued past `WAKES_PER_POLL` since the last poll.
        Its abort function must answer `Abort.FAILED` once this was called."""
        if self._woken < WAKES_PER_POLL:
            self._woken += 1
            reschedule(task)
            return
        self._wakes.append(task)
        leader = self.leader
        if leader is None:
            standby = self._standby
            if standby is not None:
                self._standby = None
                reschedule(standby)
        elif leader is not current_task() and self._epfd >= 0:
            trio.lowlevel.notify_closing(self._epfd)  # asleep on the set: polls again

    def _drain_wakes(self) -> None:
        """A poll: the count starts again, and the first queued wake-ups are made."""
        self._woken = 0
        wakes = self._wakes
        while wakes and self._woken < WAKES_PER_POLL:
            self._woken += 1
            reschedule(wakes.popleft())

    def wake(self, task: Task) -> None:
        """Wake a task parked on a connection; the caller has unset its `reader`/`writer`."""
        if task is self.leader:
            if task is not current_task():
                # It waits on the epoll descriptor: end that wait (it re-registers later).
                trio.lowlevel.notify_closing(self._epfd)
        else:
            reschedule(task)

    async def lead(self, conn: Polled) -> None:
        """Wait as the leader until the current task is no longer parked on `conn`."""
        task = current_task()
        self.leader = task
        try:
            while conn.reader is task or conn.writer is task:
                if self._wakes:  # wake-ups queued: their tasks run, then poll again
                    await trio.lowlevel.checkpoint()
                    self._poll(task)
                    continue
                try:
                    await trio.lowlevel.wait_readable(self._epfd)
                except trio.ClosedResourceError:
                    if self._epoll is None:
                        raise
                    continue  # woken by `wake`: the loop's condition says whether to go
                if self._epoll is None:
                    # Stopped while the set was readable, under a leader of another owner
                    # (a gateway request, `proxy.gateway`): its connection was closed.
                    break
                self._poll(task)
        finally:
            self.leader = None
            standby = self._standby
            if standby is not None and self._has_followers():
                self._standby = None
                reschedule(standby)

    def _has_followers(self) -> bool:
        if self._callbacks or self._wcallbacks or self._wakes:
            return True
        return any(c.reader is not None or c.writer is not None for c in self.waiting)

    def _abort_standby(self, _: object) -> Abort:
        self._standby = None
        return Abort.SUCCEEDED

    async def _stand_by(self) -> None:
        """Lead while followers are parked and no task leads; otherwise sleep."""
        me = current_task()
        while True:
            if self.leader is None and self._has_followers():
                self.leader = me
                try:
                    hit = False  # the last spin found something
                    short = 0  # sleeps on the set in a row shorter than DENSE_S
                    while self._has_followers():
                        if self._wakes:  # wake-ups queued: their tasks run, then poll
                            await trio.lowlevel.checkpoint()
                            self._poll(me)
                            continue
                        if hit or short >= 2:
                            hit = self._spin(me)
                            if hit:
                                await trio.lowlevel.checkpoint()
                                continue
                        slept = perf_counter()
                        try:
                            await trio.lowlevel.wait_readable(self._epfd)
                        except trio.ClosedResourceError:
                            if self._epoll is None:
                                raise
                            continue
                        short = short + 1 if perf_counter() - slept < DENSE_S else 0
                        self._poll(me)
                finally:
                    self.leader = None
            self._standby = me
            await wait_task_rescheduled(self._abort_standby)

    def _spin(self, leader: Task) -> bool:
        """While no task can run, poll the set for up to `SPIN_S` before sleeping on it:
        True when something came (handled, as by `_poll`). An exchange at one connection
        is two waits of tens of microseconds each; waking from a sleep costs about that."""
        if trio.lowlevel.current_statistics().tasks_runnable:
            return False
        assert self._epoll is not None
        poll = self._epoll.poll
        end = perf_counter() + SPIN_S
        while True:
            events = poll(0)
            if events:
                self._dispatch(leader, events)
                return True
            if perf_counter() >= end:
                return False

    def _poll(self, leader: Task) -> None:
        """Take the ready connections off the set; wake the tasks parked on them."""
        assert self._epoll is not None
        self._dispatch(leader, self._epoll.poll(0))

    def _dispatch(self, leader: Task, events: list[tuple[int, int]]) -> None:
        self._drain_wakes()
        conns = self._conns
        callbacks = self._callbacks
        wcallbacks = self._wcallbacks
        for fd, mask in events:
            conn = conns.get(fd)
            if conn is None:
                continue
            if mask & _HANGUP:  # first: a callback below reads it (`maybe_readable`)
                conn.peer_closed = True
            if mask & _READ_READY:
                task = conn.reader
                if task is not None:
                    conn.reader = None
                    if task is not leader:
                        reschedule(task)
                elif callbacks and self._fire(conn, READY):
                    pass
                else:
                    conn.maybe_readable = True
                    if conn.pooled:
                        conn.check_idle()
            if mask & _WRITE_READY:
                task = conn.writer
                if task is not None:
                    conn.writer = None
                    if task is not leader:
                        reschedule(task)
                elif wcallbacks:
                    self._fire_write(conn, READY)
            if mask & _HANGUP:
                watcher = conn.hangup_watcher
                if watcher is not None:
                    watcher.interrupt()
                    if callbacks:
                        self._fire(watcher, INTERRUPTED)

    def rouse(self) -> None:
        """A wait begins while the watchdog is parked: bring `now` up to date, wake it."""
        self.now = trio.current_time()
        task, self._watchdog = self._watchdog, None
        self.watchdog_parked = False
        if task is not None:
            reschedule(task)

    def retick(self, tick: float) -> None:
        """A new tick, at once: the coarse clock is brought up to date, and a watchdog
        sleep under way ends no later than `tick` from now."""
        self.tick = tick
        self.now = trio.current_time()
        scope = self._tick_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, self.now + tick)

    def _abort_watchdog(self, _: object) -> Abort:
        self._watchdog = None
        self.watchdog_parked = False
        return Abort.SUCCEEDED

    async def _watch(self) -> None:
        while True:
            if not self.waiting:
                self._watchdog = current_task()
                self.watchdog_parked = True
                await wait_task_rescheduled(self._abort_watchdog)
            # trio.sleep is this same scope; holding it lets `retick` shorten the sleep.
            with trio.CancelScope(deadline=trio.current_time() + self.tick) as scope:
                self._tick_scope = scope
                await trio.sleep_forever()
            self._tick_scope = None
            now = self.now = trio.current_time()
            overdue = [c for c in self.waiting if c.deadline <= now]
            for conn in overdue:
                fired = self._callbacks and self._fire(conn, EXPIRED)
                if self._wcallbacks and self._fire_write(conn, EXPIRED):
                    fired = True
                if not fired:
                    conn.expire()
