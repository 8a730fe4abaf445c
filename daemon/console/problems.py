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


def problem_line(problem: str, text: str) -> int | None:
    """The 1-based line of `text` that `problem` ("path: message") is about, if found."""
    said = _LINE.search(problem)
    if said:
        return int(said.group(1))
    path, sep, _ = problem.partition(": ")
    if not sep or " " in path:
        return None
    keys = _INDEX.sub("", path).split(".")
    table, key = ".".join(keys[:-1]), keys[-1]
    current = ""
    header_line = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            current = header.group(1).replace('"', "").replace(" ", "")
            if current == ".".join(keys):
                header_line = number
            continue
        if current == table and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return number
    return header_line


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
