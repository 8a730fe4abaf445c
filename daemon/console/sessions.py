"""Signed-in sessions and the sign-in rate limit, both in memory.

Invariants:
- A session id is 32 random bytes (`secrets.token_urlsafe(32)`), the cookie's value; the
  session (user, CSRF token, last use) lives only in berthd's memory: a berthd restart
  signs everyone out. A session unused for `idle` seconds (12 h) is gone; each use renews
  it. At most `max_sessions` are kept (the oldest-used goes first), so a flood of
  sign-ins cannot grow memory without bound.
- Removing a console user, or giving it a new password, ends that user's sessions: each
  session keeps the password hash it signed in with (`stamp`), compared on every request.
- The sign-in limit allows `attempts` tries per `window` seconds per source address
  (5 a minute); past it a try is refused (429) before the password is checked, so
  guessing costs a minute per five guesses. The table of sources is bounded too.
- Time comes from `clock` (trio's, so MockClock tests it).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

IDLE_TIMEOUT = 12 * 3600.0
MAX_SESSIONS = 10_000
SIGNIN_ATTEMPTS = 5
SIGNIN_WINDOW = 60.0
MAX_SOURCES = 10_000


@dataclass
class Session:
    session_id: str
    user: str
    csrf: str
    last_used: float
    # The user's password hash when they signed in: a request whose user now has another
    # (a new password) or none (removed) ends the session (daemon.console.app).
    stamp: str = ""


class Sessions:
    def __init__(
        self,
        *,
        idle: float = IDLE_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._idle = idle
        self._max = max_sessions
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"<Sessions {len(self._by_id)} signed in>"

    def create(self, user: str, stamp: str = "") -> Session:
        token = secrets.token_urlsafe
        session = Session(token(32), user, token(32), self._clock(), stamp)
        self._by_id[session.session_id] = session
        while len(self._by_id) > self._max:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, renewed; None when unknown or expired."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > self._idle:
            del self._by_id[session_id]
            return None
        session.last_used = now
        self._by_id.move_to_end(session_id)
        return session

    def drop(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def drop_user(self, user: str) -> int:
        gone = [sid for sid, s in self._by_id.items() if s.user == user]
        for sid in gone:
            del self._by_id[sid]
        return len(gone)


class SignInLimiter:
    """At most `attempts` sign-in tries per `window` seconds per source (module docstring)."""

    def __init__(
        self,
        *,
        attempts: int = SIGNIN_ATTEMPTS,
        window: float = SIGNIN_WINDOW,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._attempts = attempts
        self._window = window
        self._max_sources = max_sources
        self._clock = clock
        self._tries: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, source: str) -> bool:
        """Count a try from `source`; False when it is over the limit (not counted)."""
        now = self._clock()
        tries = self._tries.get(source)
        if tries is None:
            tries = self._tries[source] = deque()
            while len(self._tries) > self._max_sources:
                self._tries.popitem(last=False)
        while tries and now - tries[0] >= self._window:
            tries.popleft()
        if len(tries) >= self._attempts:
            return False
        tries.append(now)
        self._tries.move_to_end(source)
        return True

    def retry_after(self, source: str) -> int:
        """Seconds until `source` may try again (0: now)."""
        tries = self._tries.get(source)
        if not tries or len(tries) < self._attempts:
            return 0
        return max(1, int(tries[0] + self._window - self._clock() + 0.999))
