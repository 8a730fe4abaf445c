"""The `model` of a request body, and the body with it replaced (`rewrite_model`).

Three bodies are understood, by their Content-Type:
- `multipart/form-data` (audio transcriptions, image edits): the `model` form field,
  found by a bounded scan for the boundary (bytes.find over the body, at most
  `MAX_PARTS` parts, each part's header section at most `MAX_PART_HEAD` bytes; the
  Content-Disposition's `name` parameter read by the stdlib `email` parser);
- `application/x-www-form-urlencoded`: the `model` pair (at most `MAX_FORM_FIELDS`); a
  body that has none and begins with `{` is read as JSON (`curl -d '{...}'` labels JSON so);
- anything else, or none: a JSON object with a string `model` (OpenAI's every JSON route).

Invariants:
- Pure: bytes in, a `Found` or a `Missing` out; nothing here does I/O.
- Without a rewrite the body goes on byte for byte (`Found` only says where the model is).
- A JSON rewrite is `json.loads` / `json.dumps` of the object with `model` replaced, every
  other field kept; a multipart rewrite replaces the field's bytes alone; a form rewrite
  re-encodes its pairs in order.
"""

from __future__ import annotations

import email.message
import email.utils
import json
import urllib.parse
from dataclasses import dataclass
from typing import Final

MAX_PARTS: Final = 1000
MAX_PART_HEAD: Final = 8192
MAX_FORM_FIELDS: Final = 1000

JSON: Final = "json"
MULTIPART: Final = "multipart"
FORM: Final = "form"


@dataclass(frozen=True)
class Found:
    model: str
    kind: str  # JSON, MULTIPART or FORM
    document: object = None  # the parsed JSON object, or the form's pairs
    span: tuple[int, int] = (0, 0)  # multipart: where the field's value lies in the body


@dataclass(frozen=True)
class Missing:
    why: str  # the 400's message


def media_type(content_type: bytes) -> tuple[str, str]:
    """(media type, lower-cased; its `boundary` parameter or "")."""
    m = email.message.Message()
    m["content-type"] = content_type.decode("latin-1")
    boundary = m.get_param("boundary")
    if isinstance(boundary, tuple):  # RFC 2231 form
        boundary = email.utils.collapse_rfc2231_value(boundary)
    return m.get_content_type(), boundary or ""


def find_model(content_type: bytes | None, body: bytes) -> Found | Missing:
    """The request's model (see the module docstring)."""
    kind = content_type.partition(b";")[0].strip().lower() if content_type else b""
    if kind == b"multipart/form-data":
        _, boundary = media_type(content_type or b"")  # the email parser: quoting, RFC 2231
        if not boundary:
            return Missing("a multipart/form-data body needs a boundary")
        return _multipart(body, boundary.encode("latin-1"))
    if kind == b"application/x-www-form-urlencoded":
        found = _form(body)
        if isinstance(found, Missing) and body.lstrip()[:1] == b"{":
            return _json(body)  # `curl -d '{...}'` says urlencoded and sends JSON
        return found
    return _json(body)


def rewrite(found: Found, body: bytes, model: str) -> bytes:
    """`body` with its model replaced by `model`."""
    if found.kind == JSON:
        assert isinstance(found.document, dict)
        document = dict(found.document)
        document["model"] = model
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    if found.kind == MULTIPART:
        start, end = found.span
        return body[:start] + model.encode() + body[end:]
    assert isinstance(found.document, list)
    pairs = [(k, model if k == "model" else v) for k, v in found.document]
    return urllib.parse.urlencode(pairs).encode()


def _json(body: bytes) -> Found | Missing:
    if not body.strip():
        return Missing("the request has no body: a JSON object with a 'model' is required")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return Missing("the request body is not valid JSON")
    if not isinstance(document, dict):
        return Missing("the request body must be a JSON object")
    return _named(document.get("model"), Found("", JSON, document))


def _named(model: object, found: Found) -> Found | Missing:
    if model is None:
        return Missing("you must provide a model parameter")
    if not isinstance(model, str) or not model:
        return Missing("'model' must be a non-empty string")
    return Found(model, found.kind, found.document, found.span)


def _form(body: bytes) -> Found | Missing:
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        return Missing("the form body is not valid application/x-www-form-urlencoded")
    model = next((v for k, v in pairs if k == "model"), None)
    return _named(model, Found("", FORM, pairs))


def _multipart(body: bytes, boundary: bytes) -> Found | Missing:
    delimiter = b"--" + boundary
    pos = body.find(delimiter)
    if pos < 0:
        return Missing("the multipart body does not contain its boundary")
    for _ in range(MAX_PARTS):
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return Missing("you must provide a model parameter (a 'model' form field)")
        eol = body.find(b"\r\n", pos)
        if eol < 0 or eol - pos > 256:  # transport padding after a delimiter is short
            return Missing("a malformed multipart body (a delimiter line)")
        head_end = body.find(b"\r\n\r\n", eol, eol + MAX_PART_HEAD)
        if head_end < 0:
            return Missing("a malformed multipart body (a part's header section)")
        start = head_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            return Missing("a malformed multipart body (a part without its end)")
        if _field_name(body[eol + 2 : head_end]) == "model":
            try:
                model = body[start:end].decode("utf-8")
            except UnicodeDecodeError:
                return Missing("the 'model' form field is not UTF-8")
            return _named(model, Found("", MULTIPART, None, (start, end)))
        pos = end + 2
    return Missing(f"a multipart body of more than {MAX_PARTS} parts")


def _field_name(headers: bytes) -> str | None:
    """The `name` of a part's Content-Disposition (form-data), or None."""
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            m = email.message.Message()
            m["content-disposition"] = value.decode("latin-1")
            got = m.get_param("name", header="content-disposition")
            if isinstance(got, tuple):
                got = email.utils.collapse_rfc2231_value(got)
            return got or None
    return None
