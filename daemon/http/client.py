"""berthd's one HTTP/1.1 client helper: one request on a fresh trio stream, h11 for the protocol.

`request(address, "GET", target, headers)` is an async context manager: it connects (a Unix
socket path or TCP host:port), sends the request, reads the response head and yields a
`ClientResponse` (`status`, `headers`), whose body arrives chunk by chunk with `async for`
(or at once, bounded, with `read()`). Leaving the block closes the stream, whether the body
was read or not: a caller that wants only the status (a health probe, Podman's ping) reads
the head and leaves. Every request says `Connection: close`; nothing is pooled.

Invariants:
- Nothing here sets a deadline: the caller bounds the exchange with its own cancel scope,
  and cancellation (of a probe, of `berth logs -f`) ends it at once and closes the stream.
- The only exceptions that leave are `HttpClientError`s: `ConnectFailed` (nobody answered
  the connect), `ConnectionBroken` (the stream failed mid-exchange), `BadResponse` (what came
  back is not HTTP/1.x; it keeps the first line received, for the message) and the base class
  for a request h11 will not send. An HTTP error status is not an exception: it is a status.
  Callers translate these at their boundary (RuntimeFailure, ProbeResult, False).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlparse

import h11
import trio

RECEIVE_SIZE = 64 * 1024
# How much of what arrived first a `BadResponse` keeps to show.
_SHOWN = 40


class HttpClientError(Exception):
    """One request could not be made or answered; the message says why."""


class ConnectFailed(HttpClientError):
    """The connect failed; the message is the OS's reason ("Connection refused")."""


class ConnectionBroken(HttpClientError):
    """The stream failed (reset, closed) after it was opened."""


class BadResponse(HttpClientError):
    """The peer answered, but not with HTTP/1.x."""

    def __init__(self, message: str, first_line: bytes) -> None:
        super().__init__(message)
        self.first_line = first_line

    @property
    def shown(self) -> str:
        """The first line received, cut short, or "nothing"."""
        return self.first_line[:_SHOWN].decode("latin-1") or "nothing"


@dataclass(frozen=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


Address = UnixAddress | TcpAddress


def address_of_url(url: str) -> Address | None:
    """The address of "unix:///path" (or "http+unix://"), "tcp://host:port" (or "http://");
    None for any other URL."""
    parsed = urlparse(url)
    if parsed.scheme in ("unix", "http+unix") and parsed.path:
        return UnixAddress(parsed.path)
    if parsed.scheme in ("tcp", "http") and parsed.hostname and parsed.port:
        return TcpAddress(parsed.hostname, parsed.port)
    return None


class ClientResponse:
    """The response head; iterate for the body, as it arrives (empty chunks are skipped)."""

    def __init__(self, exchange: _Exchange, head: h11.Response) -> None:
        self.status: int = head.status_code
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key = name.decode("ascii").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers: Mapping[str, str] = MappingProxyType(headers)
        self._exchange = exchange

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status} {self._exchange.conn.their_state}>"

    def __aiter__(self) -> ClientResponse:
        return self

    async def __anext__(self) -> bytes:
        while True:
            event = await self._exchange.next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                raise StopAsyncIteration

    async def read(self, limit: int = 1024 * 1024) -> bytes:
        """The body, or its first `limit` bytes (the rest is not read)."""
        body = bytearray()
        async for chunk in self:
            body += chunk
            if len(body) >= limit:
                break
        return bytes(body[:limit])


@asynccontextmanager
async def request(
    address: Address,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[ClientResponse]:
    """Send one body-less request to `address` and yield its response once the head is in.

    `headers` should carry Host (HTTP/1.1 requires it); Connection: close is added.
    """
    fields = [(name, value.strip(" \t")) for name, value in headers]
    try:
        head = h11.Request(method=method, target=target, headers=[*fields, ("Connection", "close")])
    except h11.LocalProtocolError as exc:
        raise HttpClientError(f"cannot send {method} {target}: {exc}") from exc
    try:
        if isinstance(address, UnixAddress):
            stream = await trio.open_unix_socket(address.path)
        else:
            stream = await connect_tcp(address.host, address.port)
    except OSError as exc:
        raise ConnectFailed(exc.strerror or str(exc)) from exc
    async with stream:
        exchange = _Exchange(stream)
        await exchange.send(head)
        answer = await exchange.next_event()
        if not isinstance(answer, h11.Response):
            # Closed before a head (h11 mostly raises for that, but not in every state).
            raise BadResponse("closed without a response", exchange.first_line())
        if not answer.http_version.startswith(b"1."):
            version = answer.http_version.decode("latin-1")
            raise BadResponse(f"HTTP/{version} is not HTTP/1.x", exchange.first_line())
        yield ClientResponse(exchange, answer)


async def connect_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP stream to host:port; OSError when the connect fails.

    An IP literal (a replica on 127.0.0.1, always, for probes) is connected directly: trio's
    `open_tcp_stream` runs a resolver pass and a happy-eyeballs nursery with a task per
    attempt, ~40 % of a probe's CPU for nothing to choose between. A name goes through it.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


class _Exchange:
    """One h11 client connection on one stream, with the stream's failures translated."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self._stream = stream
        self._first = b""  # the start of what the peer sent, to show when it is not HTTP

    async def send(self, head: h11.Request) -> None:
        data = self.conn.send(head) + self.conn.send(h11.EndOfMessage())
        try:
            await self._stream.send_all(data)
        except (OSError, trio.BrokenResourceError) as exc:
            raise ConnectionBroken(_why(exc)) from exc

    async def next_event(self) -> h11.Event:
        """The next event but 1xx heads; PAUSED (after the response) reads as closed."""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadResponse(str(exc), self.first_line()) from exc
            if event is h11.NEED_DATA:
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except (OSError, trio.BrokenResourceError) as exc:
                    raise ConnectionBroken(_why(exc)) from exc
                if len(self._first) < _SHOWN:
                    self._first += data[:_SHOWN]
                self.conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and the like: the answer is still to come
            elif isinstance(event, h11.Event):
                return event
            else:
                return h11.ConnectionClosed()

    def first_line(self) -> bytes:
        return self._first.split(b"\r\n", 1)[0].split(b"\n", 1)[0]


def _why(exc: BaseException) -> str:
    # trio's BrokenResourceError says nothing itself; the OSError behind it does.
    return str(exc) or str(exc.__cause__ or "") or type(exc).__name__
