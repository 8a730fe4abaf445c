"""Header rewriting between client and replica (pure functions over bytes).

Invariants:
- Hop-by-hop fields never cross the proxy: Connection and every field it names,
  Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade (kept only for a
  tunnelled upgrade), and Content-Length, because the proxy frames every body itself and
  adds exactly one framing field.
  A response's Transfer-Encoding other than a lone `chunked` (`gzip, chunked`) is the
  exception: it goes to the client as sent, codings and all (`ResponseHead.transfer_coding`).
- What the proxy saw of the client is set by the proxy: X-Forwarded-For, -Proto, -Host,
  X-Real-IP and Forwarded (RFC 7239). From an untrusted peer every client-sent
  Forwarded, X-Real-IP and X-Forwarded-* is dropped and replaced; from a trusted proxy
  (`[endpoint] trusted_proxies`) they are kept, and X-Forwarded-For and Forwarded gain
  this hop. X-Request-Id is added when absent.
- The hot path's shortcut gives the same bytes as the general path: the parser's one pass
  over the fields leaves them as ready header lines on the head (`RequestHead.lines`,
  `ResponseHead.lines`), used only while `head.headers` is still the list they came from
  (a guard that strips credentials makes a new list) and, for a request, only for a peer
  that is not a trusted proxy; what the proxy saw of a client is kept formatted by
  (peer, Host, proto), bounded.
"""

from __future__ import annotations

from typing import Final

from proxy.protocol import (
    CLIENT_INFO,
    HOP_BY_HOP,
    REQUEST_DROP,
    X_FORWARDED,
    Framing,
    RequestHead,
    ResponseHead,
)
from proxy.protocol import names_other_fields as _names_other_fields

__all__ = ["HOP_BY_HOP", "LAST_CHUNK", "chunk", "request_head_bytes", "response_head_bytes"]

_CLIENT_INFO: Final = CLIENT_INFO
_REQUEST_DROP: Final = REQUEST_DROP
_X_FORWARDED: Final = X_FORWARDED


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def request_head_bytes(
    head: RequestHead,
    *,
    peer: bytes,
    request_id: bytes,
    framing: Framing,
    trusted: bool = False,
    proto: bytes = b"http",
) -> bytes:
    """The request line and header section to send to a replica.

    `framing` is how the proxy will send the body: CHUNKED or LENGTH (using
    `head.content_length`) or NONE. `trusted`: the peer is a trusted proxy, whose
    Forwarded, X-Real-IP and X-Forwarded-* are kept (Forwarded and X-Forwarded-For gain
    the peer); otherwise they are replaced by what the proxy saw. `proto`: what the client
    spoke, b"http" or b"https" (a TLS endpoint), for X-Forwarded-Proto and Forwarded.
    """
    headers = head.headers
    lines = head.lines
    if trusted or lines is None or headers is not head.lines_of:
        return _request_head(
            head, headers, peer, request_id, framing, _REQUEST_DROP, True, trusted, proto
        )
    # The parser's one pass did the filtering (`RequestHead.lines`); the same bytes as
    # `_request_head` for an untrusted peer.
    key = (peer, head.host, proto)
    seen = _SEEN_LINES.get(key)
    if seen is None:
        seen = _seen_lines(*key)
    out = [head.method, b" ", head.target, b" HTTP/1.1\r\n", lines, seen]
    append = out.append
    if not head.has_id:
        append(b"X-Request-Id: ")
        append(request_id)
        append(b"\r\n")
    if head.upgrade is not None:
        append(b"Connection: upgrade\r\nUpgrade: ")
        append(head.upgrade)
        append(b"\r\n")
    if framing is Framing.CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n\r\n")
    elif framing is Framing.LENGTH:
        append(b"Content-Length: %d\r\n\r\n" % (head.content_length or 0))
    else:
        append(b"\r\n")
    return b"".join(out)


# What the proxy saw of a client, as header lines, by (peer, Host, proto): the same for
# every request of a connection, and of most connections. Bounded: cleared when full.
_SEEN_LINES: dict[tuple[bytes, bytes, bytes], bytes] = {}
_SEEN_LINES_MAX: Final = 4096
_SEEN_HOST_MAX: Final = 256


def _seen_lines(peer: bytes, host: bytes, proto: bytes) -> bytes:
    """X-Forwarded-For, -Proto, -Host, X-Real-IP and Forwarded for an untrusted peer."""
    out = b"X-Forwarded-For: " + peer + b"\r\nX-Forwarded-Proto: " + proto + b"\r\n"
    if host:
        out += b"X-Forwarded-Host: " + host + b"\r\n"
    out += b"X-Real-IP: " + peer + b"\r\nForwarded: "
    out += _forwarded_element(peer, host, proto) + b"\r\n"
    if len(host) <= _SEEN_HOST_MAX:  # a long Host is computed each time, never kept
        if len(_SEEN_LINES) >= _SEEN_LINES_MAX:
            _SEEN_LINES.clear()
        _SEEN_LINES[(peer, host, proto)] = out
    return out


def _quoted(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _forwarded_element(peer: bytes, host: bytes, proto: bytes) -> bytes:
    """RFC 7239's element for this hop: for (an IPv6 address bracketed and quoted), host."""
    node = _quoted(b"[" + peer + b"]") if b":" in peer else peer
    out = b"for=" + node
    if host:
        out += b";host=" + _quoted(host)
    return out + b";proto=" + proto


def _request_head(
    head: RequestHead,
    headers: list[tuple[bytes, bytes]],
    peer: bytes,
    request_id: bytes,
    framing: Framing,
    drop: frozenset[bytes],
    first_pass: bool,
    trusted: bool,
    proto: bytes,
) -> bytes:
    out = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    append = out.append
    xff: bytes | None = None
    forwarded: bytes | None = None
    kept: set[bytes] = set()  # from a trusted peer: the client-info fields it sent
    host = b""
    has_id = False
    for name, value in headers:
        n = name.lower()
        if n in drop:
            if first_pass and n == b"connection" and _names_other_fields(value):
                # Rare: Connection names other fields to drop. Start again knowing them.
                drop = drop | _connection_tokens(headers)
                return _request_head(
                    head, headers, peer, request_id, framing, drop, False, trusted, proto
                )
            if trusted and n in _CLIENT_INFO:
                if n == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif n == b"forwarded":
                    forwarded = value if forwarded is None else forwarded + b", " + value
                else:
                    kept.add(n)
                    append(name)
                    append(b": ")
                    append(value)
                    append(b"\r\n")
            continue
        if n[0] == 120 and not trusted and n.startswith(_X_FORWARDED):  # 120: "x"
            continue
        if n == b"host":
            host = value
        elif n == b"x-request-id":
            has_id = True
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    append(b"X-Forwarded-For: ")
    append(peer if xff is None else xff + b", " + peer)
    append(b"\r\n")
    if b"x-forwarded-proto" not in kept:
        append(b"X-Forwarded-Proto: " + proto + b"\r\n")
    if host and b"x-forwarded-host" not in kept:
        append(b"X-Forwarded-Host: ")
        append(host)
        append(b"\r\n")
    if b"x-real-ip" not in kept:
        append(b"X-Real-IP: ")
        append(peer)
        append(b"\r\n")
    append(b"Forwarded: ")
    element = _forwarded_element(peer, host, proto)
    append(element if forwarded is None else forwarded + b", " + element)
    append(b"\r\n")
    if not has_id:
        append(b"X-Request-Id: ")
        append(request_id)
        append(b"\r\n")
    if head.upgrade is not None:
        append(b"Connection: upgrade\r\nUpgrade: ")
        append(head.upgrade)
        append(b"\r\n")
    if framing is Framing.CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    elif framing is Framing.LENGTH:
        append(b"Content-Length: %d\r\n" % (head.content_length or 0))
    append(b"\r\n")
    return b"".join(out)


def response_head_bytes(head: ResponseHead, *, framing: Framing, close: bool) -> bytes:
    """The status line and header section to send to the client.

    `framing` is how the proxy sends the body on: LENGTH keeps the replica's
    Content-Length, CHUNKED adds Transfer-Encoding, CLOSE/NONE add nothing (a HEAD, 204 or
    304 response keeps its Content-Length, which describes the would-be body).
    """
    lines = head.lines
    if lines is None or head.headers is not head.lines_of:
        return _response_head(head, framing, close, HOP_BY_HOP, True)
    # The parser's one pass did the filtering (`ResponseHead.lines`).
    status = head.status
    line = _STATUS_LINES.get((status, head.reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, head.reason)
    out = line + lines
    length = head.length
    if status == 101:
        out += b"Connection: upgrade\r\n"
        if head.upgrade is not None:
            out += b"Upgrade: " + head.upgrade + b"\r\n"
    elif head.transfer_coding is not None and status >= 200 and status != 204:
        out += b"Transfer-Encoding: " + head.transfer_coding + b"\r\n"
    elif framing is Framing.CHUNKED:
        out += b"Transfer-Encoding: chunked\r\n"
    elif length is not None and (framing is Framing.LENGTH or framing is Framing.NONE):
        if status != 204 and status >= 200:
            out += b"Content-Length: " + length + b"\r\n"
    if close and status >= 200 and status != 101:
        return out + b"Connection: close\r\n\r\n"
    return out + b"\r\n"


_STATUS_LINES: Final = {
    (status, reason): b"HTTP/1.1 %d %s\r\n" % (status, reason)
    for status, reason in ((200, b"OK"), (204, b"No Content"), (304, b"Not Modified"))
}


def _response_head(
    head: ResponseHead, framing: Framing, close: bool, drop: frozenset[bytes], first_pass: bool
) -> bytes:
    status = head.status
    headers = head.headers
    out = [b"HTTP/1.1 %d " % status, head.reason, b"\r\n"]
    append = out.append
    upgrade: bytes | None = None
    length: bytes | None = None
    for name, value in headers:
        n = name.lower()
        if n in drop:
            if n == b"content-length":
                length = value
            elif n == b"upgrade":
                upgrade = value
            elif first_pass and n == b"connection" and _names_other_fields(value):
                drop = drop | _connection_tokens(headers)
                return _response_head(head, framing, close, drop, False)
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    if status == 101:
        append(b"Connection: upgrade\r\n")
        if upgrade is not None:
            append(b"Upgrade: ")
            append(upgrade)
            append(b"\r\n")
    elif head.transfer_coding is not None and status >= 200 and status != 204:
        # Codings other than a lone chunked go on as sent (`gzip, chunked` stays that).
        append(b"Transfer-Encoding: ")
        append(head.transfer_coding)
        append(b"\r\n")
    elif framing is Framing.CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    elif length is not None and (framing is Framing.LENGTH or framing is Framing.NONE):
        if status != 204 and status >= 200:
            append(b"Content-Length: ")
            append(length)
            append(b"\r\n")
    if close and status >= 200 and status != 101:
        append(b"Connection: close\r\n")
    append(b"\r\n")
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    """One chunk in chunked transfer coding (never the empty, final one)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
