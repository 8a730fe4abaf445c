"""The headers every console answer carries, the session cookie, and the CSRF check.

Invariants:
- Every answer (pages, fragments, static files, redirects, refusals, the stream) carries
  `SECURITY_HEADERS`: a CSP that allows scripts, styles, connections and form targets from
  the console's own origin only and no inline script or style; nosniff; no referrer; no
  framing. Pages and fragments are `Cache-Control: no-store` (they show live state and a
  CSRF token); static files may be cached.
- The session cookie is `HttpOnly; SameSite=Strict; Path=/console` (and `Secure` when the
  console speaks TLS): scripts cannot read it, and no other site's page sends it.
- Every POST carries the session's CSRF token (form field `csrf` or header
  `X-CSRF-Token`), compared in constant time; a missing or wrong one is a 403 whatever the
  route. The sign-in form, posted before there is a session, carries none: its own
  defence is SameSite, the rate limit, and that it only ever grants what the password does.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
NO_STORE = ("Cache-Control", "no-store")
COOKIE_NAME = "berth_console"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


def session_cookie(session_id: str, *, secure: bool, max_age: int | None = None) -> str:
    """The Set-Cookie value for `session_id` ("" with max_age 0: sign out)."""
    parts = [f"{COOKIE_NAME}={session_id}", "HttpOnly", "SameSite=Strict", "Path=/console"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def cookie_value(headers: Mapping[str, str], name: str = COOKIE_NAME) -> str | None:
    """The value of cookie `name` in the request's Cookie header(s), if any."""
    raw = headers.get("cookie", "")
    for piece in raw.replace(",", ";").split(";"):
        key, sep, value = piece.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return None


def csrf_ok(expected: str, headers: Mapping[str, str], form: Mapping[str, str]) -> bool:
    """Whether the request carries the session's token, in the header or the form."""
    given = headers.get(CSRF_HEADER) or form.get(CSRF_FIELD) or ""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
