"""Small pieces the box, deployment and events pages share: tables and value formatting.

Every cell goes through `h` here, so a page builds rows of plain values and never
concatenates outside text into HTML itself. `Raw` marks a cell that is already HTML (a
link, a form) built from escaped parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from daemon.console.html import h
from daemon.http.server import Response


class Raw(str):
    """A cell that is already safe HTML."""


Cell = object


def cell(value: Cell) -> str:
    return value if isinstance(value, Raw) else h("—" if value is None or value == "" else value)


def table(
    testid: str,
    headers: Sequence[str],
    rows: Iterable[tuple[str, Sequence[Cell]]],
    *,
    empty: str = "none",
    css: str = "grid",
) -> str:
    """A table; each row is (its data-testid, its cells). `empty`: the text with no row."""
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join(
        f'<tr data-testid="{h(tid)}">' + "".join(f"<td>{cell(c)}</td>" for c in cells) + "</tr>"
        for tid, cells in rows
    )
    if not body:
        body = f'<tr><td class="empty" colspan="{len(headers)}">{h(empty)}</td></tr>'
    cls = f' class="{h(css)}"' if css else ""
    return (
        f'<table data-testid="{h(testid)}"{cls}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def link(href: str, text: object, *, testid: str = "", css: str = "") -> Raw:
    tid = f' data-testid="{h(testid)}"' if testid else ""
    cls = f' class="{h(css)}"' if css else ""
    return Raw(f'<a href="{h(href)}"{tid}{cls}>{h(text)}</a>')


def size(n: float | int | None) -> str | None:
    """Bytes in binary units: 1.5 GiB."""
    if n is None:
        return None
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None  # not reached


def percent(p: float | None) -> str | None:
    return None if p is None else f"{p:.0f} %"


def duration(seconds: float | None) -> str | None:
    """3d 4h, 5h 12m, 7m 3s, 42s."""
    if seconds is None:
        return None
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def when(stamp: str | None, now: datetime | None = None) -> Raw | None:
    """An RFC 3339 time as `<time>` with how long ago it was ("12s ago")."""
    if not stamp:
        return None
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return Raw(h(stamp))
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    ago = ((now or datetime.now(UTC)) - then).total_seconds()
    text = f"{duration(ago)} ago" if ago >= 0 else stamp
    return Raw(f'<time datetime="{h(stamp)}" title="{h(stamp)}">{h(text)}</time>')


def not_found(request: object) -> Response:
    path = getattr(request, "path", "")
    return Response(
        status=404, text=f"no such page: {path}\n", content_type="text/plain; charset=utf-8"
    )
