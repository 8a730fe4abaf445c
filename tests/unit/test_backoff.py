"""The crash-loop back-off schedule: 1-2 s first, doubling, capped at 5 min, reset when healthy."""

from __future__ import annotations

import random

from daemon.health.backoff import CAP, RESET_AFTER, RestartBackoff, scheduled_delay


def test_schedule_doubles_from_one_and_a_half_seconds_to_the_cap() -> None:
    delays = [scheduled_delay(n) for n in range(12)]
    assert delays[:5] == [1.5, 3.0, 6.0, 12.0, 24.0]
    assert delays[-1] == CAP == 300.0
    assert all(b == min(CAP, 2 * a) for a, b in zip(delays, delays[1:], strict=False))


def test_each_delay_is_within_ten_percent_of_the_schedule() -> None:
    for seed in range(50):
        backoff = RestartBackoff(random.Random(seed))
        now = 0.0
        for n in range(15):
            delay = backoff.failed(now)
            assert abs(delay - scheduled_delay(n)) <= 0.1 * scheduled_delay(n)
            if n == 0:
                assert 1.0 <= delay <= 2.0
            assert not backoff.may_retry(now + delay - 0.01)
            assert backoff.may_retry(now + delay)
            now += delay


def test_ten_minutes_healthy_resets_the_schedule() -> None:
    backoff = RestartBackoff(random.Random(1))
    for _ in range(6):
        backoff.failed(0.0)
    backoff.ran_healthy(healthy_since=1000.0, now=1000.0 + RESET_AFTER - 1)
    assert backoff.failures == 6
    backoff.ran_healthy(healthy_since=1000.0, now=1000.0 + RESET_AFTER)
    assert backoff.failures == 0 and backoff.may_retry(0.0)
    assert 1.0 <= backoff.failed(2000.0) <= 2.0
