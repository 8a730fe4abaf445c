"""The state dir 0700 and berth.db (with -wal/-shm) 0600 under a loose umask, as `make run`
or a hand start has; older, looser ones tightened with a note. Real SQLite."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.store.database import Store
from daemon.store.permissions import secure_state_dir, tighten_database_files


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_state_dir_and_database_are_private(tmp_path: Path, umask_022: None) -> None:
    state = tmp_path / "a" / "state"
    assert secure_state_dir(state) == []
    assert mode(state) == 0o700
    with Store(state / "berth.db") as store:
        store.apply("x", "id", "text", "{}")  # the WAL has something in it
        for name in ("berth.db", "berth.db-wal", "berth.db-shm"):
            assert mode(state / name) == 0o600, name


def test_open_ones_are_tightened_and_said(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    with Store(state / "berth.db") as store:
        store.apply("x", "id", "text", "{}")
    for name in ("berth.db", "berth.db-wal"):
        path = state / name
        if path.exists():
            os.chmod(path, 0o644)
    notes = secure_state_dir(state)
    assert mode(state) == 0o700 and len(notes) == 1 and "0755" in notes[0]
    with caplog.at_level(logging.WARNING, logger="berthd.store"):
        with Store(state / "berth.db"):
            pass
    assert mode(state / "berth.db") == 0o600
    assert any("berth.db: mode 0644" in r.getMessage() for r in caplog.records)
    assert tighten_database_files(state / "berth.db") == []  # said once: nothing left


def test_a_stricter_mode_is_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o500)
    try:
        assert secure_state_dir(state) == [] and mode(state) == 0o500
    finally:
        os.chmod(state, 0o700)


def test_a_database_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real.db").write_bytes(b"")
    (tmp_path / "berth.db").symlink_to(tmp_path / "real.db")
    with pytest.raises(OSError):
        Store(tmp_path / "berth.db")
