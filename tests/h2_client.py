"""HTTP/2 for the tests: a small client (the `h2` library over a trio stream, TCP or TLS)
and an endpoint that speaks HTTP/2 (`endpoint`).

The client keeps every event it reads, so a test can ask for a stream's response, a
GOAWAY, a reset, or "the connection ended". Every read is bounded by the caller's
`trio.fail_after`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import trio

from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.h2.channel import allow_streams_after_goaway
from proxy.upstreams import Upstream

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Response:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    def __init__(self, stream: trio.abc.Stream, *, upgraded: bool = False) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False  # the server ended the TCP connection
        self.events: list[h2.events.Event] = []
        allow_streams_after_goaway(self.conn)  # h2 alone would break them at a GOAWAY
        if not upgraded:
            self.conn.initiate_connection()

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> H2Client:
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if tls is not None:
            ssl_stream = trio.SSLStream(stream, tls, server_hostname="localhost")
            await ssl_stream.do_handshake()
            assert ssl_stream.selected_alpn_protocol() == "h2"
            stream = ssl_stream
        client = cls(stream)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                await self.stream.send_all(data)
            except trio.BrokenResourceError:
                self.closed = True  # the server is gone; what it sent last is still read

    async def request(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
        end: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
            *headers,
        ]
        self.responses[sid] = Response()
        self.conn.send_headers(sid, fields, end_stream=end and not body)
        await self.flush()
        if body:
            await self.send_body(sid, body, end=end)
        return sid

    async def send_body(self, sid: int, body: bytes, *, end: bool) -> None:
        view = memoryview(body)
        while view:
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                await self.read_some()
                continue
            n = min(window, len(view))
            self.conn.send_data(sid, view[:n].tobytes(), end_stream=end and n == len(view))
            view = view[n:]
            await self.flush()
        if end and not body:
            self.conn.end_stream(sid)
            await self.flush()

    async def read_some(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset after the server's last frames
            data = b""
        if not data:
            self.closed = True
            return
        for ev in self.conn.receive_data(data):
            self.events.append(ev)
            sid = getattr(ev, "stream_id", 0)
            r = self.responses.get(sid) if sid else None
            if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                r.headers = list(ev.headers or ())
            elif isinstance(ev, h2.events.DataReceived) and r is not None:
                r.data += ev.data or b""
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived) and r is not None:
                r.trailers = list(ev.headers or ())
            elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                r.ended = True
            elif isinstance(ev, h2.events.StreamReset) and r is not None:
                r.reset = int(ev.error_code or 0)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
        await self.flush()

    async def response(self, sid: int) -> Response:
        r = self.responses[sid]
        while not (r.ended or r.reset is not None or self.closed):
            await self.read_some()
        return r

    async def until_closed(self) -> None:
        while not self.closed:
            await self.read_some()

    async def get(self, path: str, **kw: object) -> Response:
        return await self.response(await self.request(path, **kw))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.stream.aclose()


# --- the endpoint side ------------------------------------------------------------------------


@asynccontextmanager
async def endpoint(
    upstreams: list[Upstream], timeouts: EndpointTimeouts | None = None
) -> AsyncIterator[Endpoint]:
    ep = Endpoint("h2test", bind="127.0.0.1", port=0, timeouts=timeouts or EndpointTimeouts())
    ep.set_upstreams(upstreams)
    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        yield ep
        nursery.cancel_scope.cancel()
