"""Restart back-off for crashing replicas (Kubernetes' CrashLoopBackOff, in berth's numbers).

The first retry comes after ~1.5 s (always within 1-2 s), each next one waits twice as long,
capped at 5 minutes; a replica that has run healthy for 10 minutes starts from the beginning
again. Each delay gets +-5 % jitter, so replicas that crashed together do not retry together.
Pure: time and randomness come in from outside.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST_DELAY = 1.5
CAP = 300.0
RESET_AFTER = 600.0
JITTER = 0.05


def scheduled_delay(failures: int) -> float:
    """The delay before retry number `failures + 1`, without jitter."""
    return min(CAP, FIRST_DELAY * float(2 ** min(failures, 32)))


@dataclass
class RestartBackoff:
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    retry_at: float | None = None

    def failed(self, now: float) -> float:
        """A failure at `now`: returns the delay before the next attempt and remembers when."""
        delay = scheduled_delay(self.failures) * self.rng.uniform(1 - JITTER, 1 + JITTER)
        self.failures += 1
        self.retry_at = now + delay
        return delay

    def may_retry(self, now: float) -> bool:
        return self.retry_at is None or now >= self.retry_at

    def ran_healthy(self, healthy_since: float | None, now: float) -> None:
        """Forget past failures once the replica has been healthy for RESET_AFTER seconds."""
        if healthy_since is not None and now - healthy_since >= RESET_AFTER:
            self.failures = 0
            self.retry_at = None
