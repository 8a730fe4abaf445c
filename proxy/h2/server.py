"""One HTTP/2 client connection (`serve_h2`): prior knowledge, the h2c upgrade, or ALPN h2.

`proxy.forward.Session` hands a connection over: when its first bytes are the start of the
client preface (`is_preface_start`: cleartext with prior knowledge, or TLS after ALPN chose
"h2", whose clients send the preface first too), or when an HTTP/1.1 request asks for an
h2c upgrade (`is_h2c_upgrade`: answered 101 here, and served as stream 1).

Theory of operation:
- Three kinds of task, in one nursery: this one reads (feeds `h2` and routes events,
  `proxy.h2.channel`), the channel's writer writes, and each request stream has its own
  task (`_serve_stream`), which forwards it by the endpoint's upstream protocol
  (`proxy.h2.to_http1`, `proxy.h2.to_h2c`). Each request is balanced on its own.
- Limits: at most `MAX_CONCURRENT_STREAMS` streams open (SETTINGS; `h2` refuses more),
  header lists up to `MAX_HEAD_BYTES` (SETTINGS_MAX_HEADER_LIST_SIZE; larger is a
  connection error from `h2`'s decoder), and each stream's request body held no larger
  than its window (`STREAM_WINDOW`, and all streams together `CONNECTION_WINDOW`): data is
  credited back only once forwarded.
- Time: the preface and the client's first SETTINGS are due within `header_read` of the
  hand-over; afterwards a connection with no stream open for `client_idle` is closed with
  GOAWAY(NO_ERROR). With streams open the client may stay silent (a long generation).
- A bad frame (`h2`'s ProtocolError) ends the connection with the GOAWAY `h2` queued, its
  error code the protocol's (PROTOCOL_ERROR, FLOW_CONTROL_ERROR, COMPRESSION_ERROR,
  ENHANCE_YOUR_CALM ...); nothing of it reaches a replica.
- A client RST_STREAM cancels that stream's task at once (`StreamIO.scope`), which cuts
  the replica's request; the client's connection closing cancels them all.
- Draining (`Balancer.drain_started`) or a client's GOAWAY:
  a GOAWAY(NO_ERROR) naming the last stream taken, the open streams run to their end
  (within the endpoint's drain deadline, which cancels this whole task), streams opened
  after it are refused (REFUSED_STREAM, safe for the client to retry elsewhere), then a
  last GOAWAY and the close.
"""

from __future__ import annotations

import logging
from typing import Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from proxy.auth import Refused as AuthRefused
from proxy.balancer import Balancer
from proxy.exchange import CLIENT_CLOSED
from proxy.h2.channel import END, Channel, Head, StreamGone, StreamIO
from proxy.h2.client_stream import ClientStream
from proxy.h2.messages import request_head
from proxy.h2.to_h2c import forward_h2c
from proxy.h2.to_http1 import forward_http1
from proxy.linger import linger
from proxy.protocol import MAX_HEAD_BYTES, Framing, ProtocolError, RequestHead
from proxy.sockets import Conn, Timeout

log = logging.getLogger("proxy")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_CONCURRENT_STREAMS: Final = 100
STREAM_WINDOW: Final = 256 * 1024
CONNECTION_WINDOW: Final = 1024 * 1024
_CLOSE_FLUSH_S: Final = 1.0  # how long the last frames (a GOAWAY) may take to go out
_REFUSED_STREAM: Final = 0x7
_SWITCHING: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
)


def is_preface_start(data: bytes) -> bool:
    """Whether a connection's first bytes begin HTTP/2's client preface (4 bytes tell:
    no HTTP/1.1 method starts "PRI ")."""
    n = min(len(data), len(PREFACE))
    return n >= 4 and data[:n] == PREFACE[:n]


def is_h2c_upgrade(head: RequestHead, conn: Conn) -> bool:
    """An HTTP/1.1 request that asks to go on in HTTP/2 (RFC 7540 3.2): `Upgrade: h2c`
    and one HTTP2-Settings, both named in Connection, no body, not over TLS."""
    if conn.secure or head.framing is not Framing.NONE or head.http_version != "1.1":
        return False
    upgrade = settings = 0
    tokens: set[bytes] = set()
    for name, value in head.headers:
        n = name.lower()
        if n == b"upgrade":
            upgrade += b"h2c" in (t.strip().lower() for t in value.split(b","))
        elif n == b"http2-settings":
            settings += 1
        elif n == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return bool(upgrade) and settings == 1 and {b"upgrade", b"http2-settings"} <= tokens


def _settings_header(head: RequestHead) -> bytes:
    for name, value in head.headers:
        if name.lower() == b"http2-settings":
            return value.strip()
    return b""  # pragma: no cover - is_h2c_upgrade checked it


def _connection(upgrade: RequestHead | None) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=True,
    )
    conn = h2.connection.H2Connection(config)
    conn.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD_BYTES,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
        },
    )
    if upgrade is None:
        conn.initiate_connection()
    else:
        conn.initiate_upgrade_connection(_settings_header(upgrade))
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return conn


async def serve_h2(
    balancer: Balancer, conn: Conn, first: bytes, upgrade: RequestHead | None = None
) -> None:
    """Serve `conn` in HTTP/2 until it closes, errs, idles out or the endpoint drains.

    `first`: what was read of the connection already (the preface's start; after an
    upgrade, whatever followed the request, normally nothing). `upgrade`: the HTTP/1.1
    request of an h2c upgrade (`is_h2c_upgrade`): 101 is sent here, and it is stream 1.
    Returns with the connection still open: the caller closes it.
    """
    if upgrade is not None:
        try:
            await conn.send_all(_SWITCHING, balancer.timeouts.client_idle)
        except (OSError, Timeout):
            return
        # The head's own framing fields stay HTTP/1.1's: the stream carries no body.
        upgrade.headers = [
            (n, v)
            for n, v in upgrade.headers
            if n.lower() not in (b"connection", b"upgrade", b"http2-settings")
        ]
    try:
        h = _connection(upgrade)
    except h2.exceptions.ProtocolError:  # a bad HTTP2-Settings
        return
    server = _Server(balancer, conn, Channel(conn, h, balancer.timeouts.client_idle))
    await server.run(first, upgrade)


class _Server:
    __slots__ = (
        "b",
        "conn",
        "channel",
        "peer",
        "trusted",
        "proto",
        "active",
        "closing",
        "broken",
        "done",
        "writer_done",
        "_nursery",
    )

    def __init__(self, balancer: Balancer, conn: Conn, channel: Channel) -> None:
        self.b = balancer
        self.conn = conn
        self.channel = channel
        self.peer = conn.peer.encode()
        self.trusted = balancer.is_trusted(conn.peer)
        self.proto = b"https" if conn.secure else b"http"
        self.active = 0  # streams with a task
        self.closing = False  # a GOAWAY went out or came in: no new stream is taken
        self.broken = False  # a protocol error: h2's GOAWAY says why, and no other follows
        self.done = trio.Event()  # time to close
        self.writer_done = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, first: bytes, upgrade: RequestHead | None) -> None:
        channel = self.channel
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write)
            nursery.start_soon(self._watch_drain)
            nursery.start_soon(self._read, first)
            if upgrade is not None:
                io = channel.streams[1] = StreamIO(1)
                io.inbox.append(Head(_upgrade_fields(upgrade), True))
                io.inbox.append(END)
                self._start_stream(io)
            await self.done.wait()
            if not channel.closed:
                if not self.broken:
                    try:
                        channel.h2.close_connection()  # the last GOAWAY (NO_ERROR)
                    except h2.exceptions.ProtocolError:
                        pass  # closed already: a GOAWAY of h2's own is queued
                channel.close()
                with trio.move_on_after(_CLOSE_FLUSH_S):
                    await self.writer_done.wait()
            nursery.cancel_scope.cancel()
        if not channel.closed:
            await linger(self.conn)  # the GOAWAY is not reset away

    async def _write(self) -> None:
        try:
            await self.channel.writer()
        finally:
            self.writer_done.set()
            self.done.set()

    async def _watch_drain(self) -> None:
        await self.b.drain_started.wait()
        self._go_away()

    def _go_away(self) -> None:
        if not self.closing:
            self.closing = True
            self.channel.send_goaway_soft(self.channel.h2.highest_inbound_stream_id)
        if not self.active:
            self.done.set()

    async def _read(self, first: bytes) -> None:
        b = self.b
        conn = self.conn
        channel = self.channel
        deadline = trio.current_time() + b.timeouts.header_read
        settled = False  # the client's first SETTINGS arrived
        data = first
        try:
            while True:
                if data:
                    try:
                        events = channel.receive(data)
                    except h2.exceptions.ProtocolError as exc:
                        log.debug("http/2 from %s: %s", conn.peer, exc)
                        self.broken = True
                        channel.close()  # h2 queued the GOAWAY with the error's code
                        return
                    for ev in events:
                        if isinstance(ev, h2.events.RequestReceived):
                            self._new_stream(ev.stream_id)
                        elif isinstance(ev, h2.events.RemoteSettingsChanged):
                            settled = True
                        elif isinstance(ev, h2.events.ConnectionTerminated):
                            if ev.error_code:
                                return
                            self._go_away()
                    if channel.closed:
                        return
                if settled:
                    timeout = b.timeouts.client_idle
                else:
                    timeout = deadline - trio.current_time()
                    if timeout <= 0:
                        return  # no preface and SETTINGS within header_read
                try:
                    data = await conn.recv(timeout)
                except Timeout:
                    if not settled:
                        return
                    if self.active:
                        data = b""
                        continue
                    self.closing = True  # idle: the last GOAWAY, and close
                    return
                if not data:
                    return
        except (OSError, trio.ClosedResourceError):
            channel.lost()
        finally:
            self.done.set()

    def _new_stream(self, sid: int) -> None:
        channel = self.channel
        io = channel.streams[sid]
        if self.closing:  # after our GOAWAY, which named an earlier stream as the last
            channel.reset_stream(sid, _REFUSED_STREAM)
            channel.forget(sid)
            return
        self._start_stream(io)

    def _start_stream(self, io: StreamIO) -> None:
        assert self._nursery is not None
        self.active += 1
        self._nursery.start_soon(self._serve_stream, io)

    async def _serve_stream(self, io: StreamIO) -> None:
        channel = self.channel
        cs = ClientStream(
            self.b, channel, io, peer=self.peer, trusted=self.trusted, proto=self.proto
        )
        try:
            with trio.CancelScope() as scope:
                io.scope = scope
                if io.reset is not None:
                    scope.cancel()
                await self._forward(cs, io)
        except StreamGone:
            pass
        except Exception:
            log.exception("endpoint %s: http/2 stream from %s failed", self.b.name, self.conn.peer)
            cs.reset(0x2)  # INTERNAL_ERROR
        finally:
            io.scope = None
            if io.reset is None and not channel.closed:
                state = _state(channel, io.stream_id)
                if state == "HALF_CLOSED_LOCAL":
                    cs.reset(0)  # answered before the whole body came: no need to send it
                elif state not in ("CLOSED", ""):
                    cs.reset()  # the response was cut: the client must not take it as whole
            channel.forget(io.stream_id)
            self.active -= 1
            if self.closing and not self.active:
                self.done.set()

    async def _forward(self, cs: ClientStream, io: StreamIO) -> None:
        b = self.b
        item = io.inbox.popleft()
        assert isinstance(item, Head)
        try:
            head = request_head(item.headers, item.end)
        except ProtocolError as exc:
            await cs.answer(None, exc.status, exc.reason)
            return
        guard = b.guard
        if guard is not None:
            refused = await guard.admit(head)
            if refused is not None:
                await self._unauthorized(cs, head, refused)
                return
        if b.upstream_h2c:
            await forward_h2c(cs, head, item.headers)
        else:
            await forward_http1(cs, head)

    async def _unauthorized(
        self, cs: ClientStream, head: RequestHead, refused: AuthRefused
    ) -> None:
        b = self.b
        assert b.guard is not None
        start = trio.current_time()
        b.began()
        status = CLIENT_CLOSED
        try:
            raw = b.guard.answer(head, refused, close=False)
            status = await cs.answer_bytes(raw, head_request=head.method == b"HEAD")
        finally:
            b.finished(None, status, start)


def _state(channel: Channel, sid: int) -> str:
    """The stream's state in `h2` ("OPEN", "HALF_CLOSED_LOCAL", ...; "" once forgotten)."""
    stream = channel.h2.streams.get(sid)
    if stream is None:
        return ""
    return str(stream.state_machine.state.name)


def _upgrade_fields(head: RequestHead) -> list[tuple[bytes, bytes]]:
    """The upgrade request as HTTP/2 fields (stream 1)."""
    authority = b""
    rest: list[tuple[bytes, bytes]] = []
    for name, value in head.headers:
        n = name.lower()
        if n == b"host":
            authority = value
        elif n not in (b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te"):
            rest.append((n, value))
    return [
        (b":method", head.method),
        (b":scheme", b"http"),
        (b":authority", authority),
        (b":path", head.target),
        *rest,
    ]
