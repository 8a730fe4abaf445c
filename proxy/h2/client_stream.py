"""One client stream as its forwarders see it: its request body, its response, its answers.

`to_http1` and `to_h2c` read the request body from here (`next_item`: data is credited
back to the client with `consumed` once passed on) and write the response through here
(head, data within the client's windows, trailers, end). The proxy's own answers (401,
502, 503, 504 ...) are the HTTP/1.1 answers of `proxy.answers` / `proxy.auth` read back
into one HTTP/2 response, so both protocols answer alike (text or JSON, Retry-After).
"""

from __future__ import annotations

from proxy.answers import answer_for
from proxy.balancer import Balancer
from proxy.h2.channel import Channel, Item, StreamGone, StreamIO
from proxy.h2.messages import h2_response_fields
from proxy.protocol import ProtocolError, RequestHead, ResponseHead, ResponseParser

CANCEL = 0x8


class ClientStream:
    """A request stream of an HTTP/2 client connection, and what the forwarders need."""

    __slots__ = ("balancer", "channel", "io", "peer", "trusted", "proto", "status", "sent")

    def __init__(
        self,
        balancer: Balancer,
        channel: Channel,
        io: StreamIO,
        *,
        peer: bytes,
        trusted: bool,
        proto: bytes,
    ) -> None:
        self.balancer = balancer
        self.channel = channel
        self.io = io
        self.peer = peer
        self.trusted = trusted
        self.proto = proto  # b"http" or b"https": X-Forwarded-Proto, :scheme to an h2c replica
        self.status = 0  # the response's status once its head went out
        self.sent = False  # a response head went out: no other answer can follow

    async def next_item(self) -> Item:
        """The next piece of the request (data, trailers, END), within `client_idle`."""
        return await self.channel.next_item(self.io, self.balancer.timeouts.client_idle)

    def consumed(self, n: int) -> None:
        self.channel.consumed(self.io.stream_id, n)

    def send_head(self, fields: list[tuple[bytes, bytes]], *, end: bool, status: int) -> None:
        self.channel.send_headers(self.io, fields, end)
        self.status = status
        self.sent = True

    async def send_data(self, data: bytes, *, end: bool = False) -> None:
        await self.channel.send_data(self.io, data, end, self.balancer.timeouts.client_idle)

    def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.channel.send_headers(self.io, fields, True)

    def end(self) -> None:
        self.channel.end_stream(self.io)

    def reset(self, code: int = CANCEL) -> None:
        self.channel.reset_stream(self.io.stream_id, code)

    async def answer_bytes(self, raw: bytes, *, head_request: bool) -> int:
        """Send an HTTP/1.1 answer made by the proxy (`proxy.answers`) as this stream's
        response; its status. Raises StreamGone."""
        try:
            events = ResponseParser(head_request=head_request).feed(raw)
        except ProtocolError:  # pragma: no cover - the proxy's own answers parse
            events = []
        head = events[0] if events else None
        if not isinstance(head, ResponseHead):  # pragma: no cover - as above
            self.reset()
            return 502
        body = b"".join(e for e in events[1:] if type(e) is bytes)
        fields = h2_response_fields(head)
        if not body or head_request:
            self.send_head(fields, end=True, status=head.status)
        else:
            self.send_head(fields, end=False, status=head.status)
            await self.send_data(body, end=True)
        return head.status

    async def answer(
        self, head: RequestHead | None, status: int, message: str, *, retry_after: int | None = None
    ) -> int:
        """The proxy's own error answer, in the form the request asks for; or a reset
        when a response has begun already. Never raises."""
        if self.sent:
            self.reset()
            return status
        try:
            raw = answer_for(head, status, message, close=False, retry_after=retry_after)
            return await self.answer_bytes(
                raw, head_request=head is not None and head.method == b"HEAD"
            )
        except StreamGone:
            return status
