"""A refusal never shows back a value that may be a credential (a new user saw a password
in a git URL and a key written in the clear echoed in `berth apply`'s error)."""

from __future__ import annotations

import pytest

from config.errors import SpecError
from config.parse import parse_spec

BASE = 'name = "web"\nimage = "localhost/x:1"\nport = 8080\n[endpoint]\nport = 18080\n'


@pytest.mark.parametrize(
    ("extra", "path", "secret"),
    [
        (
            '[[mounts]]\ntype = "git"\nsource = "https://u:hunter2@example.com/x.git"\n'
            'target = "/src"\n',
            "mounts[0].source",
            "hunter2",
        ),
        ('[endpoint.auth]\napi_keys = ["sk-live-abcdef0123456789"]\n', "api_keys[0]", "sk-live"),
        (
            '[endpoint.auth]\nbasic = [{ user = "a", password = "pa55word-in-clear" }]\n',
            "password",
            "pa55word",
        ),
    ],
)
def test_a_credential_in_the_clear_is_refused_without_being_shown(
    extra: str, path: str, secret: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(BASE + extra)
    text = "\n".join(caught.value.messages())
    assert path in text, text
    assert secret not in text, text
