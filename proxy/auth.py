"""Endpoint authentication: a request's head in, allow (by which credential) or 401 out.

A protected endpoint (`[endpoint.auth]`, or keys made by `berth keys create`) forwards a
request only when it carries one of its credentials:
- a bearer token, as OpenAI's clients send it (`Authorization: Bearer KEY`) or Anthropic's
  (`x-api-key: KEY`): an API key from the spec's secrets or one that berth generated;
- a basic user (`Authorization: Basic base64(user:password)`, RFC 7617).
Anything else is answered here with 401 and `WWW-Authenticate` (Bearer, and Basic when the
endpoint has basic users), as JSON to a client that asks for it (`proxy.answers`' shape,
type `authentication_error`), and never reaches a replica.

Invariants:
- Credentials are held only as hashes. A bearer token is kept as SHA-256 of itself (domain
  separated, `hash_key`): berth's generated keys carry 256 random bits, which no salt or
  slow hash could protect better, and one digest per request finds the key among any
  number (an index by digest, then `hmac.compare_digest` on the whole digest). A basic
  password is kept as scrypt (N=2^14, r=8, p=1) with a salt of its own: a person's password
  may be guessable. That costs ~40 ms, so it runs in a worker thread (at most
  `SCRYPT_THREADS` at once: a flood of wrong passwords holds those threads, not the event
  loop), and a verified (user, password) pair is remembered (by a keyed digest, never the
  password; at most `VERIFIED_CACHE` pairs) so a client sending the same header again costs
  a dictionary look-up. Wrong ones are never remembered.
- Every comparison of a secret with what a client sent is `hmac.compare_digest`.
- `Credentials` is immutable; `Guard.set_credentials` swaps it in place (a key created or
  revoked), so the next request on every connection, kept-alive ones included, is judged
  by the new set: no rebind. The remembered pairs belong to the set and go with it.
- Unless `forward_auth`, the header fields that carried a credential (`Authorization`,
  `x-api-key`) are removed before the request is forwarded.
- Counters: allowed requests per credential id (never the credential), and the refused.
- A refused request's body is read away (bounded in bytes and time) so that the connection
  can carry the next request, as a client that retries with a credential expects; one
  that would take longer is answered with `Connection: close`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import trio

from proxy.answers import error_response, wants_json
from proxy.protocol import END, ProtocolError, RequestHead
from proxy.reader import ClientGone, ClientReader
from proxy.sockets import Timeout

REALM: Final = "berth"
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_MAXMEM: Final = 64 * 2**20
SCRYPT_THREADS: Final = 2
VERIFIED_CACHE: Final = 1024
DISCARD_LIMIT: Final = 1024 * 1024  # a refused request's body read away to keep the connection

_AUTHORIZATION: Final = b"authorization"
_API_KEY: Final = b"x-api-key"
CREDENTIAL_HEADERS: Final = frozenset({_AUTHORIZATION, _API_KEY})
_KEY_DOMAIN: Final = b"berth-endpoint-key\x00"
_MAX_CREDENTIAL_BYTES: Final = 4096


def hash_key(key: bytes) -> bytes:
    """The stored form of a bearer token: SHA-256 (see the module docstring)."""
    return hashlib.sha256(_KEY_DOMAIN + key).digest()


@dataclass(frozen=True)
class PasswordHash:
    """A basic user's password as scrypt with its own salt."""

    salt: bytes
    digest: bytes

    def __repr__(self) -> str:
        return "PasswordHash(...)"


def hash_password(password: bytes, salt: bytes | None = None) -> PasswordHash:
    """scrypt with a fresh 16-byte salt (~40 ms: call it from a thread)."""
    salt = os.urandom(16) if salt is None else salt
    return PasswordHash(salt, _scrypt(password, salt))


def _scrypt(password: bytes, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM, dklen=32
    )


@dataclass(frozen=True)
class Credentials:
    """An endpoint's credential set: bearer key hashes by credential id, basic users."""

    keys: Mapping[str, bytes] = field(default_factory=dict)  # id -> hash_key(key)
    users: Mapping[str, PasswordHash] = field(default_factory=dict)  # user -> its hash
    forward_auth: bool = False
    _by_digest: dict[bytes, tuple[str, bytes]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for cid, digest in self.keys.items():
            self._by_digest[digest[:8]] = (cid, digest)

    def __repr__(self) -> str:
        return f"Credentials(keys={sorted(self.keys)}, users={sorted(self.users)})"

    def bearer(self, token: bytes) -> str | None:
        """The id of the key `token` is, or None."""
        digest = hash_key(token)
        hit = self._by_digest.get(digest[:8])
        if hit is not None and hmac.compare_digest(hit[1], digest):
            return hit[0]
        return None


@dataclass(frozen=True)
class Allowed:
    credential: str  # its id: "key:ID", "secret:NAME" or "user:NAME"


@dataclass(frozen=True)
class Refused:
    presented: bool  # a credential was sent (and is wrong), rather than none


@dataclass(frozen=True)
class CheckPassword:
    """A basic user whose password must be checked by scrypt (not remembered as verified)."""

    user: str
    password: bytes
    stored: PasswordHash
    memo: bytes  # the key it is remembered by once verified


Verdict = Allowed | Refused | CheckPassword


def presented(headers: Iterable[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
    """The bearer tokens and the Basic credentials (still base64) a request carries."""
    tokens: list[bytes] = []
    basics: list[bytes] = []
    for name, value in headers:
        n = name.lower()
        if n == _API_KEY:
            tokens.append(value.strip())
        elif n == _AUTHORIZATION:
            scheme, _, rest = value.strip().partition(b" ")
            scheme = scheme.lower()
            if scheme == b"bearer":
                tokens.append(rest.strip())
            elif scheme == b"basic":
                basics.append(rest.strip())
            else:
                tokens.append(b"")  # an unknown scheme: presented, and wrong
    return tokens, basics


def decode_basic(encoded: bytes) -> tuple[str, bytes] | None:
    """(user, password) from a Basic credential, or None when it is not one."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = raw.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


class Guard:
    """One endpoint's authentication: its current `Credentials`, remembered verified basic
    pairs, and counters (see the module docstring)."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.allowed: dict[str, int] = {}  # credential id -> requests let through
        self.refused = 0
        self._memo_key = os.urandom(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._limiter = trio.CapacityLimiter(SCRYPT_THREADS)

    def __repr__(self) -> str:
        return f"<Guard {self.credentials!r} refused={self.refused}>"

    def set_credentials(self, credentials: Credentials) -> None:
        """A new set for the next request (a key created or revoked); counters go on."""
        if credentials == self.credentials:
            return
        self.credentials = credentials
        self._verified.clear()

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> Verdict:
        """The verdict on a request's header fields, without blocking (pure but for the
        remembered pairs it reads)."""
        creds = self.credentials
        tokens, basics = presented(headers)
        for token in tokens:
            if token and len(token) <= _MAX_CREDENTIAL_BYTES:
                cid = creds.bearer(token)
                if cid is not None:
                    return Allowed(cid)
        pending: CheckPassword | None = None
        for encoded in basics:
            decoded = decode_basic(encoded) if len(encoded) <= _MAX_CREDENTIAL_BYTES else None
            if decoded is None:
                continue
            user, password = decoded
            stored = creds.users.get(user)
            if stored is None:
                continue
            memo = hmac.new(self._memo_key, user.encode() + b"\x00" + password, "sha256").digest()
            known = self._verified.get(memo)
            if known is not None and hmac.compare_digest(known.encode(), user.encode()):
                self._verified.move_to_end(memo)
                return Allowed("user:" + user)
            pending = pending or CheckPassword(user, password, stored, memo)
        if pending is not None:
            return pending
        return Refused(presented=bool(tokens or basics))

    async def verify(self, pending: CheckPassword) -> Allowed | Refused:
        """Check a basic password by scrypt in a worker thread; remember it if right."""
        creds = self.credentials
        digest = await trio.to_thread.run_sync(
            _scrypt, pending.password, pending.stored.salt, limiter=self._limiter
        )
        if not hmac.compare_digest(digest, pending.stored.digest):
            return Refused(presented=True)
        if self.credentials is creds:  # not revoked meanwhile
            self._verified[pending.memo] = pending.user
            while len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return Allowed("user:" + pending.user)

    async def admit(self, head: RequestHead) -> Refused | None:
        """None when the request may go on (its credential headers stripped unless
        `forward_auth`), else why it gets a 401 (`unauthorized`)."""
        checked = self.check(head.headers)
        verdict = await self.verify(checked) if isinstance(checked, CheckPassword) else checked
        if isinstance(verdict, Allowed):
            self.allowed[verdict.credential] = self.allowed.get(verdict.credential, 0) + 1
            if not self.credentials.forward_auth:
                head.headers = strip_credentials(head.headers)
            return None
        self.refused += 1
        return verdict

    def answer(self, head: RequestHead, refused: Refused, *, close: bool) -> bytes:
        return unauthorized(head, self.credentials, presented=refused.presented, close=close)


async def discard_body(reader: ClientReader, head: RequestHead, timeout: float) -> bool:  # noqa: ASYNC109
    """Read a refused request's body away (at most `DISCARD_LIMIT` bytes, within `timeout`)
    so the connection can carry the next request; False when it cannot (then close)."""
    if head.content_length is not None and head.content_length > DISCARD_LIMIT:
        return False
    seen = 0  # a request without a body has its END queued: read that too
    with trio.move_on_after(timeout):
        try:
            while True:
                event = reader.pop_ready() or await reader.next_event(timeout)
                if event is END:
                    return True
                if isinstance(event, bytes):
                    seen += len(event)
                    if seen > DISCARD_LIMIT:
                        return False
        except (ClientGone, ProtocolError, Timeout):
            return False
    return False


def strip_credentials(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The header fields without `Authorization` and `x-api-key`."""
    return [(n, v) for n, v in headers if n.lower() not in CREDENTIAL_HEADERS]


def challenges(credentials: Credentials, *, presented: bool) -> list[bytes]:
    bearer = b'Bearer realm="%s"' % REALM.encode()
    if presented:
        bearer += b', error="invalid_token"'  # RFC 6750 3.1
    out = [bearer]
    if credentials.users:
        out.append(b'Basic realm="%s", charset="UTF-8"' % REALM.encode())
    return out


def unauthorized(
    head: RequestHead, credentials: Credentials, *, presented: bool, close: bool = False
) -> bytes:
    """The 401 answer: WWW-Authenticate, and the message as JSON or text (`proxy.answers`)."""
    message = (
        "invalid credentials"
        if presented
        else "authentication required: send Authorization: Bearer KEY (or x-api-key: KEY)"
    )
    return error_response(
        401,
        message,
        close=close,
        as_json=wants_json(head),
        head_only=head.method == b"HEAD",
        headers=tuple(
            b"WWW-Authenticate: %s" % c for c in challenges(credentials, presented=presented)
        ),
    )
