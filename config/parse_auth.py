"""`[endpoint.auth]`: who may call a deployment's endpoint.

    [endpoint.auth]
    api_keys = [{ secret = "team-key" }]                      # bearer tokens
    basic = [{ user = "alice", password = { secret = "alice-pw" } }]
    forward_auth = false                                      # strip the credential headers

Every credential is a reference to a secret (`config.secret_ref`), never a value: the spec,
its history and `berth get` show only names. That each secret exists is checked at apply.
The table may be empty: the endpoint is then protected by the keys `berth keys create`
makes, and answers 401 to everyone until there is one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from config.errors import Problem, WithheldValueError
from config.reader import Reader, as_bool, join_path
from config.secret_ref import SecretRef, as_secret_ref
from config.spec import BasicUser, EndpointAuth

MAX_CREDENTIALS: Final = 64
# RFC 7617: a user-id cannot contain a colon; control characters are refused too.
_USER: Final = re.compile(r"[^\x00-\x20\x7f:]{1,64}")


def read_auth(r: Reader | None) -> EndpointAuth | None:
    if r is None:
        return None
    api_keys = _read_api_keys(r)
    basic = _read_basic(r)
    forward = r.get("forward_auth", as_bool, False)
    r.close()
    return EndpointAuth(api_keys=api_keys, basic=basic, forward_auth=forward)


def _read_api_keys(r: Reader) -> tuple[SecretRef, ...]:
    raw = r.optional("api_keys", _as_list)
    if raw is None:
        return ()
    keys: list[SecretRef] = []
    for i, item in enumerate(raw):
        path = join_path(r.path_of("api_keys"), i)
        try:
            ref = as_secret_ref(item)
        except ValueError as exc:
            named = getattr(exc, "key", None)  # a wrong name: the problem is at `.secret`
            if named is not None and isinstance(item, Mapping):
                path, item = join_path(path, str(named)), item.get(named)
            shown = None if isinstance(exc, WithheldValueError) else item
            r.problems.append(Problem(path, str(exc), shown))
            continue
        if ref in keys:
            r.problems.append(Problem(path, f'secret "{ref.name}" is listed twice'))
            continue
        keys.append(ref)
    return tuple(keys)


def _read_basic(r: Reader) -> tuple[BasicUser, ...]:
    users: list[BasicUser] = []
    for item in r.tables("basic"):
        user = item.required("user", _as_user)
        password = item.required("password", as_secret_ref)
        item.close()
        if user is not None and any(u.user == user for u in users):
            r.problems.append(Problem(item.path_of("user"), f'user "{user}" is listed twice'))
            continue
        if user is not None and password is not None:
            users.append(BasicUser(user=user, password=password))
    if len(users) > MAX_CREDENTIALS:
        r.problem("basic", f"at most {MAX_CREDENTIALS} users")
    return tuple(users)


def _as_list(raw: object) -> list[object]:
    if not isinstance(raw, list):
        raise ValueError('must be a list of secret references: [{ secret = "NAME" }]')
    if len(raw) > MAX_CREDENTIALS:
        raise ValueError(f"at most {MAX_CREDENTIALS} keys")
    return raw


def _as_user(raw: object) -> str:
    if not isinstance(raw, str) or not _USER.fullmatch(raw):
        raise ValueError("must be 1-64 characters, no colon, space or control character")
    return raw
