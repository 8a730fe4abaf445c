"""What a refused spec (or berthd.toml) says: every problem, each naming its field path.

`Problem` prints as `replicas.min: must be an integer (got "two")`, the form DESIGN.md
promises and the admin API returns in `problems`. `SpecError` carries all of them, so one
`berth apply` shows everything wrong with a file at once instead of one error per try.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_SHOW_MAX = 60


@dataclass(frozen=True)
class Problem:
    """One thing wrong at `path` ("" for the whole document, e.g. a TOML syntax error).

    `got` is the offending value, or None when there is none to show (a missing field).
    """

    path: str
    message: str
    got: object | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.got is not None:
            text += f" (got {show_value(self.got)})"
        return text


class WithheldValueError(ValueError):
    """A refusal whose value is not shown back (`got`): it may be a credential (a password
    in a URL, a key written where a secret reference belongs)."""


class SpecError(Exception):
    """A spec (or settings file) that cannot be accepted, with every problem found in it."""

    def __init__(self, problems: Iterable[Problem], *, source: str = "<spec>") -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(self.summary())

    def summary(self) -> str:
        """One line: the problem itself when there is one, else a count and all of them."""
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        joined = "; ".join(str(p) for p in self.problems)
        return f"{self.source}: {len(self.problems)} problems: {joined}"

    def messages(self) -> list[str]:
        """The problems as strings: the admin API's `problems` list."""
        return [str(p) for p in self.problems]

    def __str__(self) -> str:
        return self.summary()


def show_value(value: object) -> str:
    """`value` as TOML would write it, shortened: "two", 3, true, [1, 2], a table."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Mapping):
        text = "a table"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except ValueError:  # a circular structure: TOML cannot produce one, but be safe
            text = repr(value)
    if len(text) > _SHOW_MAX:
        text = text[: _SHOW_MAX - 3] + "..."
    return text
