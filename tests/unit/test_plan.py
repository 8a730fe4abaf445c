"""The reconcile plan as a table: (desired, observed) -> expected actions."""

from __future__ import annotations

import pytest

from daemon.reconcile.plan import (
    CreateReplica,
    Desired,
    ObservedReplica,
    RemoveReplica,
    StartReplica,
    StopReplica,
    plan,
)

D = Desired(spec_id="s2", template_id="t2", replicas=2)


def rep(
    rid: str,
    template: str = "t2",
    *,
    running: bool = True,
    ready: bool = True,
    created: float = 0.0,
    due: bool = True,
    must_restart: str | None = None,
) -> ObservedReplica:
    return ObservedReplica(rid, f"c-{rid}", template, running, ready, created, due, must_restart)


CASES = [
    ("up to date -> no actions", D, [rep("a"), rep("b")], []),
    ("nothing yet -> create all", D, [], [CreateReplica(), CreateReplica()]),
    ("one missing -> create one", D, [rep("a")], [CreateReplica()]),
    (
        "one too many -> remove the not-ready one",
        D,
        [rep("a"), rep("b", ready=False), rep("c")],
        [RemoveReplica("b", "c-b", "scaled down")],
    ),
    (
        "one too many, all ready -> remove the newest",
        D,
        [rep("a", created=1), rep("b", created=3), rep("c", created=2)],
        [RemoveReplica("b", "c-b", "scaled down")],
    ),
    (
        "exited container -> started again in place",
        D,
        [rep("a"), rep("b", running=False, ready=False)],
        [StartReplica("b", "c-b", "container not running")],
    ),
    (
        "exited container still in back-off -> waits, and is not replaced",
        D,
        [rep("a"), rep("b", running=False, ready=False, due=False)],
        [],
    ),
    (
        "liveness failed -> stopped (the back-off then starts it again)",
        D,
        [rep("a"), rep("b", ready=False, must_restart="liveness probe failed")],
        [StopReplica("b", "c-b", "liveness probe failed")],
    ),
    (
        "removed deployment -> remove everything",
        None,
        [rep("a"), rep("b", "t1")],
        [
            RemoveReplica("a", "c-a", "deployment removed"),
            RemoveReplica("b", "c-b", "deployment removed"),
        ],
    ),
    (
        "zero replicas -> remove everything",
        Desired("s2", "t2", 0),
        [rep("a")],
        [RemoveReplica("a", "c-a", "scaled to zero")],
    ),
    (
        "update starts: one new replica (max_surge 1), old ones kept serving",
        D,
        [rep("a", "t1"), rep("b", "t1")],
        [CreateReplica()],
    ),
    (
        "update midway: new ones not ready -> old ones stay",
        D,
        [rep("a", "t1"), rep("b", "t1"), rep("c", ready=False), rep("d", ready=False)],
        [],
    ),
    (
        "update done: new ones ready -> old ones removed",
        D,
        [rep("a", "t1"), rep("b", "t1"), rep("c"), rep("d")],
        [RemoveReplica("a", "c-a", "replaced"), RemoveReplica("b", "c-b", "replaced")],
    ),
    (
        "stopped old replica during an update is removed at once",
        D,
        [rep("a", "t1", running=False, ready=False), rep("b", "t1"), rep("c", ready=False)],
        [RemoveReplica("a", "c-a", "replaced"), CreateReplica()],
    ),
]


@pytest.mark.parametrize(
    ("desired", "observed", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_table(
    desired: Desired | None, observed: list[ObservedReplica], expected: list[object]
) -> None:
    assert plan(desired, observed) == expected


def test_plan_converges_when_actions_are_applied() -> None:
    """Applying the plan's actions (with replicas becoming ready) reaches 'no actions'."""
    observed = [rep("a", "t1"), rep("b", "t1", running=False, ready=False)]
    for round_ in range(5):
        actions = plan(D, observed)
        if not actions:
            break
        for action in actions:
            if isinstance(action, CreateReplica):
                observed.append(rep(f"n{len(observed)}", created=round_))
            elif isinstance(action, RemoveReplica):
                observed = [o for o in observed if o.replica_id != action.replica_id]
            else:
                observed = [
                    rep(o.replica_id, o.template_id) if o.replica_id == action.replica_id else o
                    for o in observed
                ]
    assert plan(D, observed) == []
    assert len(observed) == 2 and all(o.template_id == "t2" for o in observed)


ROLL_CASES = [
    # (replicas, max_surge, max_unavailable, old replicas) -> bounds the rollout must keep
    (3, 1, 0, 3),
    (3, 2, 0, 3),
    (3, 0, 1, 3),
    (4, 1, 1, 4),
    (1, 1, 0, 1),
    (2, 1, 0, 5),  # scaled down in the same update
]


@pytest.mark.parametrize(("replicas", "surge", "unavailable", "old"), ROLL_CASES)
def test_rolling_update_keeps_its_bounds_step_by_step(
    replicas: int, surge: int, unavailable: int, old: int
) -> None:
    """Each round: apply the actions; replicas created last round are ready this round."""
    desired = Desired("s2", "t2", replicas, surge, unavailable)
    observed = [rep(f"old{i}", "t1", created=i) for i in range(old)]
    fresh: list[str] = []
    steps = 0
    for steps in range(1, 30):
        observed = [rep(o.replica_id, o.template_id, created=o.created_at) for o in observed]
        actions = plan(desired, observed)
        if not actions:
            break
        removed = {a.replica_id for a in actions if isinstance(a, RemoveReplica)}
        observed = [o for o in observed if o.replica_id not in removed]
        ready = sum(1 for o in observed if o.ready)
        assert ready >= min(old, replicas) - unavailable, f"step {steps}: only {ready} ready"
        for a in actions:
            if isinstance(a, CreateReplica):
                rid = f"new{len(fresh)}"
                fresh.append(rid)
                observed.append(rep(rid, ready=False, created=100 + len(fresh)))
        assert len(observed) <= max(old, replicas + surge), (
            f"step {steps}: {len(observed)} replicas"
        )
    assert plan(desired, observed) == []
    assert sorted(o.template_id for o in observed) == ["t2"] * replicas
    assert steps <= replicas + 2


@pytest.mark.parametrize(
    ("name", "observed", "creating", "expected"),
    [
        ("two under way, none observed -> nothing more", [], 2, []),
        ("one under way, one observed -> up to date", [rep("a")], 1, []),
        ("one under way of two missing -> one more", [], 1, [CreateReplica()]),
        (
            "under way during an update: within the surge",
            [rep("a", "t1"), rep("b", "t1")],
            1,
            [],
        ),
    ],
)
def test_creates_under_way_count_as_present(
    name: str, observed: list[ObservedReplica], creating: int, expected: list[object]
) -> None:
    assert plan(D, observed, creating=creating) == expected, name
