"""Deterministic YAML text for Kubernetes objects, with comments above them.

Objects are plain dicts built in the order Kubernetes' own docs show their keys
(apiVersion, kind, metadata, spec); `document` keeps that order (no key sorting), quotes
what YAML would otherwise read as another type ("8080", "on", "1e3"), never wraps a long
string, and writes no anchors or aliases. The same object gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def comment_lines(lines: Iterable[str]) -> str:
    """Each line as a `# ` comment (an empty line as a bare `#`), newline-terminated."""
    out = []
    for line in lines:
        for part in line.splitlines() or [""]:
            out.append(f"# {part}".rstrip())
    return "".join(f"{line}\n" for line in out)


def document(obj: Mapping[str, Any], *, comments: Iterable[str] = ()) -> str:
    """One YAML document: the comments, then the object."""
    body = yaml.dump(
        obj,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=2**31 - 1,
        indent=2,
    )
    return comment_lines(comments) + body


def stream(documents: Iterable[str]) -> str:
    """Several documents as one YAML stream (`kubectl apply -f -` reads it)."""
    return "---\n".join(documents)
