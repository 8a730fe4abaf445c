"""Human output for the `berth` command: aligned tables, key/value blocks, units.

Everything here is pure (values in, text out). Missing values print as "-", so a daemon that
sends fewer keys than expected still gives a readable table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

MISSING = "-"


def cell(value: object) -> str:
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) if value else MISSING
    return " ".join(str(value).split())


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    lines = [list(headers)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    width = max((len(key) for key, _ in pairs), default=0) + 1
    return "\n".join(f"{key + ':':<{width}}  {cell(value)}" for key, value in pairs)


def short_id(value: object, length: int = 12) -> str:
    return cell(value)[:length] if value else MISSING


def timestamp(value: object) -> str:
    """An RFC 3339 time as `2024-05-01T12:00:05Z` (UTC, whole seconds)."""
    if not isinstance(value, str) or not value:
        return cell(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(value: object) -> str:
    """Seconds as `42.0s`, `5m07s`, `2h03m` or `3d04h`: the two largest units that matter."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return cell(value)
    seconds = int(value)
    if seconds < 60:
        return f"{float(value):.1f}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def size(value: object) -> str:
    """Bytes in binary units: 536870912 -> "512Mi"."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return cell(value)
    amount = float(value)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(amount) < 1024 or unit == "Ti":
            return f"{amount:.0f}{unit}" if amount == int(amount) else f"{amount:.1f}{unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def percent(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return cell(value)
    return f"{value:.1f}%"


def millis(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return cell(value)
    return f"{value:.1f}ms" if value < 100 else f"{value:.0f}ms"


def seconds_as_ms(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return cell(value)
    return millis(value * 1000)


def rate(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return cell(value)
    return f"{value:.1f}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def event_line(event: Mapping[str, object]) -> str:
    """One event as a line; fixed widths, since a followed stream cannot be measured first.
    An event an admin request caused ends with the caller's uid (`uid=1000`)."""
    uid = event.get("uid")
    by = f"  uid={uid}" if isinstance(uid, int) and not isinstance(uid, bool) else ""
    return (
        f"{timestamp(event.get('time'))}  {cell(event.get('deployment')):<16} "
        f"{cell(event.get('replica')):<12} {cell(event.get('kind')):<12} "
        f"{cell(event.get('message'))}{by}"
    ).rstrip()


def gpu_line(index: int, gpu: object) -> str:
    if not isinstance(gpu, Mapping):
        return f"{index}: {cell(gpu)}"
    number = gpu.get("index", index)
    name = gpu.get("name") or gpu.get("model") or MISSING
    memory = gpu.get("memory_total") or gpu.get("memory_bytes") or gpu.get("memory")
    text = f"{number}: {name}"
    if memory:
        text += f" ({size(memory)})"
    uuid = gpu.get("uuid")
    if uuid:
        text += f" {uuid}"
    return text


def print_json(value: object) -> int:
    """`--json`: berthd's answer as it came, indented; exit status 0."""
    print(json.dumps(value, indent=2))
    return 0


def ago(seconds: float) -> str:
    """How long ago, in its largest unit: `12s ago`, `4m ago`, `3h ago`, `2d ago`."""
    s = max(int(seconds), 0)
    for unit, size_s in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size_s:
            return f"{s // size_s}{unit} ago"
    return f"{s}s ago"


def deployment_status(d: Mapping[str, object], now: datetime | None = None) -> str:
    """`berth ls`'s STATUS: the status, and for an idle one when it went to zero, as
    `idle (unloaded 4m ago)`."""
    status = cell(d.get("status"))
    when = d.get("unloaded_at")
    if status != "idle" or not isinstance(when, str) or not when:
        return status
    try:
        moment = datetime.fromisoformat(when)
    except ValueError:
        return status
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elapsed = ((now or datetime.now(UTC)) - moment).total_seconds()
    return f"idle (unloaded {ago(elapsed)})"
