"""The answers the proxy makes itself (400, 408, 411, 431, 501, 502, 503, 504, ...): text or JSON.

A client that asks for JSON gets an OpenAI-style error object, which JSON API clients
(the OpenAI SDKs, tritonclient) parse instead of failing on text:

    {"error": {"message": "no ready replica", "type": "unavailable", "param": null,
               "code": 503}}

Everyone else gets the message as a line of text/plain. A request asks for JSON when its
`Accept` lists `application/json` or an `application/*+json` type (not with `q=0`;
`*/*` is not asking), or its body's `Content-Type` is one of those.

Invariants:
- Only the body and its Content-Type differ between the two forms: status line,
  Retry-After and Connection are the same, and Content-Length is the body's length.
- A request whose head could not be parsed (400, 405, 408, 431, 505 before a head) has
  no Accept to read: its answer is text.
- The answer to a HEAD request is the same head with no body.
- Nothing here runs on the success path: a request's head is read for Accept only when an
  answer is made, and each distinct answer is built once and then reused.
"""

from __future__ import annotations

import functools
import json
from typing import Final

from proxy.protocol import RequestHead

# The reason phrases of the statuses the proxy answers with.
REASONS: Final = {
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}

# The JSON form's `type`, by status (documented in docs/spec.md, `[endpoint]`).
ERROR_TYPES: Final = {
    401: "authentication_error",  # a protected endpoint's refusal (Anthropic's name)
    429: "rate_limit_error",  # every replica busy and the queue full, or waited too long
    502: "upstream_error",  # the replica broke the exchange or could not be reached
    503: "unavailable",  # no ready replica (or too many waiting, or shutting down)
    504: "timeout",  # the replica did not answer within read_timeout
}
INVALID_REQUEST: Final = "invalid_request"  # 4xx: the request itself was refused
SERVER_ERROR: Final = "server_error"  # any other 5xx

_JSON_TYPES: Final = frozenset({b"application/json"})
_ZERO_Q: Final = frozenset({b"0", b"0.", b"0.0", b"0.00", b"0.000"})


def error_type(status: int) -> str:
    """The `type` of the JSON form for `status`."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return INVALID_REQUEST if status < 500 else SERVER_ERROR


def _is_json(media_type: bytes) -> bool:
    m = media_type.strip().lower()
    return m in _JSON_TYPES or (m.startswith(b"application/") and m.endswith(b"+json"))


def _accepts_json(accept: bytes) -> bool:
    for item in accept.split(b","):
        media_type, _, params = item.partition(b";")
        if not _is_json(media_type):
            continue
        for param in params.split(b";"):
            key, _, value = param.partition(b"=")
            if key.strip().lower() == b"q" and value.strip() in _ZERO_Q:
                break  # "not acceptable"
        else:
            return True
    return False


def wants_json(head: RequestHead) -> bool:
    """True when the request asks for JSON: its Accept lists JSON, or its body is JSON."""
    for name, value in head.headers:
        n = name.lower()
        if n == b"accept":
            if _accepts_json(value):
                return True
        elif n == b"content-type" and _is_json(value.partition(b";")[0]):
            return True
    return False


def error_body(status: int, message: str, *, as_json: bool) -> tuple[bytes, bytes]:
    """The body of an answer and its Content-Type."""
    if as_json:
        error = {"message": message, "type": error_type(status), "param": None, "code": status}
        return json.dumps({"error": error}).encode() + b"\n", b"application/json"
    return message.encode() + b"\n", b"text/plain; charset=utf-8"


@functools.lru_cache(maxsize=256)
def error_response(
    status: int,
    message: str,
    *,
    close: bool = True,
    retry_after: int | None = None,
    as_json: bool = False,
    head_only: bool = False,
    headers: tuple[bytes, ...] = (),
) -> bytes:
    """A whole answer made by the proxy itself: status line, header section and body.

    `head_only` (a HEAD request) leaves the body out; Content-Length still says its length.
    `headers` are whole field lines without CRLF (a 401's WWW-Authenticate).
    """
    body, content_type = error_body(status, message, as_json=as_json)
    if retry_after is not None:
        headers = (b"Retry-After: %d" % retry_after, *headers)
    return response_bytes(
        status, content_type, body, close=close, head_only=head_only, headers=headers
    )


def response_bytes(
    status: int,
    content_type: bytes,
    body: bytes,
    *,
    close: bool,
    head_only: bool = False,
    headers: tuple[bytes, ...] = (),
) -> bytes:
    """Status line, Content-Type, `headers` (whole field lines without CRLF),
    Content-Length, Connection: close if `close`, and the body unless `head_only`."""
    out = [
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
        % (status, REASONS.get(status, b"Error"), content_type)
    ]
    out.extend(b"%s\r\n" % line for line in headers)
    out.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    if not head_only:
        out.append(body)
    return b"".join(out)


def answer_for(
    head: RequestHead | None,
    status: int,
    message: str,
    *,
    close: bool = True,
    retry_after: int | None = None,
) -> bytes:
    """The answer to the request `head` (None: its head could not be parsed, so text)."""
    if head is None:
        return error_response(status, message, close=close, retry_after=retry_after)
    return error_response(
        status,
        message,
        close=close,
        retry_after=retry_after,
        as_json=wants_json(head),
        head_only=head.method == b"HEAD",
    )
