"""gRPC status codes seen per endpoint: plain counters, summarised when read.

A gRPC call's status is the `grpc-status` field of its trailers, or of its response head
when the replica answers trailers-only (an error before any message). A response that
carries none (not gRPC, or cut short) is not counted here.
"""

from __future__ import annotations

from typing import Final

# https://grpc.github.io/grpc/core/md_doc_statuscodes.html
GRPC_CODES: Final = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


def grpc_status_of(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The `grpc-status` value in a header or trailer section, or None (absent, not a number)."""
    for name, value in headers:
        if name == b"grpc-status":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class GrpcStatusCounts:
    """Calls finished per gRPC status code on one endpoint, since start."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, code: int) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1

    def by_name(self) -> dict[str, int]:
        """{"OK": 3, "NOT_FOUND": 1, ...}; a code outside the table as its number."""
        return {
            (GRPC_CODES[c] if 0 <= c < len(GRPC_CODES) else str(c)): n
            for c, n in sorted(self.counts.items())
        }

    def __repr__(self) -> str:
        return f"<GrpcStatusCounts {self.by_name()}>"
