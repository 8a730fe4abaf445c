"""A berthd whose start is refused before it serves (Podman unreachable here; a port in use
is refused the same way, as a StartupError raised inside the root nursery) ends its run
marker cleanly: the next start must not report an unclean stop. A real SQLite store; the
Podman URL names a socket nothing listens on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from config.settings import load_settings
from daemon.berthd import Berthd
from daemon.main import _startup_error
from daemon.store.database import Store
from daemon.store.runs import begin_run


async def test_a_start_refused_before_serving_is_not_an_unclean_stop(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = load_settings(
        None,
        {},
        {
            "state_dir": state,
            "socket": tmp_path / "berth.sock",
            "podman_url": f"unix://{tmp_path}/no-podman.sock",
        },
    )
    with trio.fail_after(30), pytest.raises(BaseException) as caught:
        await Berthd(settings).run()
    assert "Podman" in str(_startup_error(caught.value))
    with Store(state / "berth.db") as store:
        start = begin_run(store, os.getpid(), None, "test")  # as if it were gone
    assert start.previous == "clean", start
