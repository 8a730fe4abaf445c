"""proxy.auth: the verdict on a request's head, the 401, header stripping (pure parts;
the scrypt check runs in a real worker thread)."""

from __future__ import annotations

import base64
import hmac
import json

import pytest
import trio

from proxy.auth import (
    Allowed,
    CheckPassword,
    Credentials,
    Guard,
    Refused,
    hash_key,
    hash_password,
    strip_credentials,
    unauthorized,
)
from proxy.protocol import RequestHead, RequestParser

KEY = b"bk_" + b"A" * 43
OTHER = b"bk_" + b"B" * 43
PASSWORD = b"correct horse"
ALICE = hash_password(PASSWORD)  # module-level: one scrypt for the whole file


def head(*headers: tuple[str, str], method: str = "GET", body: bytes = b"") -> RequestHead:
    lines = "".join(f"{n}: {v}\r\n" for n, v in headers)
    extra = f"Content-Length: {len(body)}\r\n" if body else ""
    raw = f"{method} /v1/chat HTTP/1.1\r\nHost: x\r\n{lines}{extra}\r\n".encode() + body
    event = RequestParser().feed(raw)[0]
    assert isinstance(event, RequestHead)
    return event


def basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


def creds(*, users: bool = False, forward: bool = False) -> Credentials:
    return Credentials(
        keys={"key:k1": hash_key(KEY), "secret:team": hash_key(b"team-secret")},
        users={"alice": ALICE} if users else {},
        forward_auth=forward,
    )


def test_bearer_token_is_allowed_by_its_id() -> None:
    g = Guard(creds())
    assert g.check(head(("Authorization", f"Bearer {KEY.decode()}")).headers) == Allowed("key:k1")
    assert g.check(head(("authorization", "bearer team-secret")).headers) == Allowed("secret:team")


def test_x_api_key_is_allowed() -> None:
    g = Guard(creds())
    assert g.check(head(("x-api-key", KEY.decode())).headers) == Allowed("key:k1")
    assert g.check(head(("X-Api-Key", "team-secret")).headers) == Allowed("secret:team")


@pytest.mark.parametrize(
    ("headers", "presented"),
    [
        ((), False),
        ((("Authorization", f"Bearer {OTHER.decode()}"),), True),
        ((("x-api-key", KEY.decode()[:-1]),), True),
        ((("Authorization", f"Bearer {KEY.decode()}x"),), True),
        ((("Authorization", "Bearer "),), True),
        ((("Authorization", f"Digest {KEY.decode()}"),), True),
        ((("Authorization", KEY.decode()),), True),
        ((("Authorization", basic("alice", PASSWORD)),), True),  # no basic users here
    ],
)
def test_wrong_or_missing_credentials_are_refused(
    headers: tuple[tuple[str, str], ...], presented: bool
) -> None:
    assert Guard(creds()).check(head(*headers).headers) == Refused(presented=presented)


def test_any_right_credential_among_several_is_enough() -> None:
    h = head(("x-api-key", "nope"), ("Authorization", f"Bearer {KEY.decode()}"))
    assert Guard(creds()).check(h.headers) == Allowed("key:k1")


def test_an_empty_set_refuses_everyone() -> None:
    assert Guard(Credentials()).check(head(("x-api-key", KEY.decode())).headers) == Refused(True)


def test_digests_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module proxy.auth calls
    assert creds().bearer(KEY) == "key:k1"
    assert seen == [(hash_key(KEY), hash_key(KEY))]


def test_credentials_hold_no_plaintext() -> None:
    c = creds(users=True)
    assert KEY not in repr(c).encode() and b"team-secret" not in repr(c).encode()
    assert set(c.keys.values()) == {hash_key(KEY), hash_key(b"team-secret")}
    assert PASSWORD not in repr(ALICE).encode() and ALICE.digest != PASSWORD


def test_basic_needs_a_password_check_then_is_remembered() -> None:
    async def main() -> None:
        g = Guard(creds(users=True))
        h = head(("Authorization", basic("alice", PASSWORD)))
        pending = g.check(h.headers)
        assert isinstance(pending, CheckPassword) and pending.user == "alice"
        assert await g.verify(pending) == Allowed("user:alice")
        assert g.check(h.headers) == Allowed("user:alice")  # remembered: no scrypt now
        wrong = g.check(head(("Authorization", basic("alice", b"wrong"))).headers)
        assert isinstance(wrong, CheckPassword)
        assert await g.verify(wrong) == Refused(presented=True)
        again = g.check(head(("Authorization", basic("alice", b"wrong"))).headers)
        assert isinstance(again, CheckPassword)  # a wrong one is never remembered
        g.set_credentials(creds(users=True, forward=True))
        assert isinstance(g.check(h.headers), CheckPassword)  # a new set forgets

    trio.run(main)


@pytest.mark.parametrize(
    "value",
    [
        basic("bob", PASSWORD),
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"nocolon").decode(),
    ],
)
def test_unknown_user_or_malformed_basic_is_refused_at_once(value: str) -> None:
    assert Guard(creds(users=True)).check(head(("Authorization", value)).headers) == Refused(True)


def test_admit_strips_credential_headers_and_counts() -> None:
    async def main() -> None:
        g = Guard(creds())
        h = head(("Authorization", f"Bearer {KEY.decode()}"), ("x-api-key", "x"), ("Accept", "*/*"))
        assert await g.admit(h) is None
        assert [n.lower() for n, _ in h.headers] == [b"host", b"accept"]
        assert await g.admit(head()) == Refused(presented=False)
        assert g.allowed == {"key:k1": 1} and g.refused == 1

    trio.run(main)


def test_forward_auth_keeps_the_headers() -> None:
    async def main() -> None:
        h = head(("Authorization", f"Bearer {KEY.decode()}"), ("x-api-key", "x"))
        assert await Guard(creds(forward=True)).admit(h) is None
        assert [n.lower() for n, _ in h.headers] == [b"host", b"authorization", b"x-api-key"]

    trio.run(main)


def test_strip_credentials_keeps_everything_else() -> None:
    hs = [(b"Host", b"x"), (b"AUTHORIZATION", b"a"), (b"X-API-KEY", b"k"), (b"x-api-keys", b"v")]
    assert strip_credentials(hs) == [(b"Host", b"x"), (b"x-api-keys", b"v")]


def _parse(answer: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head_bytes.decode().split("\r\n")
    fields = [(n.lower(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines)]
    return status, fields, body


def test_401_text_with_bearer_challenge() -> None:
    status, fields, body = _parse(unauthorized(head(), creds(), presented=False))
    assert status == "HTTP/1.1 401 Unauthorized"
    assert [v for n, v in fields if n == "www-authenticate"] == ['Bearer realm="berth"']
    assert ("content-length", str(len(body))) in fields
    assert body.startswith(b"authentication required") and ("connection", "close") not in fields


def test_401_json_for_json_clients_with_basic_challenge_too() -> None:
    h = head(("Accept", "application/json"))
    status, fields, body = _parse(unauthorized(h, creds(users=True), presented=True, close=True))
    assert [v for n, v in fields if n == "www-authenticate"] == [
        'Bearer realm="berth", error="invalid_token"',
        'Basic realm="berth", charset="UTF-8"',
    ]
    assert ("content-type", "application/json") in fields and ("connection", "close") in fields
    assert json.loads(body) == {
        "error": {"message": "invalid credentials", "type": "authentication_error",
                  "param": None, "code": 401}
    }  # fmt: skip


def test_401_to_head_has_no_body() -> None:
    _, fields, body = _parse(unauthorized(head(method="HEAD"), creds(), presented=False))
    assert body == b"" and int(dict(fields)["content-length"]) > 0
