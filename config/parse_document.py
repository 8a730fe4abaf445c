"""Whole-document checks that run before any field is read: nesting depth and control bytes.

Two kinds of input no field's own rule should have to think about:
- Nesting. TOML arrays and inline tables nest without limit, and the TOML decoder (and any
  recursive walk after it) recurses once per level: a few hundred `[` end in RecursionError,
  which the admin API would answer as a 500. No spec needs more than a handful of levels, so
  `nesting_problem(text)` scans the text (outside strings and comments) before it is decoded
  and refuses past `MAX_NESTING`; `document_problems(data)` holds decoded documents (dotted
  keys nest too, without brackets) to the same depth.
- Control bytes. A NUL in an env value, a command argument or a label cannot reach a
  container (the runtime refuses it at create time, and the replica loops on the failure);
  other C0 controls and DEL in a spec are either mistakes or terminal tricks aimed at whoever
  reads `berth get`. Every string and key in the document is swept: NUL and control bytes are
  refused, naming the field's path (`env.TOKEN`, `command[2]`); tab, newline and carriage
  return stay allowed in values (a `sh -c` script spans lines), never in keys.
The walk is iterative, so no document can make it recurse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from config.errors import Problem
from config.reader import join_path

MAX_NESTING = 16  # the deepest spec uses about 4 (an inline table in an array of tables)
_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def nesting_problem(text: str) -> Problem | None:
    """A problem when the TOML `text` nests arrays and inline tables deeper than MAX_NESTING."""
    depth = 0
    line = 1
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            i, line = _skip_string(text, i, line)
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return Problem(
                    "",
                    f"nested more than {MAX_NESTING} levels deep (arrays and tables) at line "
                    f"{line}; no spec needs that many",
                )
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def _skip_string(text: str, i: int, line: int) -> tuple[int, int]:
    """Past the string starting at `i` (basic or literal, single- or multi-line)."""
    quote = text[i]
    triple = text.startswith(quote * 3, i)
    delimiter = quote * 3 if triple else quote
    j = i + len(delimiter)
    n = len(text)
    while j < n:
        c = text[j]
        if c == "\n":
            line += 1
            if not triple:
                return j, line - 1  # an unterminated string: the decoder will say so
        if c == "\\" and quote == '"':
            j += 2
            continue
        if text.startswith(delimiter, j):
            return j + len(delimiter), line
        j += 1
    return n, line


def document_problems(data: Mapping[str, object]) -> list[Problem]:
    """Control bytes in any key or string, and nesting past MAX_NESTING, each at its path."""
    problems: list[Problem] = []
    stack: list[tuple[str, object, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            reason = _control_reason(value, _VALUE_CONTROL)
            if reason:
                problems.append(Problem(path, reason))
            continue
        if not isinstance(value, Mapping | list):
            continue
        if depth >= MAX_NESTING:
            problems.append(
                Problem(path, f"nested more than {MAX_NESTING} levels deep; no spec needs that")
            )
            continue
        if isinstance(value, list):
            items: list[tuple[str, object]] = [(join_path(path, i), v) for i, v in enumerate(value)]
        else:
            items = []
            for key, v in value.items():
                key = str(key)
                reason = _control_reason(key, _KEY_CONTROL)
                if reason:
                    shown = ascii(key)[1:-1]
                    problems.append(Problem(path, f'key "{shown}": {reason}'))
                    continue
                items.append((join_path(path, key), v))
        stack.extend((p, v, depth + 1) for p, v in reversed(items))
    return problems


def _control_reason(text: str, pattern: re.Pattern[str]) -> str | None:
    if "\x00" in text:
        return "must not contain a NUL byte"
    m = pattern.search(text)
    if m:
        return f"must not contain control characters (U+{ord(m.group()):04X})"
    return None
