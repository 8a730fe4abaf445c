"""The admin API's error answer, one shape for every route: `{"error": message, ...}`."""

from __future__ import annotations

from typing import Any

from daemon.http.server import Response


def error(status: int, message: str, **extra: Any) -> Response:
    return Response(status=status, json={"error": message, **extra})
