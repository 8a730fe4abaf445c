"""SIGHUP and a changed berthd.toml: every setting applies at start only, so each one that
changed is named in a warning event (`settings-need-restart`) saying a restart applies it.
A real berthd.toml file and a real SQLite store; Berthd's `_reload` as SIGHUP runs it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest

from config.settings import DaemonSettings, load_settings
from daemon.berthd import Berthd
from daemon.store.access import StoreAccess
from daemon.store.database import Store
from daemon.store.events import EventLog
from daemon.system.settings_changes import _NAMES, start_only_changes

START = '[gateway]\nlisten = "127.0.0.1:18703"\n\n[metrics]\nlisten = "127.0.0.1:9464"\n'


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "berth.db")
    yield store
    store.close()


def berthd_reading(config: Path, tmp_path: Path, store: Store) -> Berthd:
    read = partial(load_settings, config, {}, {"state_dir": tmp_path / "state"})
    d = Berthd(read(), reread_settings=read)
    d.store = StoreAccess(store)
    d.events = EventLog(d.store)
    return d


def restart_events(store: Store) -> list[str]:
    return [e.message for e in store.events() if e.kind == "settings-need-restart"]


async def test_a_changed_start_only_setting_is_named_on_sighup(
    tmp_path: Path, store: Store
) -> None:
    config = tmp_path / "berthd.toml"
    config.write_text(START)
    d = berthd_reading(config, tmp_path, store)
    await d._reload()
    assert restart_events(store) == []  # nothing changed: nothing said

    config.write_text(START.replace("18703", "18704").replace("9464", "9465"))
    await d._reload()
    assert restart_events(store) == [
        "[metrics] listen changed: restart berthd (kill -USR2 or systemctl restart) to apply",
        "[gateway] listen changed: restart berthd (kill -USR2 or systemctl restart) to apply",
    ]


async def test_a_refused_berthd_toml_on_sighup_is_said(tmp_path: Path, store: Store) -> None:
    config = tmp_path / "berthd.toml"
    config.write_text(START)
    d = berthd_reading(config, tmp_path, store)
    config.write_text(START + 'max_body = "2Gi"\n')  # in [metrics]: an unknown key
    await d._reload()
    [message] = restart_events(store)
    assert "refused" in message and "metrics.max_body" in message, message


def test_every_setting_is_compared() -> None:
    names = {f.name for f in dataclasses.fields(DaemonSettings)}
    assert names == set(_NAMES) | {"gateway"}


def test_gateway_added_removed_and_its_keys(tmp_path: Path) -> None:
    def settings(text: str) -> DaemonSettings:
        config = tmp_path / "berthd.toml"
        config.write_text(text)
        return load_settings(config, {}, {"state_dir": tmp_path})

    none = settings("")
    gateway = settings('[gateway]\nlisten = "127.0.0.1:8000"\n')
    bigger = settings('[gateway]\nlisten = "127.0.0.1:8000"\nmax_body = "64Mi"\n')
    assert start_only_changes(none, gateway) == ["[gateway] (added)"]
    assert start_only_changes(gateway, none) == ["[gateway] (removed)"]
    assert start_only_changes(gateway, bigger) == ["[gateway] max_body"]
    assert start_only_changes(gateway, gateway) == []


def test_a_changed_console_is_named(tmp_path: Path) -> None:
    def settings(text: str) -> DaemonSettings:
        config = tmp_path / "berthd.toml"
        config.write_text(text)
        return load_settings(config, {}, {"state_dir": tmp_path})

    none = settings("")
    one = settings('[console]\nlisten = "127.0.0.1:9470"\n')
    other = settings('[console]\nlisten = "127.0.0.1:9471"\n')
    assert start_only_changes(none, one) == ["[console]"]
    assert start_only_changes(one, other) == ["[console]"]
    assert start_only_changes(one, one) == []
