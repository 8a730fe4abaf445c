"""The gateway's own answers, always in OpenAI's error shape (its clients are OpenAI SDKs):

    {"error": {"message": "...", "type": "invalid_request_error", "param": "model",
               "code": "model_not_found"}}

Answers that come from the deployment's endpoint once a request is routed (429, 502, 503,
504: `proxy.answers`) keep that endpoint's form: JSON to a client that asks for it (the
OpenAI SDKs do), with `code` the status. The gateway's own 401 (`[gateway.auth]`, checked by
`proxy.auth`'s guard) is in OpenAI's shape, JSON whatever the client asks, as OpenAI answers
a bad key (`code` "invalid_api_key"), with the guard's `WWW-Authenticate`.
"""

from __future__ import annotations

import json
from typing import Final

from proxy.answers import response_bytes
from proxy.auth import Credentials, challenges
from proxy.protocol import RequestHead

INVALID_REQUEST: Final = "invalid_request_error"


def error_response(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    kind: str = INVALID_REQUEST,
    close: bool,
    head_only: bool = False,
    headers: tuple[bytes, ...] = (),
) -> bytes:
    """A whole answer: status line, header section and the JSON error body."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    body = json.dumps({"error": error}).encode() + b"\n"
    return response_bytes(
        status, b"application/json", body, close=close, head_only=head_only, headers=headers
    )


def model_not_found(model: str, close_names: list[str], *, close: bool) -> bytes:
    shown = model if len(model) <= 200 else model[:200] + "..."
    message = f"The model '{shown}' does not exist"
    if close_names:
        message += "; close names: " + ", ".join(close_names)
    message += "; GET /v1/models lists the models served here"
    return error_response(404, message, code="model_not_found", param="model", close=close)


def unauthorized(
    head: RequestHead, credentials: Credentials, *, presented: bool, close: bool
) -> bytes:
    """401 for a request without a valid `[gateway.auth]` credential: OpenAI's shape."""
    message = (
        "invalid credentials"
        if presented
        else "authentication required: send Authorization: Bearer KEY (or x-api-key: KEY)"
    )
    return error_response(
        401,
        message,
        code="invalid_api_key",
        close=close,
        head_only=head.method == b"HEAD",
        headers=tuple(
            b"WWW-Authenticate: %s" % c for c in challenges(credentials, presented=presented)
        ),
    )


def model_missing(why: str, *, close: bool) -> bytes:
    """400: no `model` in the body, or a body it cannot be read from (`why` says which)."""
    return error_response(400, why, code="model_required", param="model", close=close)


def too_large(max_body: int) -> bytes:
    message = f"request body over the gateway's max_body ({max_body} bytes)"
    return error_response(413, message, code="request_too_large", close=True)


def unknown_url(method: bytes, path: bytes, *, close: bool) -> bytes:
    message = f"Unknown request URL: {_text(method)} {_text(path)}"
    return error_response(404, message, code="unknown_url", close=close)


def method_not_allowed(method: bytes, path: bytes, allow: bytes, *, close: bool) -> bytes:
    message = f"{_text(method)} is not allowed on {_text(path)} (use {_text(allow)})"
    headers = (b"Allow: " + allow,)
    return error_response(405, message, code="method_not_allowed", close=close, headers=headers)


def failed(status: int, message: str) -> bytes:
    """An error that ends the connection (408, a malformed request's 400/431/501/505, ...)."""
    return error_response(status, message, code=None, close=True)


def not_serving(deployment: str, *, close: bool) -> bytes:
    message = f"the deployment {deployment!r} of this model is not serving"
    return error_response(
        503,
        message,
        code="unavailable",
        kind="unavailable",
        close=close,
        headers=(b"Retry-After: 1",),
    )


def _text(raw: bytes) -> str:
    """Bytes from the client in a message, bounded."""
    return raw[:200].decode("latin-1")
