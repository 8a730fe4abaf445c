"""Passive health (outlier ejection, as Envoy's): replicas that fail real requests leave the
rotation before their probes notice.

Every attempt's end is recorded (`Balancer.release`): a replica that answers
`consecutive_5xx` 5xx in a row, or fails `failures` times within `window` seconds (no
answer within the read timeout, a reset, a broken response: what a half-alive replica does
while its health path still answers), is ejected for `ejection_time`, doubled on each
repeat (up to `max_ejection_time`). The count of ejections is forgiven once the replica
has been back for `max_ejection_time` without another.

Invariants:
- At most `max_ejected_percent` of the current set is out at once, and never the last
  replica standing: a failure that would go over it is not an ejection.
- An ejected replica returns when its time is up and, where probes confirm it
  (`confirm_by_probe`), only at its first readiness probe that passes after that: the
  proxy asks for that probe (`on_eject`'s caller marks it suspect) and waits for
  `probe_passed`. Without probes (the standalone proxy) it returns when its time is up.
- `out` is the set the balancer skips; recording and reading cost a dict lookup or two.
- A replica that leaves the set is forgotten (`retain`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection

from config.spec import Outlier
from proxy.upstreams import Upstream


class _Record:
    __slots__ = ("consecutive_5xx", "failures", "ejections", "until", "back_at", "asked")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.failures: deque[float] = deque()
        self.ejections = 0
        self.until = 0.0  # out until then (0: in)
        self.back_at = 0.0  # when it last came back
        self.asked = False  # its time is up and its probe was asked for


class Outliers:
    """Who is ejected, and why (see the module docstring)."""

    __slots__ = ("rules", "out", "_records", "_set_size", "on_eject", "on_return", "by_probe")

    def __init__(self, rules: Outlier = Outlier()) -> None:  # noqa: B008 - frozen
        self.rules = rules
        self.out: set[Upstream] = set()
        self._records: dict[Upstream, _Record] = {}
        self._set_size = 0
        # Told of each ejection (replica, why, seconds) and return (replica): sync, must
        # not block (the daemon records an event; it also probes the replica).
        self.on_eject: Callable[[Upstream, str, float], None] | None = None
        self.on_return: Callable[[Upstream], None] | None = None
        self.by_probe = False  # a return waits for a passing probe (`probe_passed`)

    def retain(self, upstreams: Collection[Upstream]) -> None:
        """The current set: records of replicas that left it go."""
        self._set_size = len(upstreams)
        if self._records:
            for up in [u for u in self._records if u not in upstreams]:
                del self._records[up]
                self.out.discard(up)

    def record(self, upstream: Upstream, status: int, failed: bool, now: float) -> None:
        """One attempt's end: its response status (0: none) and whether it failed."""
        rules = self.rules
        rec = self._records.get(upstream)
        if rec is None:
            if not failed and status < 500:
                return  # the common case: a healthy replica's answer, nothing to keep
            rec = self._records[upstream] = _Record()
        if upstream in self.out:
            return  # answers still arriving from before it was ejected
        if status >= 500:  # a failure is answered 502 or 504: a 5xx too
            rec.consecutive_5xx += 1
        else:
            rec.consecutive_5xx = 0
        why = ""
        if rules.consecutive_5xx and rec.consecutive_5xx >= rules.consecutive_5xx:
            why = f"{rec.consecutive_5xx} consecutive 5xx answers"
        if failed and rules.failures:
            window = rec.failures
            window.append(now)
            while window and window[0] <= now - rules.window:
                window.popleft()
            if len(window) >= rules.failures:
                why = (
                    f"{len(window)} failed requests (no answer in time, reset or broken) "
                    f"within {rules.window:g}s"
                )
        if why:
            self._eject(upstream, rec, why, now)
        elif not failed and status < 500 and not rec.failures and not rec.ejections:
            del self._records[upstream]  # nothing left to remember

    def _eject(self, upstream: Upstream, rec: _Record, why: str, now: float) -> None:
        rules = self.rules
        allowed = int(self._set_size * rules.max_ejected_percent / 100)
        allowed = min(allowed, self._set_size - 1)
        if len(self.out) >= allowed:
            return  # too many out already: it stays, and its counts go on
        if rec.ejections and now - rec.back_at >= rules.max_ejection_time:
            rec.ejections = 0  # it behaved for long enough: a first ejection again
        seconds = min(rules.ejection_time * 2**rec.ejections, rules.max_ejection_time)
        rec.ejections += 1
        rec.until = now + seconds
        rec.asked = False
        rec.consecutive_5xx = 0
        rec.failures.clear()
        self.out.add(upstream)
        if self.on_eject is not None:
            self.on_eject(upstream, why, seconds)

    def due_back(self, now: float) -> list[Upstream]:
        """Ejected replicas whose time has just come up: back in now, or (`by_probe`)
        each returned once, for its probe to be asked for, and back at `probe_passed`."""
        due = []
        for up in self.out:
            rec = self._records[up]
            if rec.until <= now and not rec.asked:
                rec.asked = True
                due.append(up)
        if not self.by_probe:
            for up in due:
                self._return(up, now)
        return due

    def probe_passed(self, upstream: Upstream, now: float) -> None:
        """A readiness probe of `upstream` passed: back in, if its time is up."""
        rec = self._records.get(upstream)
        if rec is not None and upstream in self.out and rec.until <= now:
            self._return(upstream, now)

    def _return(self, upstream: Upstream, now: float) -> None:
        self.out.discard(upstream)
        self._records[upstream].back_at = now
        if self.on_return is not None:
            self.on_return(upstream)

    def __repr__(self) -> str:
        return f"<Outliers out={len(self.out)}/{self._set_size}>"
