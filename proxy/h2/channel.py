"""One HTTP/2 connection: the `h2` state machine driven over one of the proxy's `Conn`s.

`h2` is sans-I/O: bytes in (`receive_data`), events out, frames to send buffered inside
it. A `Channel` adds the I/O, with the same sockets and poller as HTTP/1.1 (no event loop
of its own, no trio streams), for both sides: the client's connection (`proxy.h2.server`)
and each h2c connection to a replica (`proxy.h2.upstream`).

Theory of operation:
- One task reads (the owner's `read_loop`-like loop calls `receive`), one task writes
  (`writer`), and each stream's tasks only touch the `h2` state and their `StreamIO`. A
  stream task that makes frames calls `flush()`, which only wakes the writer: no task but
  the writer ever waits on the socket to send, so a peer that does not read can never
  stop the reader (the HTTP/2 deadlock of both sides writing), and frames leave in the
  order `h2` made them.
- Inbound: `receive` routes each event to its stream's `StreamIO` inbox (head, data,
  trailers, end, reset) and wakes that stream's task. Data is acknowledged to the peer
  (`consumed`) only when the stream's consumer has passed it on, so what waits in an inbox
  is bounded by the window the proxy advertised: a slow replica slows the client down
  instead of filling memory. Data for a stream nobody owns any more is acknowledged at
  once (the connection window must not shrink for it).
- Outbound: `send_data` sends no more than the peer's flow-control windows allow and
  waits (bounded by its timeout) for a WINDOW_UPDATE otherwise; besides, no more than
  `HIGH_WATER` bytes of data wait unsent at once, whatever the windows, so a slow peer
  holds back the sender rather than the proxy's memory.
- A reset from the peer (RST_STREAM), the connection's end (socket gone, GOAWAY with an
  error) or a timeout ends only the waits of the streams concerned, with `StreamGone`.
- `h2.ProtocolError` from `receive` (a bad frame): `h2` has already queued the GOAWAY with
  the right error code; the owner flushes it and closes. Nothing of that frame has been
  routed anywhere.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import h2.connection
import h2.events
import h2.exceptions
import trio
from hyperframe.frame import GoAwayFrame

from proxy.sockets import Conn, Timeout

HIGH_WATER: Final = 256 * 1024  # bytes of DATA made but not yet sent, at most, per channel
CONNECTION_GONE: Final = -1  # `StreamIO.reset` when the whole connection ended


class StreamGone(Exception):
    """The stream ended under its task: reset by the peer, the connection lost, a timeout."""


class Head:
    """A header section that opens a message (request or response; `info`: 1xx)."""

    __slots__ = ("headers", "end", "info")

    def __init__(self, headers: list[tuple[bytes, bytes]], end: bool, info: bool = False) -> None:
        self.headers = headers
        self.end = end  # END_STREAM came with it (no body, no trailers)
        self.info = info


class Trailers:
    __slots__ = ("headers",)

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers


class Data:
    __slots__ = ("data", "flow")

    def __init__(self, data: bytes, flow: int) -> None:
        self.data = data
        self.flow = flow  # flow-controlled length (padding included): what `consumed` credits


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = _End()
Item = Head | Trailers | Data | _End


class StreamIO:
    """One stream's inbox, and the events its tasks wait on."""

    __slots__ = ("stream_id", "inbox", "inbound", "window", "reset", "scope")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        # A client stream's task runs in this scope: the peer's reset cancels it at once,
        # wherever it waits (on a replica above all, which is then cut).
        self.scope: trio.CancelScope | None = None
        self.inbox: deque[Item] = deque()
        self.inbound = trio.Event()  # set when the inbox gains an item or the stream ends
        self.window = trio.Event()  # set when the peer's window may have opened
        self.reset: int | None = None  # the peer's RST_STREAM code, or CONNECTION_GONE

    def wake(self) -> None:
        self.inbound.set()
        self.window.set()

    def ended_by_peer(self, code: int) -> None:
        if self.reset is None:
            self.reset = code
        self.wake()
        if self.scope is not None:
            self.scope.cancel()


def allow_streams_after_goaway(h2conn: h2.connection.H2Connection) -> None:
    """Let `h2` go on with the streams a GOAWAY leaves running (RFC 9113 6.8).

    `h2` takes any GOAWAY, sent or received, as the end of the connection (state CLOSED,
    where every later frame is a ProtocolError), so a graceful GOAWAY would break the very
    streams it promises to finish. Here CLOSED accepts what OPEN accepts; opening new
    streams after a GOAWAY is this package's to refuse (`server`, `upstream`), and after a
    real error the connection is closed at once anyway.
    """
    sm = h2conn.state_machine
    table = dict(sm._transitions)
    for (state, given), _ in list(table.items()):
        if state in (
            h2.connection.ConnectionState.SERVER_OPEN,
            h2.connection.ConnectionState.CLIENT_OPEN,
        ):
            table.setdefault(
                (h2.connection.ConnectionState.CLOSED, given),
                (None, h2.connection.ConnectionState.CLOSED),
            )
    sm._transitions = table  # on this instance only


class Channel:
    """An HTTP/2 connection over `conn` (see the module docstring)."""

    def __init__(self, conn: Conn, h2conn: h2.connection.H2Connection, send_timeout: float) -> None:
        allow_streams_after_goaway(h2conn)
        self.conn = conn
        self.h2 = h2conn
        self.send_timeout = send_timeout
        self.streams: dict[int, StreamIO] = {}
        self.closed = False  # the socket is gone or the connection is over: nothing more
        self.goaway_last: int | None = None  # the peer's GOAWAY: the last stream it serves
        self._wake_writer = trio.Event()
        self._drained = trio.Event()
        self._raw = bytearray()  # frames made outside `h2` (a graceful GOAWAY)
        self._queued = 0  # DATA bytes made but not yet taken by the writer
        self._sending = 0  # DATA bytes the writer is sending
        self._closing = False

    # The writer side.

    def flush(self) -> None:
        """Have the writer send what `h2` holds (never waits)."""
        self._wake_writer.set()

    async def writer(self) -> None:
        """Send what `h2` makes until `close` (then the rest) or the socket fails."""
        conn = self.conn
        try:
            while True:
                await self._wake_writer.wait()
                self._wake_writer = trio.Event()
                data = self.h2.data_to_send()
                if self._raw:
                    data += bytes(self._raw)
                    self._raw.clear()
                self._sending, self._queued = self._queued, 0
                if data:
                    await conn.send_all(data, self.send_timeout)
                self._sending = 0
                self._drained.set()
                self._drained = trio.Event()
                if self._closing:
                    return
        except (OSError, Timeout, trio.ClosedResourceError):
            self.lost()

    def send_goaway_soft(self, last_stream_id: int) -> None:
        """A GOAWAY (NO_ERROR) that leaves the streams up to `last_stream_id` running:
        built by hand, as `h2.close_connection` would end them all."""
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0)
        self._raw += frame.serialize()
        self.flush()

    def close(self) -> None:
        """The writer sends what is left (a final GOAWAY, say), then returns."""
        self._closing = True
        self.flush()

    def lost(self) -> None:
        """The connection is over: every stream's wait ends with `StreamGone`."""
        self.closed = True
        self._closing = True
        self._wake_writer.set()
        self._drained.set()
        for io in list(self.streams.values()):
            io.ended_by_peer(CONNECTION_GONE)

    # The reader side.

    def receive(self, data: bytes) -> list[h2.events.Event]:
        """Feed bytes read from the socket; route the events to their streams.

        Returns the events the owner handles itself: a new request (server side), and the
        connection's own (settings, GOAWAY). Raises h2.exceptions.ProtocolError (the GOAWAY
        is queued: flush, then close).
        """
        events = self.h2.receive_data(data)
        own: list[h2.events.Event] = []
        streams = self.streams
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id
                io = streams.get(sid)
                if io is None or io.reset is not None:
                    self._credit(sid, ev.flow_controlled_length)
                else:
                    io.inbox.append(Data(ev.data or b"", ev.flow_controlled_length))
                    io.inbound.set()
            elif isinstance(ev, h2.events.StreamEnded):
                self._put(ev.stream_id, END)
            elif isinstance(ev, h2.events.RequestReceived):
                streams[ev.stream_id] = io = StreamIO(ev.stream_id)
                io.inbox.append(Head(list(ev.headers or ()), ev.stream_ended is not None))
                own.append(ev)
            elif isinstance(ev, h2.events.ResponseReceived):
                self._put(ev.stream_id, Head(list(ev.headers or ()), ev.stream_ended is not None))
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                self._put(ev.stream_id, Head(list(ev.headers or ()), False, info=True))
            elif isinstance(ev, h2.events.TrailersReceived):
                self._put(ev.stream_id, Trailers(list(ev.headers or ())))
            elif isinstance(ev, h2.events.StreamReset):
                io = streams.get(ev.stream_id)
                if io is not None:
                    io.ended_by_peer(int(ev.error_code or 0) or 8)  # NO_ERROR still ends it
            elif isinstance(ev, h2.events.WindowUpdated):
                if ev.stream_id:
                    io = streams.get(ev.stream_id)
                    if io is not None:
                        io.window.set()
                else:
                    self._wake_windows()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self._wake_windows()  # the initial window size may have changed
                own.append(ev)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway_last = ev.last_stream_id or 0
                if ev.error_code:
                    self.lost()
                own.append(ev)
            else:
                own.append(ev)
        self.flush()  # SETTINGS and PING acknowledgements, WINDOW_UPDATEs, a GOAWAY
        return own

    def _put(self, sid: int, item: Item) -> None:
        io = self.streams.get(sid)
        if io is not None and io.reset is None:
            io.inbox.append(item)
            io.inbound.set()

    def _wake_windows(self) -> None:
        for io in self.streams.values():
            io.window.set()

    def _credit(self, sid: int, n: int) -> None:
        if n:
            try:
                self.h2.acknowledge_received_data(n, sid)
            except h2.exceptions.ProtocolError:
                return  # the connection is closed
            self.flush()

    # What stream tasks call.

    def open(self, sid: int) -> StreamIO:
        """The `StreamIO` of a stream this side opens (client side)."""
        io = self.streams[sid] = StreamIO(sid)
        return io

    def forget(self, sid: int) -> None:
        """The stream's task is done with it; what still arrives for it is credited back."""
        io = self.streams.pop(sid, None)
        if io is not None:
            for item in io.inbox:
                if isinstance(item, Data):
                    self._credit(sid, item.flow)

    def consumed(self, sid: int, n: int) -> None:
        """`n` flow-controlled bytes of `sid` were passed on: the peer may send more."""
        self._credit(sid, n)

    async def next_item(self, io: StreamIO, timeout: float) -> Item:  # noqa: ASYNC109
        """The stream's next inbound item. Raises StreamGone (reset, connection lost,
        nothing within `timeout`)."""
        while not io.inbox:
            if io.reset is not None or self.closed:
                raise StreamGone(io.reset)
            io.inbound = trio.Event()
            with trio.move_on_after(timeout):
                await io.inbound.wait()
                continue
            raise StreamGone("timeout")
        return io.inbox.popleft()

    def reset_stream(self, sid: int, code: int) -> None:
        """RST_STREAM with `code`, unless the stream is over already."""
        if self.closed:
            return
        try:
            self.h2.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:
            return  # closed already (both ends sent END_STREAM, or reset)
        self.flush()

    async def send_data(self, io: StreamIO, data: bytes, end: bool, timeout: float) -> None:  # noqa: ASYNC109
        """Send `data` on the stream within the peer's windows (END_STREAM with the last
        frame when `end`). Raises StreamGone (reset, lost, a window shut past `timeout`)."""
        h = self.h2
        sid = io.stream_id
        view = memoryview(data)
        while True:
            if io.reset is not None or self.closed:
                raise StreamGone(io.reset)
            if self._queued + self._sending >= HIGH_WATER:
                drained = self._drained
                with trio.move_on_after(timeout):
                    await drained.wait()
                    continue
                raise StreamGone("timeout")
            try:
                window = h.local_flow_control_window(sid)
                n = min(window, h.max_outbound_frame_size, len(view))
                if n or not view:
                    last = end and n == len(view)
                    h.send_data(sid, view[:n].tobytes(), end_stream=last)
                    self._queued += n
                    self.flush()
                    view = view[n:]
                    if not view:
                        return
                    continue
            except h2.exceptions.ProtocolError as exc:
                raise StreamGone("closed") from exc
            io.window = trio.Event()
            with trio.move_on_after(timeout):
                await io.window.wait()
                continue
            raise StreamGone("timeout")

    def send_headers(self, io: StreamIO, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        """A header section (head or trailers). Raises StreamGone."""
        if io.reset is not None or self.closed:
            raise StreamGone(io.reset)
        try:
            self.h2.send_headers(io.stream_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone("closed") from exc
        self.flush()

    def end_stream(self, io: StreamIO) -> None:
        if io.reset is not None or self.closed:
            raise StreamGone(io.reset)
        try:
            self.h2.end_stream(io.stream_id)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone("closed") from exc
        self.flush()
