"""Unit-file text for Quadlet: values quoted as Quadlet 5.4 and systemd read them back.

Theory of operation. A `.container` value goes through two readers before it reaches
Podman. Quadlet (podman 5.4, `pkg/systemd/parser`) reads `Exec=`, `Environment=`,
`Label=`, `Annotation=`, `Secret=` and `PodmanArgs=` with systemd's word splitting
(double or single quotes, C escapes such as `\\n`, `\\"`, `\\\\`); `Volume=`, `HealthCmd=`
and the other single-value keys it takes as they are. It then writes every value into the
generated service's `ExecStart=` (quoting a word only for blanks, quotes, backslashes and
control characters), where systemd expands `%` specifiers and `$VAR` / `${VAR}`. So:

- every value that ends in `ExecStart=` has `%` written `%%` and `$` written `$$`
  (`command_text`, `plain_value`); `Description=` only needs `%%` (systemd expands
  specifiers there, not variables);
- a word-split value is one word per argument (`word`): bare when it holds nothing
  special, else in double quotes with `\\`, `"` and control characters escaped.

Durations are Go's (`time.ParseDuration`: "2s", "1500ms"), as Podman's health flags take
them; sizes are Podman's (`--shm-size`, `--memory`: a number and b/k/m/g, binary units).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def expansions_escaped(text: str) -> str:
    """`%` and `$` as systemd reads them literally on a command line."""
    return text.replace("%", "%%").replace("$", "$$")


def specifiers_escaped(text: str) -> str:
    """`%` as systemd reads it literally in a setting that expands specifiers only."""
    return text.replace("%", "%%")


def _needs_quotes(text: str) -> bool:
    return text == "" or any(c.isspace() or c in "\"'\\;" or ord(c) < 32 for c in text)


def word(text: str) -> str:
    """One argument as a word of a systemd command line (Exec=, Environment=, ...)."""
    text = expansions_escaped(text)
    if not _needs_quotes(text):
        return text
    out = []
    for c in text:
        if c in _C_ESCAPES:
            out.append(_C_ESCAPES[c])
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def command_text(words: Sequence[str]) -> str:
    """Several arguments as one value (Exec=, PodmanArgs=)."""
    return " ".join(word(w) for w in words)


def plain_value(text: str) -> str:
    """A value Quadlet takes as written (Volume=, HealthCmd=) that ends in ExecStart=."""
    return expansions_escaped(text)


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration, exact to the millisecond: 2.0 -> "2s", 0.25 -> "250ms"."""
    ms = round(seconds * 1000)
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def podman_size(size: int) -> str:
    """Bytes in Podman's size form, the largest binary unit that divides it exactly."""
    for unit, factor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}b"


@dataclass(frozen=True)
class Line:
    """`key=value`, or a comment (`key` None) written `# value`."""

    key: str | None
    value: str


def comment(text: str) -> Line:
    return Line(None, text)


def setting(key: str, value: str) -> Line:
    return Line(key, value)


@dataclass(frozen=True)
class Section:
    name: str
    lines: tuple[Line, ...]


def unit_text(header: Iterable[str], sections: Iterable[Section]) -> str:
    """The file: the header comments, then each section, a blank line between them."""
    out = [f"# {line}".rstrip() for text in header for line in (text.splitlines() or [""])]
    for section in sections:
        if out:
            out.append("")
        out.append(f"[{section.name}]")
        for line in section.lines:
            if line.key is None:
                out.extend(f"# {part}".rstrip() for part in line.value.splitlines() or [""])
            else:
                out.append(f"{line.key}={line.value}")
    return "\n".join(out) + "\n"
