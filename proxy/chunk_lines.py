"""The lengths of a chunked body's lines, measured beside llhttp, which reports no offsets.

llhttp streams chunk extensions and trailers without buffering them and the proxy drops
both (it re-frames every body), so what a client gains by a 200 KB extension is making
the proxy parse bytes that are not body. `ChunkLines` bounds each line of the framing (a
chunk's size line with its extensions, each trailer line) to `MAX_CHUNK_LINE` bytes,
exactly, across reads: it walks the same bytes llhttp has just accepted, skipping chunk
data by its size, so it never needs to judge validity (llhttp has) and costs a `find`
per line and an addition per read of data.

Invariant: `scan` is given, in order, every byte of the body from its first chunk line
on, and only bytes llhttp has parsed without error.
"""

from __future__ import annotations

from typing import Final

MAX_CHUNK_LINE: Final = 4096  # bytes, its CRLF included
_SIZE_PREFIX: Final = 32  # of a line, enough for any size llhttp accepts

_LINE: Final = 0  # in a chunk's size line
_DATA: Final = 1  # in a chunk's data, or the CRLF after it
_TRAILER: Final = 2  # in the trailer section, after the last chunk


class ChunkLineTooLong(Exception):
    """A chunk line or trailer line passed `MAX_CHUNK_LINE`."""


class ChunkLines:
    __slots__ = ("_state", "_line", "_prefix", "_left")

    def __init__(self) -> None:
        self._state = _LINE
        self._line = 0  # bytes of the current line so far
        self._prefix = b""  # the current size line's first bytes
        self._left = 0  # of the current chunk's data and its CRLF

    def scan(self, data: bytes, pos: int = 0) -> int | None:
        """Walk `data[pos:]`; the offset just past the body's end, or None (more to come).
        Raises ChunkLineTooLong."""
        n = len(data)
        while pos < n:
            if self._state == _DATA:
                take = min(self._left, n - pos)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = _LINE
                continue
            end = data.find(b"\n", pos)
            stop = n if end < 0 else end + 1
            if self._state == _LINE and len(self._prefix) < _SIZE_PREFIX:
                self._prefix += data[pos : min(stop, pos + _SIZE_PREFIX)]
            self._line += stop - pos
            if self._line > MAX_CHUNK_LINE:
                raise ChunkLineTooLong
            pos = stop
            if end < 0:
                return None
            line, self._line = self._line, 0
            if self._state == _TRAILER:
                if line == 2:  # the empty line: the body's end
                    return pos
                continue
            size_text = self._prefix.split(b";", 1)[0].strip(b" \t\r\n")
            self._prefix = b""
            try:
                size = int(size_text, 16)
            except ValueError:  # pragma: no cover - llhttp refused it before
                return None
            if size == 0:
                self._state = _TRAILER
            else:
                self._left = size + 2
                self._state = _DATA
        return None
