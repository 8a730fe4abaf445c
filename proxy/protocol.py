"""Sans-I/O HTTP/1.1 for the proxy: bytes in, events out, no sockets and no clock.

Both parsers wrap llhttp (httptools), strict by default: it refuses Content-Length with
Transfer-Encoding, duplicate or malformed Content-Length, unknown or non-final transfer
codings, obs-fold, bare LF, a space before the colon and bad chunk framing. On top of llhttp
this module refuses what llhttp lets through but a proxy must not: a missing or repeated
Host in HTTP/1.1, Transfer-Encoding in HTTP/1.0, CONNECT, HTTP versions other than 1.x,
and header sections over `MAX_HEAD_BYTES` (431); a Transfer-Encoding other than a lone
chunked (501, or 400 when chunked is not last); an absolute-form target whose authority
is not the Host (400; otherwise it becomes origin form); chunk and trailer lines over
`MAX_CHUNK_LINE` (400, `proxy.chunk_lines`).

Events are `RequestHead` / `ResponseHead`, `bytes` (a piece of body, as it arrived) and
`END` (the message is complete). Invariants:
- `feed` either returns all events for the bytes given or raises `ProtocolError`; in the
  second case nothing from that call may be forwarded and the connection must close.
- A head is emitted only after its whole header section has passed every check.
- Trailers are dropped (the proxy re-frames bodies itself).
- After an upgrade request (or a 101 response) the parser stops; the bytes that followed
  the message are in `tunnel_data` and belong to the tunnelled protocol.
"""

from __future__ import annotations

import enum
from typing import Final

import httptools

from proxy.chunk_lines import ChunkLines, ChunkLineTooLong

MAX_HEAD_BYTES: Final = 64 * 1024
_DEFAULT_PORTS: Final = {b"http": b":80", b"https": b":443"}
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; `status` is the answer (400, 405, 431, 505; 502 upstream)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class EndOfMessage:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = EndOfMessage()


class Framing(enum.Enum):
    """How a message body is delimited on the wire."""

    NONE = "none"  # no body at all (HEAD response, 1xx/204/304, request without body)
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"
    CLOSE = "close"  # response read until the connection closes


class RequestHead:
    __slots__ = (
        "method",
        "target",
        "http_version",
        "headers",
        "keep_alive",
        "upgrade",
        "framing",
        "content_length",
        "lines",
        "lines_of",
        "host",
        "has_id",
        "asks_h2c",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        upgrade: bytes | None,
        framing: Framing,
        content_length: int | None,
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers  # as received, names in their original case
        self.keep_alive = keep_alive
        self.upgrade = upgrade  # lower-cased protocol to tunnel ("websocket"), else None
        self.framing = framing
        self.content_length = content_length
        # Set by the parser in its one pass over the fields (`proxy.headers` uses them
        # while `headers is lines_of`, for a peer that is not a trusted proxy): the fields
        # that go to the replica as header lines (None when Connection names other
        # fields, or the parser added a Host), the Host, whether X-Request-Id came.
        self.lines: bytes | None = None
        self.lines_of: list[tuple[bytes, bytes]] | None = None
        self.host = b""
        self.has_id = False
        # `Upgrade: h2c` with a Connection: upgrade (the h2c upgrade, not tunnelled: handed
        # to `proxy.h2.server`, which checks the rest), set by the parser.
        self.asks_h2c = False

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS

    def __repr__(self) -> str:
        return f"<RequestHead {self.method!r} {self.target!r} {self.framing.value}>"


class ResponseHead:
    __slots__ = (
        "status",
        "reason",
        "http_version",
        "headers",
        "keep_alive",
        "framing",
        "transfer_coding",
        "lines",
        "lines_of",
        "length",
        "upgrade",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        framing: Framing,
        transfer_coding: bytes | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing = framing
        # Transfer-Encoding as sent when it is not a lone "chunked" ("gzip, chunked",
        # "gzip"): passed to the client unchanged, never re-framed away.
        self.transfer_coding = transfer_coding
        # Set by the parser in its one pass over the fields (`proxy.headers` uses them
        # while `headers is lines_of`): the end-to-end fields as header lines, ready to
        # send (None when Connection names other fields: those need a second pass), and
        # the values of Content-Length and Upgrade.
        self.lines: bytes | None = None
        self.lines_of: list[tuple[bytes, bytes]] | None = None
        self.length: bytes | None = None
        self.upgrade: bytes | None = None

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status} {self.framing.value}>"


Event = RequestHead | ResponseHead | bytes | EndOfMessage

# Fields that never cross the proxy (`proxy.headers`, which exports them): hop-by-hop, and
# Content-Length, because the proxy frames every body itself.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
# What the proxy sets itself from what it saw of an untrusted client (`proxy.headers`):
# a client-sent value is dropped, and so is any other `X-Forwarded-*`.
CLIENT_INFO: Final = frozenset(
    {b"forwarded", b"x-real-ip", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
REQUEST_DROP: Final = HOP_BY_HOP | CLIENT_INFO
X_FORWARDED: Final = b"x-forwarded-"
# Connection options that name no other header field: the common case, no second pass.
PLAIN_OPTIONS: Final = frozenset({b"keep-alive", b"close", b"upgrade", b""})


def names_other_fields(connection_value: bytes) -> bool:
    """Whether a Connection value names fields to drop besides the hop-by-hop ones."""
    if connection_value.lower() in PLAIN_OPTIONS:  # the common case: one plain option
        return False
    return any(t.strip().lower() not in PLAIN_OPTIONS for t in connection_value.split(b","))


# Upgrades the proxy tunnels; any other (h2c above all) is stripped and the request is
# served as plain HTTP/1.1.
TUNNELLED_UPGRADES: Final = frozenset({b"websocket"})


def _authority(value: bytes, default_port: bytes) -> bytes:
    """A host[:port] compared case-blind, its scheme's default port left out."""
    v = value.strip().lower()
    return v[: -len(default_port)] if v.endswith(default_port) else v


class _Parser:
    """What both directions share: event collection, head size accounting, errors."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = True
        self._head_bytes = 0  # counted from callbacks
        self._unparsed = 0  # bytes fed while a head was incomplete (llhttp buffers names)
        self._error: ProtocolError | None = None
        self.tunnel_data: bytes | None = None

    def on_message_begin(self) -> None:
        self._headers = []
        self._in_head = True
        self._head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name, value))
            self._head_bytes += len(name) + len(value) + 4
        # else: a trailer field; dropped

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def _fail(self, status: int, reason: str) -> None:
        self._error = ProtocolError(status, reason)
        raise self._error

    def close(self) -> None:
        """Its connection is gone: drop llhttp, which holds this parser's callbacks (bound
        methods) and so makes a reference cycle that only a full garbage collection would
        free (`proxy.gc_policy`). Nothing may be fed after this."""
        self.__dict__.pop("_parser", None)


class RequestParser(_Parser):
    """Parses a client's byte stream into requests; one per client connection."""

    error_status = 400

    def __init__(self) -> None:
        super().__init__()
        self._url = b""
        self._parser = httptools.HttpRequestParser(self)
        self._head: RequestHead | None = None
        self._ended = False  # a message ended in the current `feed`
        # A chunked body's line lengths (`proxy.chunk_lines`), from its head to its end;
        # `_chunks_new`: its head ended in the current `feed`, which holds its start.
        self._chunks: ChunkLines | None = None
        self._chunks_new = False
        self._tail = b""  # the last bytes fed while a head was incomplete

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._unparsed = 0
        p = self._parser
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail(431, "request header fields too large")
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            self._fail(505, "HTTP version not supported")
        method: bytes = p.get_method()
        if method == b"CONNECT":
            self._fail(405, "CONNECT is not supported by a reverse proxy")
        hosts = 0
        host = b""
        content_length: int | None = None
        chunked = False
        upgrade: bytes | None = None
        lines: list[bytes] | None = []  # see RequestHead.lines
        has_id = False
        headers = self._headers
        for name, value in headers:
            n = name.lower()
            if n in REQUEST_DROP:
                if n == b"content-length":
                    content_length = int(value)  # llhttp has checked digits and uniqueness
                elif n == b"transfer-encoding":
                    # Not chunked last: no reliable length, 400 (RFC 9112 6.3); a coding
                    # before chunked (gzip, identity) is one the proxy does not apply: 501.
                    coding = value.strip().lower()
                    if coding != b"chunked":
                        if coding.rsplit(b",", 1)[-1].strip() != b"chunked":
                            self._fail(400, "Transfer-Encoding must end with chunked")
                        self._fail(501, "only Transfer-Encoding: chunked is supported")
                    chunked = True
                elif n == b"upgrade":
                    upgrade = value.strip().lower()
                elif n == b"connection" and lines is not None and names_other_fields(value):
                    lines = None
                continue
            if n == b"host":
                hosts += 1
                host = value
            elif n == b"x-request-id":
                has_id = True
            elif n[0] == 120 and n.startswith(X_FORWARDED):  # 120: "x"
                continue
            if lines is not None:
                lines.append(name + b": " + value + b"\r\n")
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            self._fail(400, "HTTP/1.1 needs exactly one Host header")
        target = self._url
        if target[:1] != b"/" and target != b"*":
            target = self._origin_form(target, host if hosts else None)
            lines = None  # it may have added a Host
        if chunked and version == "1.0":
            self._fail(400, "Transfer-Encoding in an HTTP/1.0 request")
        asks_h2c = False
        if upgrade is not None and not (p.should_upgrade() and upgrade in TUNNELLED_UPGRADES):
            asks_h2c = upgrade == b"h2c" and p.should_upgrade()
            upgrade = None
        if chunked:
            framing = Framing.CHUNKED
        elif content_length is not None:
            framing = Framing.LENGTH  # also for "Content-Length: 0", which some apps need
        else:
            framing = Framing.NONE
        if framing is Framing.CHUNKED:
            # Pipelined behind a message that ended in this read, its start is not known:
            # only llhttp's own checks apply to that (rare) body.
            self._chunks = None if self._ended else ChunkLines()
            self._chunks_new = True
        head = RequestHead(
            method,
            target,
            version,
            self._headers,
            p.should_keep_alive(),
            upgrade,
            framing,
            content_length,
        )
        head.asks_h2c = asks_h2c
        if lines is not None:
            head.lines = b"".join(lines)
            head.lines_of = headers
            head.host = host
            head.has_id = has_id
        self._head = head
        self._events.append(head)

    def _origin_form(self, target: bytes, host: bytes | None) -> bytes:
        """An absolute-form target (`http://a/x`) as origin form (`/x`); its authority must
        name the Host the request gives (RFC 9112 3.2.2), or there is nothing to check
        it against in HTTP/1.0, where it then becomes the Host."""
        scheme, sep, rest = target.partition(b"://")
        scheme = scheme.lower()
        if not sep or scheme not in _DEFAULT_PORTS:
            self._fail(400, "request target must be a path or an http(s) URL")
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:]
        if not authority or b"@" in authority or b"#" in path:
            self._fail(400, "absolute-form target without a plain host")
        if path[:1] != b"/":
            path = b"/" + path
        default = _DEFAULT_PORTS[scheme]
        if host is None:
            self._headers.append((b"Host", authority))
        elif _authority(authority, default) != _authority(host, default):
            self._fail(400, "the request target's host differs from the Host header")
        return path

    def on_message_complete(self) -> None:
        self._ended = True
        self._events.append(END)

    def _scan_chunk_lines(self, data: bytes) -> None:
        """Bound the chunk lines llhttp has just accepted (`proxy.chunk_lines`). In the
        read where the head ended, the body starts after the head's first empty line
        (llhttp refuses bare LFs and obs-fold), which may have begun in the read before."""
        chunks = self._chunks
        assert chunks is not None
        start = 0
        if self._chunks_new:
            self._chunks_new = False
            tail = self._tail
            end = (tail + data).find(b"\r\n\r\n")
            start = len(data) if end < 0 else end + 4 - len(tail)
        try:
            if chunks.scan(data, start) is not None:
                self._chunks = None
        except ChunkLineTooLong:
            self._chunks = None
            self._fail(400, "chunk line (size and extensions) over 4 KiB")

    def feed(self, data: bytes) -> list[Event]:
        if self._error is not None:
            raise self._error
        if self._in_head:
            self._unparsed += len(data)
        events = self._events = []
        self._ended = False
        try:
            self._parser.feed_data(data)
            if self._chunks is not None:
                self._scan_chunk_lines(data)
            if self._in_head:
                self._tail = data[-3:]
        except httptools.HttpParserUpgrade as exc:
            offset: int = exc.args[0]
            head = self._head
            if head is not None and head.upgrade is not None:
                self.tunnel_data = data[offset:]
                self._error = ProtocolError(400, "data after an upgrade request")
            else:
                # A refused upgrade (h2c): carry on as plain HTTP/1.1 with a fresh parser.
                self._parser = httptools.HttpRequestParser(self)
                self._in_head = True
                rest = data[offset:]
                if rest:
                    events.extend(self.feed(rest))
                self._events = events
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            self._error = ProtocolError(400, f"malformed request: {exc}")
            raise self._error from None
        if self._in_head and self._unparsed > MAX_HEAD_BYTES:
            self._fail(431, "request header fields too large")
        return events


class ResponseParser(_Parser):
    """Parses one replica response (and the 1xx interim ones before it).

    `reusable` says, once `done`, whether the connection can carry another request. One
    parser serves every response of a kept-alive connection (`next_response`), which
    costs a quarter of making a new one: llhttp is kept when its last message ended at a
    message boundary (`_at_boundary`), and replaced otherwise (a HEAD response, whose
    would-be body llhttp still expects).
    """

    def __init__(self, *, head_request: bool = False) -> None:
        super().__init__()
        self._head_request = head_request
        self._reason = b""
        self._parser = httptools.HttpResponseParser(self)
        self._framing = Framing.NONE
        self._interim = False
        self._keep_alive = False
        self._at_boundary = True  # llhttp waits for the start of a message
        self.done = False
        self.reusable = False
        # The HTTP version of the last response head on this connection, kept across
        # `next_response` (`proxy.relay` learns an upstream's version when it changes).
        self.version_seen: str | None = None

    def next_response(self, *, head_request: bool = False) -> None:
        """Ready for the response to the next request on the same connection, which the
        last one left `reusable` (a complete response, nothing after it)."""
        if not self._at_boundary:
            self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self._at_boundary = True
        self._in_head = True
        self._unparsed = 0
        self._error = None
        self.tunnel_data = None
        self.done = False
        self.reusable = False

    def on_message_begin(self) -> None:
        self._at_boundary = False
        if self.done:
            self.reusable = False  # a replica sent more than one response
            return
        super().on_message_begin()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._head_bytes += len(reason)

    def on_headers_complete(self) -> None:
        if self.done:
            return
        self._in_head = False
        self._unparsed = 0
        p = self._parser
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail(502, "response header section too large")
        status: int = p.get_status_code()
        self._keep_alive = p.should_keep_alive()
        framing = Framing.CLOSE
        codings: bytes | None = None
        lines: list[bytes] | None = []
        length: bytes | None = None
        upgrade: bytes | None = None
        headers = self._headers
        for name, value in headers:
            n = name.lower()
            if n in HOP_BY_HOP:
                if n == b"transfer-encoding":
                    codings = value if codings is None else codings + b", " + value
                elif n == b"content-length":
                    length = value
                    if codings is None:
                        framing = Framing.LENGTH
                elif n == b"upgrade":
                    upgrade = value
                elif n == b"connection" and names_other_fields(value):
                    lines = None
            elif lines is not None:
                lines.append(name + b": " + value + b"\r\n")
        coding: bytes | None = None
        if codings is not None:
            last = codings.rsplit(b",", 1)[-1].strip().lower()
            framing = Framing.CHUNKED if last == b"chunked" else Framing.CLOSE
            if codings.strip().lower() != b"chunked":
                coding = codings
        if self._head_request or status < 200 or status == 204 or status == 304:
            framing = Framing.NONE
        self._framing = framing
        self._interim = 100 <= status < 200 and status != 101
        head = ResponseHead(
            status, self._reason, p.get_http_version(), headers, self._keep_alive, framing, coding
        )
        if lines is not None:
            head.lines = b"".join(lines)
            head.lines_of = headers
        head.length = length
        head.upgrade = upgrade
        self._events.append(head)
        if self._head_request and not self._interim:
            # llhttp cannot be told that a HEAD response has no body: finish it here.
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.done:
            self.reusable = False
            return
        self._events.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._at_boundary = True
        if not self.done:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.reusable = self._keep_alive and self._framing is not Framing.CLOSE
        self._events.append(END)

    def feed(self, data: bytes) -> list[Event]:
        if self._error is not None:
            raise self._error
        if self._in_head:
            self._unparsed += len(data)
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset: int = exc.args[0]
            self.tunnel_data = data[offset:]
            self.reusable = False
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            if self.done:
                self.reusable = False  # garbage after a complete response
            else:
                self._error = ProtocolError(502, f"malformed response: {exc}")
                raise self._error from None
        if self._in_head and self._unparsed > MAX_HEAD_BYTES:
            self._fail(502, "response header section too large")
        return events

    def feed_eof(self) -> list[Event]:
        """The replica closed the connection: that ends a close-delimited body, else fails."""
        if self.done:
            return []
        if not self._in_head and self._framing is Framing.CLOSE:
            self._events = []
            self._finish()
            return self._events
        self._error = ProtocolError(502, "replica closed the connection mid-response")
        raise self._error
