"""A POSTed form's fields: `application/x-www-form-urlencoded`, or `multipart/form-data`
(the apply page's upload: a file's content is its field's value, as text)."""

from __future__ import annotations

from collections.abc import Mapping
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl


def parse_form(headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    """The fields (a repeated name keeps its last value); {} for any other body."""
    content_type = headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", "replace")
        return dict(parse_qsl(text, keep_blank_values=True))
    if kind == "multipart/form-data":
        return _multipart(content_type, body)
    return {}


def _multipart(content_type: str, body: bytes) -> dict[str, str]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8", "replace")
    return fields
