"""A secret in `[env]` reaches the container, never its repr, and a new value rolls the
replicas: the worker's template id folds in the secret's fingerprint. FakeRuntime, a real
SQLite store and a real secret store on disk; MockClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from trio.testing import MockClock

from config.canonical import spec_id
from config.parse import parse_spec
from daemon.runtime.interface import LABEL_TEMPLATE
from daemon.secrets.store import SecretStore
from tests.unit.test_worker import IMAGE, Rig, published, worker_rig

VALUE_1 = b"hf_FirstValueOfTheTokenAbc123"
VALUE_2 = b"hf_SecondValueOfTheTokenXyz789"


def secret_spec(port: int) -> str:
    return (
        f'name = "web"\nimage = "{IMAGE}"\nport = 8080\n'
        '[env]\nMODEL = "tiny"\nHF_TOKEN = { secret = "hf-token" }\n'
        f'[replicas]\ncount = 2\n[endpoint]\nport = {port}\nbind = "127.0.0.1"\n'
    )


@pytest.fixture
async def secrets(tmp_path: Path) -> SecretStore:
    store = SecretStore(tmp_path / "secrets")
    await store.open()
    return store


@pytest.fixture
async def rig(tmp_path: Path, secrets: SecretStore) -> AsyncIterator[Rig]:
    async with worker_rig(tmp_path, gpus=0, secrets=secrets) as r:
        yield r


def envs(rig: Rig) -> list[dict[str, str]]:
    return [dict(c.spec.env) for c in rig.runtime.containers.values()]


async def test_the_value_reaches_the_environment_and_no_repr(
    rig: Rig, secrets: SecretStore, mock_clock: MockClock
) -> None:
    await secrets.create("hf-token", VALUE_1)
    rig.apply(secret_spec(rig.port))
    await rig.settle()
    assert [e["HF_TOKEN"] for e in envs(rig)] == [VALUE_1.decode()] * 2
    assert all(e["MODEL"] == "tiny" for e in envs(rig))
    for c in rig.runtime.containers.values():
        shown = repr(c.spec)
        assert "HF_TOKEN" in shown and VALUE_1.decode() not in shown
    events = " ".join(e.message for e in rig.store.events())
    assert VALUE_1.decode() not in events


async def test_a_missing_secret_fails_the_create_naming_the_field(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(secret_spec(rig.port))
    await rig.settle()
    assert rig.runtime.containers == {}
    failed = [e.message for e in rig.store.events() if e.kind == "create-failed"]
    assert failed and failed[0].startswith('env.HF_TOKEN.secret: no such secret "hf-token"')


async def test_a_new_value_rolls_the_replicas_to_it(
    rig: Rig, secrets: SecretStore, mock_clock: MockClock
) -> None:
    await secrets.create("hf-token", VALUE_1)
    rig.apply(secret_spec(rig.port))
    await rig.settle()
    rig.all_answer()
    await rig.settle()
    assert rig.worker.snapshot().status == "running"
    old = set(rig.replicas())
    old_templates = {c.spec.labels[LABEL_TEMPLATE] for c in rig.runtime.containers.values()}

    change = await secrets.create("hf-token", VALUE_2)
    assert change.outcome == "updated"
    # What the admin API does (daemon/api/secret_routes.py): the same spec, a new revision.
    spec = parse_spec(secret_spec(rig.port))
    result = rig.store.apply(
        "web", spec_id(spec), secret_spec(rig.port), "{}", because="secret hf-token changed"
    )
    assert result.revision == 2 and result.outcome == "updated"
    for _ in range(8):
        rig.all_answer()
        mock_clock.jump(1.0)
        await rig.settle()
        assert len(published(rig)) >= 2  # never below the ready count while it rolls
    assert not old & set(rig.replicas()) and len(rig.replicas()) == 2
    assert [e["HF_TOKEN"] for e in envs(rig)] == [VALUE_2.decode()] * 2
    new_templates = {c.spec.labels[LABEL_TEMPLATE] for c in rig.runtime.containers.values()}
    assert len(new_templates) == 1 and new_templates != old_templates
    (active,) = [r for r in rig.store.history("web") if r.active]
    assert (active.revision, active.reason) == (2, "secret hf-token changed")
    assert rig.worker.snapshot().status == "running"


async def test_the_same_value_again_changes_nothing(
    rig: Rig, secrets: SecretStore, mock_clock: MockClock
) -> None:
    await secrets.create("hf-token", VALUE_1)
    rig.apply(secret_spec(rig.port))
    await rig.settle()
    before = set(rig.replicas())
    assert (await secrets.create("hf-token", VALUE_1)).outcome == "unchanged"
    await rig.settle()
    assert set(rig.replicas()) == before
