"""berthd's own log lines: one structured line per record on stderr, for journald.

`level=info deployment=echo replica=1a2b3c4d event=created msg="replica 1a2b3c4d created"`
(and `uid=1000` on an event an admin request caused).
Fields a record lacks are left out. Values with spaces or quotes are quoted.
"""

from __future__ import annotations

import logging
import sys

FIELDS = ("deployment", "replica", "event", "uid")


def _quote(value: str) -> str:
    if value and not any(ch in value for ch in ' "=\\\n'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"level={record.levelname.lower()}"]
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":  # uid 0 (root) is a value
                parts.append(f"{name}={_quote(str(value))}")
        parts.append(f"msg={_quote(record.getMessage())}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    # berthd's loggers, and the data plane's (the proxy imports nothing of berthd's, so its
    # records come under a root of their own).
    for name in ("berthd", "proxy"):
        root = logging.getLogger(name)
        root.handlers[:] = [handler]
        root.setLevel(level.upper())
        root.propagate = False
