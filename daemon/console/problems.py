"""A refused spec's problems, each by its field path and, where one can be found, the line
of the spec it is about (the TOML parser's own "line N" for a syntax error; else the line
that sets the field's key, in its table)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from daemon.console.html import h

_LINE = re.compile(r"\bline (\d+)")
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")
_INDEX = re.compile(r"\[\d+\]")
_INDEX_NUMBER = re.compile(r"\[(\d+)\]")


def problem_line(problem: str, text: str) -> int | None:
    """The 1-based line of `text` that `problem` ("path: message") is about, if found: the
    line setting the key, else its table's header (a missing key)."""
    said = _LINE.search(problem)
    if said:
        return int(said.group(1))
    path, sep, _ = problem.partition(": ")
    if not sep or " " in path:
        return None
    indexes = [int(i) for i in _INDEX_NUMBER.findall(path)]
    keys = _INDEX.sub("", path).split(".")
    table, key = ".".join(keys[:-1]), keys[-1]
    wanted = indexes[-1] if indexes and path.rstrip().endswith(f"].{key}") else 0
    current, seen = "", -1
    table_line = whole_line = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            current = header.group(1).replace('"', "").replace(" ", "")
            if current == table:
                seen += 1
                if seen == wanted:
                    table_line = number
            if current == ".".join(keys) and whole_line is None:
                whole_line = number
            continue
        if current == table and seen == wanted and _sets(line, key):
            return number
        if not table and not current and _sets(line, key):
            return number
    return whole_line or table_line


def _sets(line: str, key: str) -> bool:
    return re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line) is not None


def problem_list(problems: Sequence[object], text: str) -> str:
    if not problems:
        return ""
    items = []
    for p in problems:
        problem = str(p)
        line = problem_line(problem, text)
        where = f'<span class="line">line {line}</span> ' if line is not None else ""
        items.append(f'<li data-testid="apply-problem">{where}<code>{h(problem)}</code></li>')
    return f'<ul class="problems" data-testid="apply-problems">{"".join(items)}</ul>'
