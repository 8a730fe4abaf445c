"""`/console/static/FILE`: the files under daemon/console/static/, read-only.

Invariants: only regular files under the static folder are served (a `..`, an absolute
path, a hidden name or a folder is a 404: no listing); each with its Content-Type by its
suffix and `Cache-Control: public, max-age=300` (short: an upgraded berthd's new scripts
are picked up within minutes). Files are read from disk on each request (they are small
and only a signed-in browser's page loads ask for them).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import trio

from daemon.http.server import Response

ROOT = Path(__file__).resolve().parent / "static"
CACHE = ("Cache-Control", "public, max-age=300")
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}
_NOT_FOUND = Response(status=404, text="no such file\n")


def resolve(name: str, root: Path = ROOT) -> Path | None:
    """The file `name` names under `root`, or None when it names nothing servable."""
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        return None
    if PurePosixPath(name).is_absolute():
        return None
    path = root.joinpath(*parts)
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if root.resolve() not in real.parents or not real.is_file():
        return None
    return real


async def serve(name: str, root: Path = ROOT) -> Response:
    path = resolve(name, root)
    if path is None or path.suffix not in TYPES and path.name != "LICENSE":
        return _NOT_FOUND
    data = await trio.to_thread.run_sync(path.read_bytes)
    content_type = TYPES.get(path.suffix, "text/plain; charset=utf-8")
    return Response(body=data, content_type=content_type, headers=(CACHE,))
