"""Header sections between HTTP/2 and HTTP/1.1 (pure functions over bytes).

An HTTP/2 request becomes a `RequestHead` (pseudo-fields to the request line and Host,
cookies joined), so that an HTTP/1.1 replica gets exactly what `proxy.headers` makes for an
HTTP/1.1 client: hop-by-hop fields dropped, X-Forwarded-*, Forwarded, X-Real-IP and
X-Request-Id set by the proxy. For an h2c replica the same rewriting is read back into an
HTTP/2 field list (`h2c_request_fields`), the pseudo-fields in front, and `te: trailers`
kept (gRPC needs it; it is the one TE value HTTP/2 allows).
Responses go the other way: an HTTP/1.1 response head to HTTP/2 fields (`:status`, names
lower-cased, hop-by-hop fields dropped), an HTTP/2 response to an HTTP/1.1 head.
"""

from __future__ import annotations

from typing import Final

from proxy.headers import HOP_BY_HOP, request_head_bytes
from proxy.protocol import MAX_HEAD_BYTES, Framing, ProtocolError, RequestHead, ResponseHead

# Fields HTTP/2 forbids (RFC 9113 8.2.2) or the proxy frames itself.
_H2_DROP: Final = HOP_BY_HOP | {b"host", b"http2-settings"}
_REASONS: Final = {200: b"OK", 204: b"No Content", 404: b"Not Found", 502: b"Bad Gateway"}


def request_head(headers: list[tuple[bytes, bytes]], end: bool) -> RequestHead:
    """An HTTP/2 request's fields as the HTTP/1.1 head the proxy forwards.

    `end`: the request has no body (END_STREAM on its HEADERS). Raises ProtocolError
    (400 a missing pseudo-field, 405 CONNECT, 431 too large) for what `h2`'s own checks
    let through.
    """
    method = path = authority = b""
    fields: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    host = b""
    size = 0
    content_length: int | None = None
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
            continue
        if name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                raise ProtocolError(400, "bad content-length") from None
        fields.append((name, value))
    if size > MAX_HEAD_BYTES:
        raise ProtocolError(431, "request header fields too large")
    if method == b"CONNECT":
        raise ProtocolError(405, "CONNECT is not supported by a reverse proxy")
    if not method or not path:
        raise ProtocolError(400, "a request needs :method and :path")
    fields.insert(0, (b"host", authority or host))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    if end:
        framing, content_length = Framing.NONE, None
    elif content_length is not None:
        framing = Framing.LENGTH
    else:
        framing = Framing.CHUNKED  # length unknown: chunked, or read whole (`to_http1`)
    return RequestHead(method, path, "1.1", fields, True, None, framing, content_length)


def wants_trailers(head: RequestHead) -> bool:
    return any(n.lower() == b"te" and b"trailers" in v.lower() for n, v in head.headers)


def h2c_request_fields(
    head: RequestHead,
    *,
    scheme: bytes,
    peer: bytes,
    request_id: bytes,
    trusted: bool,
    proto: bytes,
) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 field list for an h2c replica: `proxy.headers`' rewriting of `head`,
    read back, behind the pseudo-fields; `te: trailers` kept when the client sent it."""
    framing = Framing.LENGTH if head.content_length is not None else Framing.NONE
    raw = request_head_bytes(
        head, peer=peer, request_id=request_id, framing=framing, trusted=trusted, proto=proto
    )
    authority = b""
    fields: list[tuple[bytes, bytes]] = []
    for line in raw.split(b"\r\n")[1:]:
        if not line:
            continue
        name, _, value = line.partition(b": ")
        n = name.lower()
        if n == b"host":
            authority = value
        elif n not in _H2_DROP or n == b"content-length":
            fields.append((n, value))
    out = [
        (b":method", head.method),
        (b":scheme", scheme),
        (b":authority", authority),
        (b":path", head.target),
    ]
    out += fields
    if wants_trailers(head):
        out.append((b"te", b"trailers"))
    return out


def h2_response_fields(head: ResponseHead) -> list[tuple[bytes, bytes]]:
    """An HTTP/1.1 response head as HTTP/2 fields. Content-Length is kept when it frames
    the body as sent (or describes a HEAD's would-be body)."""
    drop = HOP_BY_HOP | _connection_tokens(head.headers)
    out = [(b":status", b"%d" % head.status)]
    for name, value in head.headers:
        n = name.lower()
        if n in drop and not (n == b"content-length" and head.transfer_coding is None):
            continue
        if n == b"host":
            continue
        out.append((n, value))
    return out


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens)


def response_status(headers: list[tuple[bytes, bytes]]) -> int:
    """The :status of an HTTP/2 response (h2 has checked it is there and 3 digits)."""
    for name, value in headers:
        if name == b":status":
            return int(value)
    return 502


def h1_response_head(
    headers: list[tuple[bytes, bytes]], *, chunked: bool, close: bool
) -> tuple[int, bytes]:
    """An HTTP/2 response as an HTTP/1.1 status line and header section; `chunked`: the
    body goes chunked (no content-length from the replica)."""
    status = response_status(headers)
    out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"-"))]
    for name, value in headers:
        if name[:1] == b":" or name in HOP_BY_HOP and name != b"content-length":
            continue
        out.append(name + b": " + value + b"\r\n")
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    return status, b"".join(out)


def has_content_length(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"content-length" for name, _ in headers)
