"""`GET /v1/status`: berthd's uptime and its last unclean stop, from a real store."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import trio
from trio.testing import MockClock

from daemon.api.routes import AdminApi
from daemon.gpu.fake import FakeGpuInventory
from daemon.gpu.ledger import GpuLedger
from daemon.store.access import StoreAccess
from daemon.store.database import Store
from daemon.store.runs import RunMarker


def gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_status_shows_uptime_and_the_last_unclean_stop(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    with Store(tmp_path / "berth.db") as store:
        access = StoreAccess(store)
        killed = RunMarker(access, "0.1.0", pid=gone_pid())  # a berthd then kill -9ed
        await killed.begin()
        assert killed.start is not None
        store._db.execute(  # its last heartbeat (RunMarker.heartbeat_forever), long ago
            "UPDATE berthd_runs SET alive_at = '2000-01-01T00:00:00.000Z' WHERE run_id = ?",
            [killed.start.run_id],
        )
        run = RunMarker(access, "0.1.0")
        start = await run.begin()
        assert start.previous == "unclean" and "after an unclean stop" in start.message(1, "x")
        api = AdminApi(
            SimpleNamespace(  # type: ignore[arg-type]
                store=access,
                run_marker=run,
                podman_version="podman 4.3.1",
                gpus=GpuLedger(FakeGpuInventory()),
                state_dir=tmp_path,
                settings=SimpleNamespace(socket=tmp_path / "berth.sock", gateway=None),
                instance="inst",
            )
        )
        mock_clock.jump(125.0)
        answer = (await api.status()).json
        assert isinstance(answer, dict)
        assert answer["uptime_s"] == 125.0 and answer["pid"] == run.pid
        assert answer["started_at"] == start.started_at
        stop = answer["last_unclean_stop"]
        assert stop["at"] == "2000-01-01T00:00:00.000Z" and stop["pid"] == killed.pid
        assert stop["down_s"] > 20 * 365 * 86400  # from that heartbeat to the next start
        await run.end()
        again = RunMarker(access, "0.1.0")
        assert (await again.begin()).previous == "clean"


async def test_the_heartbeat_feeds_alive_at_every_30s(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.1  # the store's calls run in a real thread
    stamps = iter(f"2024-05-01T12:{m:02d}:00+00:00" for m in range(60))
    with Store(tmp_path / "berth.db", now=lambda: datetime.fromisoformat(next(stamps))) as store:
        run = RunMarker(StoreAccess(store), "0.1.0")
        start = await run.begin()

        def alive_at() -> str:
            row = store._first("SELECT alive_at FROM berthd_runs WHERE run_id = ?", [start.run_id])
            assert row is not None
            return str(row["alive_at"])

        assert alive_at() == "2024-05-01T12:00:00.000Z"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.heartbeat_forever)
            await trio.sleep(29.0)
            assert alive_at() == "2024-05-01T12:00:00.000Z"
            await trio.sleep(2.0)
            assert alive_at() == "2024-05-01T12:01:00.000Z"
            await trio.sleep(30.0)
            assert alive_at() == "2024-05-01T12:02:00.000Z"
            nursery.cancel_scope.cancel()
        await run.end()
        assert alive_at() == "2024-05-01T12:03:00.000Z"
