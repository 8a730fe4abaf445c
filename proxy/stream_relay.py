"""The body of a long response, relayed from the poller's callbacks: one task wait per body.

Why. A held stream (server-sent events, a generation's tokens) relayed by its task parks
that task again for every event, and each wait is made anew: a `recv_wait_first`
coroutine, trio's `WaitTaskRescheduled`, a bound method. For a stream with an event a
second those live about a second, long enough for the garbage collector to promote them,
and their promotions drove young and full collections over everything 9,000 held streams
keep (~500,000 objects: 150-220 ms a full collection, nothing relayed meanwhile;
bench/streams.py, docs/benchmarks.md "Streams at scale"). Here the relay task parks once
for the whole body, and the endpoint's poller (`proxy.poller`: `watch`, `watch_writable`)
does the work of each event in whichever task polls, as `proxy.fastpath` does for
exchanges that fit one read.

When. `proxy.relay.relay` hands the body over once the final response head has gone to the
client and the body is still arriving (chunked, close-delimited, or a Content-Length not
all read yet), on plain connections only: a TLS client or replica (records, not bytes),
a tunnel (101), HTTP/2 (its own relays) and a response to a request whose body still
streams (`relay_while_sending`: its pump task writes to the replica meanwhile) stay on the
task relay.

What each event does, in the callback: the replica is readable -> `recv` (up to
`RECV_SIZE`) -> the response parser (framing, the body's end) -> re-framed as `relay`
does (chunked to HTTP/1.1 clients, close-delimited to HTTP/1.0 ones) -> one send to the
client that never waits. A short send keeps the rest (`pending`) and watches the client for
writable; the replica is not read until the client has taken it (backpressure: at most one
read's worth is held here, the rest waits in the kernel's buffers and in the replica).

Invariants:
- At most one callback is armed at a time: a read callback on the replica's connection
  (deadline `read_idle`) while reading, or a write callback on the client's (deadline
  `client_idle`) while bytes are pending; none while the task runs.
- Nothing of an event outlives it: the two callbacks are bound once per body (`_read_cb`,
  `_write_cb`) and dropped when the body ends, which also breaks the reference cycle they
  make with the relay; the task is woken once, at the end.
- A body ends as `relay` would end it: DONE once all of it went to the client
  (`Exchange.reusable` from the parser; a body whose end comes in the first read after
  its head is sent by the task, which records the exchange in the same step, so that no
  client has such a response before the endpoint's statistics count it; a stream's end
  is sent from the callback, at once); CUT with 502 (the replica reset,
  closed early, or broke the framing), 504 (read-idle timeout), or the client gone
  (`CLIENT_CLOSED`: its hang-up seen on the replica's read callback as `PeerHangup` is, a
  failed send, or no progress for `client_idle`); or an error the task raises (a
  connection closed under it: the endpoint stops; a bug in a callback, which must not
  reach the poller).
- A burst of reads in one callback is bounded (`_READS_PER_CALLBACK`): past it the task is
  woken to checkpoint and go on, so that a fast bulk body cannot hold the poller.
- Cancelled (the endpoint stops): the callbacks are dropped and the task raises; `forward`
  closes the replica's connection as for any unfinished response.
"""

from __future__ import annotations

from typing import Final

import trio
from trio.lowlevel import Abort, Task, current_task, wait_task_rescheduled

from proxy.exchange import CLIENT_CLOSED, CUT, DONE, Exchange, Outcome
from proxy.headers import LAST_CHUNK, chunk
from proxy.poller import EXPIRED, INTERRUPTED, Poller
from proxy.protocol import END, Event, ProtocolError, ResponseParser
from proxy.sockets import RECV_SIZE, Conn, Timeout

# Reads of the replica in one callback before the task is woken to checkpoint (1 MiB).
_READS_PER_CALLBACK: Final = 16

# What the task is woken for.
_RUNNING: Final = 0
_ENDED: Final = 1  # `outcome` is set
_AGAIN: Final = 2  # the read burst's bound: checkpoint, then go on
_ERROR: Final = 3  # `error` is raised by the task


class StreamRelay:
    """One response body, relayed from the poller's callbacks (see the module docstring)."""

    __slots__ = (
        "ex",
        "client",
        "rconn",
        "parser",
        "chunked",
        "poller",
        "read_idle",
        "client_idle",
        "task",
        "parked",
        "state",
        "outcome",
        "error",
        "pending",
        "reads",
        "streamed",
        "_read_cb",
        "_write_cb",
    )

    def __init__(self, ex: Exchange, rconn: Conn, parser: ResponseParser, chunked: bool) -> None:
        self.ex = ex
        self.client = ex.client
        self.rconn = rconn
        self.parser = parser
        self.chunked = chunked  # re-framed chunked to the client (else as it comes)
        self.poller: Poller = rconn.poller
        timeouts = ex.balancer.timeouts
        self.read_idle = timeouts.read_idle
        self.client_idle = timeouts.client_idle
        self.task: Task | None = None
        self.parked = False
        self.state = _RUNNING
        self.outcome: Outcome = CUT
        self.error: BaseException | None = None
        self.pending = b""  # re-framed bytes the client has not taken yet
        self.reads = 0  # reads in the current callback
        self.streamed = False  # body bytes went to the client from here
        self._read_cb = self._on_readable  # bound once: nothing is made per event
        self._write_cb = self._on_writable

    async def run(self) -> Outcome:
        """Relay the rest of the body; how the attempt ended (see the module docstring)."""
        self.task = current_task()
        try:
            while True:
                self.state = _RUNNING
                self.reads = 0
                self._pump()
                if self.state == _RUNNING:
                    self.parked = True
                    await wait_task_rescheduled(self._abort)
                if self.state == _AGAIN:
                    await trio.lowlevel.checkpoint()
                    continue
                if self.state == _ERROR:
                    assert self.error is not None
                    raise self.error
                if self.outcome is DONE and self.pending:
                    return await self._send_last(self.pending)
                return self.outcome
        finally:
            # Break the cycles (the relay and its bound callbacks, the error's traceback).
            self._read_cb = self._write_cb = None  # type: ignore[assignment]
            self.task = None
            self.error = None

    async def _send_last(self, out: bytes) -> Outcome:
        """The body's last bytes, from the task (see `_pump`)."""
        self.pending = b""
        client = self.client
        try:
            taken = client.send_now(out)
            if taken < len(out):
                await client.send_all(out[taken:], self.client_idle)
        except (OSError, Timeout):
            self._client_gone()
            return CUT
        return DONE

    def _abort(self, _: object) -> Abort:
        """Cancelled while parked: drop what is armed. Once woken (the wake-up may be
        queued, `Poller.wake_soon`), the task goes on and meets the cancellation later."""
        if not self.parked:
            return Abort.FAILED
        self.parked = False
        self.poller.unwatch(self.rconn)
        self.poller.unwatch(self.client)
        return Abort.SUCCEEDED

    def _wake(self, state: int) -> None:
        self.state = state
        if self.parked:
            self.parked = False
            assert self.task is not None
            self.poller.wake_soon(self.task)

    def _end(self, outcome: Outcome, status: int = 0) -> None:
        if status:
            self.ex.status = status
        self.outcome = outcome
        self._wake(_ENDED)

    def _client_gone(self) -> None:
        """The client stopped reading or left (as `relay.client_gone`)."""
        ex = self.ex
        ex.status = CLIENT_CLOSED
        ex.close_after = True
        self._end(CUT)

    def _failed(self, exc: BaseException) -> None:
        """An error in a callback (which runs in whichever task polls): the task raises it."""
        self.poller.unwatch(self.rconn)
        self.poller.unwatch(self.client)
        self.error = exc
        self._wake(_ERROR)

    def _on_readable(self, why: int) -> None:
        try:
            if why:
                if why == EXPIRED:
                    self._end(CUT, 504)  # read-idle timeout mid-body
                elif why == INTERRUPTED:  # the client hung up (`PeerHangup` in `relay`)
                    ex = self.ex
                    ex.status = ex.status or CLIENT_CLOSED
                    ex.close_after = True
                    self._end(CUT)
                else:  # CLOSED: the endpoint stops
                    self._failed(trio.ClosedResourceError("connection closed while waiting"))
                return
            self.rconn.maybe_readable = True  # a read edge: bytes (or the end) to read
            self.reads = 0
            self._pump()
        except Exception as exc:  # a bug: this session ends (`Endpoint._serve` logs it)
            self._failed(exc)

    def _on_writable(self, why: int) -> None:
        try:
            if why:
                if why == EXPIRED:
                    self._client_gone()  # took nothing for `client_idle`
                else:
                    self._failed(trio.ClosedResourceError("connection closed while waiting"))
                return
            if not self._send(self.pending):
                return
            self.pending = b""
            if self.parser.done:  # that was the body's end
                self._end(DONE)
                return
            self.reads = 0
            self._pump()
        except Exception as exc:
            self._failed(exc)

    def _send(self, out: bytes) -> bool:
        """Send without waiting: True when the client took all of `out`; else the rest is
        pending and the client watched for writable (or the client is gone, ended)."""
        try:
            taken = self.client.sock.send(out)
        except BlockingIOError:
            taken = 0
        except OSError:
            self._client_gone()
            return False
        if taken == len(out):
            return True
        self.pending = out[taken:]
        self.poller.watch_writable(self.client, self._write_cb, self.client_idle)
        return False

    def _pump(self) -> None:
        """Read the replica while it has bytes, sending each read on; then watch it."""
        rconn = self.rconn
        sock = rconn.sock
        parser = self.parser
        while True:
            if not rconn.maybe_readable:
                self.poller.watch(rconn, self._read_cb, self.read_idle)
                return
            if self.reads >= _READS_PER_CALLBACK:
                self._wake(_AGAIN)
                return
            self.reads += 1
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                rconn.maybe_readable = False
                continue
            except OSError:
                self._end(CUT, 502)  # a reset mid-body: even a close-delimited one is cut
                return
            n = len(data)
            rconn.maybe_readable = n == RECV_SIZE or n == 0 or rconn.peer_closed
            try:
                events = parser.feed(data) if data else parser.feed_eof()
            except ProtocolError:
                self._end(CUT, 502)  # broken framing, or closed before the body's end
                return
            if len(events) == 1 and type(events[0]) is bytes:  # the usual: one piece
                body = events[0]
                out = (chunk(body) if self.chunked else body) if body else b""
            else:
                out = self._frame(events)
            if parser.done:
                self.ex.reusable = parser.reusable
                if not self.streamed:
                    # A body that ends in the first read after its head: the task sends
                    # it and records the exchange in the same step, as for a whole
                    # response (no client has it before the statistics count it).
                    self.pending = out
                elif out and not self._send(out):
                    return  # the rest pending: `_on_writable` ends it once drained
                # A stream's end goes at once, not after its task is scheduled: when
                # thousands of streams end in one second, their tasks queue behind each
                # other's teardown (bench/streams.py: the last event's p99 was 737 ms).
                self._end(DONE)
                return
            if out:
                self.streamed = True
                if not self._send(out):
                    return  # pending (the client is watched), or the client is gone

    def _frame(self, events: list[Event]) -> bytes:
        """The client's bytes for a read's events (body pieces and the end)."""
        parts: list[bytes] = []
        chunked = self.chunked
        for ev in events:
            if type(ev) is bytes:
                if ev:
                    parts.append(chunk(ev) if chunked else ev)
            elif ev is END:
                if chunked:
                    parts.append(LAST_CHUNK)
            else:  # pragma: no cover - the parser emits no head after the final one
                raise ProtocolError(502, "a response head inside a body")
        return b"".join(parts)
