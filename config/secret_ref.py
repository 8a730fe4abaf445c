"""A value given by reference to a secret: `{ secret = "NAME" }` in a spec.

The spec (and so its history, `berth get`, `--json`, `history --diff`) holds only the
reference; the value lives in berthd's secret store and is read where it is used. The
type is shared by every field that takes a secret (`[env]`, `[endpoint.auth]`, ...).

A reference is checked here for its form only; whether the secret exists is the apply's
check (it names the field that refers to a missing one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from config.errors import WithheldValueError

SECRET_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
SECRET_NAME_RULE: Final = (
    'must be 1-63 characters of a-z, 0-9, ".", "_" and "-", starting and ending with a '
    "letter or digit"
)


@dataclass(frozen=True)
class SecretRef:
    """The secret named `name`; never its value."""

    name: str

    def __str__(self) -> str:
        return f'{{ secret = "{self.name}" }}'

    def to_dict(self) -> dict[str, str]:
        """Its canonical (and TOML) form."""
        return {"secret": self.name}


def as_secret_ref(raw: object) -> SecretRef:
    """A Reader converter: `{ secret = "NAME" }` -> SecretRef, else ValueError."""
    if not isinstance(raw, Mapping) or set(raw) != {"secret"}:
        # Not echoed: a key or password written here in the clear is what this refuses.
        raise WithheldValueError('must be a reference to a secret: { secret = "NAME" }')
    name = raw["secret"]
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise ValueError(f"secret name {SECRET_NAME_RULE}")
    return SecretRef(name)
