"""The replica health state machine as a table: probe results in, states and verdicts out."""

from __future__ import annotations

import pytest

from config.spec import Health, Probe
from daemon.health.probes import ProbeResult
from daemon.health.verdicts import ProbeKind, ReplicaHealth, Transition

R, L, S = ProbeKind.READINESS, ProbeKind.LIVENESS, ProbeKind.STARTUP
OK, BAD = ProbeResult(True, "HTTP 200"), ProbeResult(False, "HTTP 500")


def probe(*, threshold: int = 3, success: int = 1, delay: float = 0.0) -> Probe:
    return Probe(
        port=8080,
        path="/health",
        period=10.0,
        failure_threshold=threshold,
        success_threshold=success,
        initial_delay=delay,
    )


READY_ONLY = Health(readiness=probe(success=2))
ALL_THREE = Health(startup=probe(threshold=2), readiness=probe(), liveness=probe(threshold=2))

# (name, health, [(kind, result, expected transitions, expected ready, restart?)])
CASES = [
    (
        "readiness: success_threshold passes make it ready",
        READY_ONLY,
        [(R, OK, [], False, False), (R, OK, [Transition.READY], True, False)],
    ),
    (
        "readiness: failure_threshold failures take it out, a pass brings it back",
        Health(readiness=probe(threshold=2)),
        [
            (R, OK, [Transition.READY], True, False),
            (R, BAD, [], True, False),
            (R, BAD, [Transition.UNREADY], False, False),
            (R, OK, [Transition.READY], True, False),
        ],
    ),
    (
        "readiness failures alone never restart",
        Health(readiness=probe(threshold=1)),
        [(R, BAD, [], False, False), (R, BAD, [], False, False), (R, BAD, [], False, False)],
    ),
    (
        "a failure between passes resets the success count",
        READY_ONLY,
        [(R, OK, [], False, False), (R, BAD, [], False, False), (R, OK, [], False, False)],
    ),
    (
        "startup gates the others, then readiness decides",
        ALL_THREE,
        [(S, OK, [Transition.STARTED], False, False), (R, OK, [Transition.READY], True, False)],
    ),
    (
        "startup failing its threshold means restart",
        ALL_THREE,
        [(S, BAD, [], False, False), (S, BAD, [Transition.RESTART], False, True)],
    ),
    (
        "liveness failing its threshold drains (unready) and restarts",
        ALL_THREE,
        [
            (S, OK, [Transition.STARTED], False, False),
            (R, OK, [Transition.READY], True, False),
            (L, BAD, [], True, False),
            (L, BAD, [Transition.UNREADY, Transition.RESTART], False, True),
            (R, OK, [], False, True),  # nothing more once a restart is decided
        ],
    ),
    (
        "with no readiness probe a TCP connect is the readiness check",
        Health(),
        [(R, ProbeResult(True, "TCP connect"), [Transition.READY], True, False)],
    ),
]


@pytest.mark.parametrize(("health", "steps"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health_table(
    health: Health, steps: list[tuple[ProbeKind, ProbeResult, list[Transition], bool, bool]]
) -> None:
    state = ReplicaHealth.begin(health, 8080, started_at=0.0)
    now = 0.0
    for kind, result, transitions, ready, restart in steps:
        now += 10.0
        assert state.record(kind, result, now) == transitions
        assert state.ready is ready
        assert (state.restart_reason is not None) is restart


def test_only_the_startup_probe_runs_until_it_passes() -> None:
    state = ReplicaHealth.begin(ALL_THREE, 8080, started_at=0.0)
    assert [t.kind for t in state.due(0.0)] == [S]
    state.record(S, OK, 1.0)
    assert sorted(t.kind for t in state.due(1.0)) == sorted([R, L])


def test_initial_delay_and_period_schedule_the_probes() -> None:
    state = ReplicaHealth.begin(Health(readiness=probe(delay=5.0)), 8080, started_at=100.0)
    assert state.due(104.9) == [] and state.next_due() == 105.0
    (track,) = state.due(105.0)
    assert state.due(105.0) == []  # in flight: not handed out twice
    state.record(R, OK, 105.2)
    assert state.next_due() == pytest.approx(115.0)  # a period after it began, as kubelet


def test_a_probe_that_outlasts_its_period_is_not_doubled_and_the_next_is_due_at_once() -> None:
    state = ReplicaHealth.begin(Health(readiness=probe(delay=0.0)), 8080, started_at=0.0)
    (track,) = state.due(0.0)
    assert state.due(10.5) == [] and state.next_due() is None  # still in flight at 10 s
    state.record(R, OK, 11.0)
    assert state.next_due() == pytest.approx(10.0)  # overdue: the prober runs it now


def test_an_adopted_replica_is_probed_at_once_and_one_pass_makes_it_ready() -> None:
    state = ReplicaHealth.begin(READY_ONLY, 8080, started_at=50.0, adopted=True)
    assert state.next_due() == 50.0  # no initial delay
    assert state.record(R, OK, 50.1) == [Transition.READY]  # success_threshold 2 waived once


def test_the_restart_reason_names_the_probe_and_its_last_answer() -> None:
    state = ReplicaHealth.begin(Health(liveness=probe(threshold=1)), 8080, started_at=0.0)
    state.record(L, BAD, 1.0)
    assert state.restart_reason == "liveness probe failed 1 times (HTTP 500)"


def run_startup(health: Health, results: list[tuple[float, ProbeResult]]) -> ReplicaHealth:
    """Startup probe results at the times they come, as the prober would record them."""
    state = ReplicaHealth.begin(health, 8080, started_at=0.0)
    for now, result in results:
        state.record(S, result, now)
    return state


def test_the_default_startup_budget_is_delay_plus_threshold_periods() -> None:
    """The issue's model loading for 30 s behind a default startup probe (10 s x 3): probed
    at 0, 10 and 20 s while loading, it passes at 30 s and is never restarted."""
    health = Health(startup=Probe(port=8080, path="/ready"))
    assert health.startup is not None and health.startup.budget == 30.0
    loading = [(0.0, BAD), (10.0, BAD), (20.0, BAD)]
    state = run_startup(health, [*loading, (30.0, OK)])
    assert state.started and state.restart_reason is None
    failing = run_startup(health, [*loading, (30.0, BAD)])
    assert failing.restart_reason == "startup probe failed 4 times (HTTP 500)"


def test_timeout_total_is_the_whole_startup_budget() -> None:
    health = Health(startup=Probe(port=8080, path="/ready", period=5.0, timeout_total=900.0))
    assert health.startup is not None and health.startup.budget == 900.0
    loading = [(t * 5.0, BAD) for t in range(180)]  # 0 .. 895 s: a 15 min model load
    assert run_startup(health, loading).restart_reason is None
    assert run_startup(health, [*loading, (900.0, BAD)]).restart_reason is not None
    assert run_startup(health, [*loading, (900.0, OK)]).started


def test_loading_is_up_but_not_ready() -> None:
    # With a startup probe: starting until it passes, then loading until readiness passes.
    with_startup = Health(startup=probe(threshold=30), readiness=probe())
    state = ReplicaHealth.begin(with_startup, 8080, started_at=0.0)
    assert not state.loading
    state.record(S, OK, 1.0)
    assert state.started and state.loading and not state.ready
    state.record(R, OK, 2.0)
    assert state.ready and not state.loading
    # Without one: loading once the server answers its readiness probe (not ready yet).
    state = ReplicaHealth.begin(Health(readiness=probe()), 8080, started_at=0.0)
    state.record(R, ProbeResult(False, "connect failed: refused"), 1.0)
    assert not state.loading
    state.record(R, ProbeResult(False, "HTTP 503", answered=True), 2.0)
    assert state.loading
