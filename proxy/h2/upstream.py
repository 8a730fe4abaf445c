"""The h2c connections to an endpoint's replicas (`upstream_protocol = "h2c"`), shared by
every client connection of the endpoint.

Theory of operation:
- Per replica, a few HTTP/2 connections spoken with prior knowledge: a request opens a
  stream on the least loaded one that has room under the replica's
  SETTINGS_MAX_CONCURRENT_STREAMS and has not been told GOAWAY, or on a new connection
  (connected like any, `proxy.connector`: hedged, a failure marks the replica suspect);
  one connect at a time per replica, the requests that find none with room wait for it.
- Each connection has one reading task and its channel's writer (`proxy.h2.channel`),
  run in the endpoint's background nursery (`Balancer.background`, the one its poller
  runs in): the connection outlives the client connection that opened it, never the
  endpoint. They end when the connection does: the replica closes it or breaks HTTP/2,
  it idles `client_idle` with no stream (GOAWAY, close), its replica left the set and
  its last stream ended, or the endpoint stops (that nursery is cancelled).
  An unexpected error in them is logged and ends that connection only.
- A replica's GOAWAY keeps the streams it names as taken running; a stream above its
  last stream id was never processed (`StreamIO.reset` CONNECTION_GONE with the id above
  `goaway_last`, or REFUSED_STREAM): `never_processed` says it may go elsewhere.
"""

from __future__ import annotations

import logging
import weakref
from typing import Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from proxy.balancer import Balancer
from proxy.connector import open_connection
from proxy.h2.attempt import Attempt
from proxy.h2.channel import Channel, StreamGone, StreamIO
from proxy.sockets import Conn, Timeout
from proxy.upstreams import Upstream

log = logging.getLogger("proxy")

STREAM_WINDOW: Final = 1024 * 1024
CONNECTION_WINDOW: Final = 4 * 1024 * 1024
_REFUSED_STREAM: Final = 0x7
_CLOSE_FLUSH_S: Final = 1.0


class H2cConn:
    """One h2c connection to a replica."""

    __slots__ = ("upstream", "conn", "channel", "retired")

    def __init__(self, upstream: Upstream, conn: Conn, channel: Channel) -> None:
        self.upstream = upstream
        self.conn = conn
        self.channel = channel
        self.retired = False  # its replica left the set: no new stream

    def has_room(self) -> bool:
        ch = self.channel
        if ch.closed or self.retired or ch.goaway_last is not None:
            return False
        h = ch.h2
        return bool(h.open_outbound_streams < h.remote_settings.max_concurrent_streams)

    def never_processed(self, io: StreamIO) -> bool:
        """The replica provably did not act on the stream (refused, or above its GOAWAY)."""
        if io.reset == _REFUSED_STREAM:
            return True
        last = self.channel.goaway_last
        return io.reset is not None and last is not None and io.stream_id > last


class H2cPool:
    """The h2c connections of one endpoint (see the module docstring)."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.conns: dict[Upstream, list[H2cConn]] = {}
        self._seen: tuple[Upstream, ...] = ()
        self._connecting: dict[Upstream, trio.Event] = {}  # a connect under way

    def _retain(self) -> None:
        """Retire the connections of replicas that left the set."""
        current = self.balancer.upstreams.upstreams
        if current is self._seen:
            return
        self._seen = current
        for up in [u for u in self.conns if u not in current]:
            for c in self.conns.pop(up):
                c.retired = True
                if not c.channel.streams:
                    _close_gracefully(c)

    async def open_stream(
        self, attempt: Attempt, up: Upstream, fields: list[tuple[bytes, bytes]], end: bool
    ) -> tuple[H2cConn, StreamIO] | None:
        """A new stream to `up` (or to a replica raced in while its connect hung: the
        attempt is switched to it) with its request head sent; None when no connect
        succeeded (or the stream could not be opened: the caller tries the next one)."""
        self._retain()
        while True:
            ready = [c for c in self.conns.get(up, ()) if c.has_room()]
            if ready:
                c: H2cConn | None = min(ready, key=lambda c: len(c.channel.streams))
                break
            connecting = self._connecting.get(up)
            if connecting is not None:  # one connect at a time per replica: wait for it
                await connecting.wait()
                continue
            connecting = self._connecting[up] = trio.Event()
            try:
                c = await self._connect(attempt, up)
            finally:
                del self._connecting[up]
                connecting.set()
            break
        if c is None:
            return None
        ch = c.channel
        sid = ch.h2.get_next_available_stream_id()
        io = ch.open(sid)
        try:
            ch.send_headers(io, fields, end)
        except StreamGone:  # over the replica's stream limit after all, or closed meanwhile
            ch.forget(sid)
            return None
        return c, io

    async def _connect(self, attempt: Attempt, up: Upstream) -> H2cConn | None:
        b = self.balancer
        opened = await open_connection(b, up, attempt.tried)
        if opened is None:
            return None
        got, conn = opened
        if got is not up:
            attempt.switch(got)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        h = h2.connection.H2Connection(config)
        h.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        h.initiate_connection()
        h.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        c = H2cConn(got, conn, Channel(conn, h, b.timeouts.read_idle))
        c.channel.flush()
        self.conns.setdefault(got, []).append(c)
        background = b.background
        if background is None:
            raise RuntimeError(f"endpoint {b.name!r} is not running")  # `Endpoint.run` sets it
        background.start_soon(self._run, c, name=f"h2c {got.host}:{got.port}")
        return c

    async def _run(self, c: H2cConn) -> None:
        written = trio.Event()

        async def write() -> None:
            try:
                await c.channel.writer()
            finally:
                written.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                await self._read(c)
                c.channel.close()  # the writer sends what is left (a GOAWAY), then returns
                with trio.move_on_after(_CLOSE_FLUSH_S):
                    await written.wait()
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("h2c connection to %s failed; closed it", c.conn.peer)
        finally:
            c.channel.lost()
            c.conn.close()
            conns = self.conns.get(c.upstream)
            if conns is not None and c in conns:
                conns.remove(c)

    async def _read(self, c: H2cConn) -> None:
        ch = c.channel
        conn = c.conn
        idle_since = trio.current_time()
        while True:
            if c.retired and not ch.streams:
                _close_gracefully(c)
                return
            try:
                data = await conn.recv(self.balancer.timeouts.client_idle)
            except Timeout:
                now = trio.current_time()
                if ch.streams:
                    idle_since = now
                elif now - idle_since >= self.balancer.timeouts.client_idle:
                    _close_gracefully(c)
                    return
                continue
            except (OSError, trio.ClosedResourceError):
                return
            if not data:
                return
            try:
                events = ch.receive(data)
            except h2.exceptions.ProtocolError as exc:
                log.warning("h2c replica %s broke HTTP/2: %s", conn.peer, exc)
                return
            for ev in events:
                if isinstance(ev, h2.events.ConnectionTerminated) and not ch.streams:
                    return
            if ch.closed:
                return
            idle_since = trio.current_time()


def _close_gracefully(c: H2cConn) -> None:
    try:
        c.channel.h2.close_connection()
    except h2.exceptions.ProtocolError:
        pass
    c.channel.close()


_POOLS: weakref.WeakKeyDictionary[Balancer, H2cPool] = weakref.WeakKeyDictionary()


def pool_for(balancer: Balancer) -> H2cPool:
    pool = _POOLS.get(balancer)
    if pool is None:
        pool = _POOLS[balancer] = H2cPool(balancer)
    return pool
