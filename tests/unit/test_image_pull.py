"""A deployment's image pulls (`ImagePuller`), on the fake runtime and trio's MockClock: the
events a pull says (start, thinned progress, done with its duration), `status()` while it
runs, one download shared by two callers, and failures handed to every caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from daemon.reconcile.image_pull import ImagePuller, PullStatus, describe
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import ImageNotFound, PullProgress, TemporaryRuntimeError
from daemon.store.access import StoreAccess
from daemon.store.database import Event, Store
from daemon.store.events import EventLog

IMAGE = "127.0.0.1:5000/team/model:1"
GB = 1_000_000_000


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.runtime = FakeRuntime()
        self.runtime.pullable.add(IMAGE)
        self.store = Store(tmp_path / "berth.db")
        self.puller = ImagePuller(
            "web", lambda: self.runtime, EventLog(StoreAccess(self.store)), lambda: self.nursery
        )
        self.nursery: trio.Nursery | None = None

    def events(self) -> list[Event]:
        return [e for e in self.store.events() if e.kind in ("pull", "pulled", "pull-failed")]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.store.close()


def steps(count: int, layers: int = 4, size: int = 2 * GB) -> list[PullProgress]:
    """`count` even steps of a pull of `layers` layers, `size` bytes in all."""
    return [
        PullProgress(layers * (i + 1) // count, layers, size * (i + 1) // count, size)
        for i in range(count)
    ]


def test_describe() -> None:
    assert describe(PullProgress(6, 11, 3_100_000_000, 7_400_000_000)) == (
        "6/11 layers, 3.1/7.4 GB"
    )
    assert describe(PullProgress(1, 3, 20_000_000, 62_900_000)) == "1/3 layers, 20.0/62.9 MB"
    assert describe(PullProgress(2, 3)) == "2/3 layers"  # libpod: no sizes


async def test_a_long_pull_says_when_it_starts_thinned_progress_and_its_duration(
    rig: Rig, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # the store answers from its own thread
    rig.runtime.pull_steps[IMAGE] = steps(100)  # 100 steps a second apart: 100 s
    rig.runtime.pull_step = 1.0
    done = await rig.puller.pull(IMAGE, None)
    assert done.seconds == pytest.approx(100.0, abs=1.0)
    assert done.progress == PullProgress(4, 4, 2 * GB, 2 * GB)
    events = rig.events()
    assert events[0].message == f"pulling {IMAGE}"
    assert events[-1].kind == "pulled"
    assert events[-1].message.startswith(f"pulled {IMAGE} in 100.")
    assert events[-1].message.endswith("s (4/4 layers, 2.0/2.0 GB)")
    progress = events[1:-1]
    assert all(e.kind == "pull" for e in progress)
    # One each 10 s, and one as it passes each quarter of the bytes (25, 50, 75 s).
    said = [0, *(int(e.message.rsplit("(", 1)[1].rstrip("s)")) for e in progress), 100]
    gaps = [b - a for a, b in zip(said, said[1:], strict=False)]
    assert max(gaps) <= 10 + 1, said  # never silent for long...
    assert sum(1 for g in gaps[:-1] if g < 10) <= 3, said  # ... and more often only 3 times
    assert {25, 50, 75} <= set(said) and len(progress) <= 12, said
    assert progress[0].message == f"pulling {IMAGE}: 0/4 layers, 0.2/2.0 GB (10s)"
    assert rig.puller.status() is None  # over


async def test_a_fast_pull_says_each_quarter_not_every_step(
    rig: Rig, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # the store answers from its own thread
    rig.runtime.pull_steps[IMAGE] = steps(40)
    rig.runtime.pull_step = 0.1  # 4 s in all: no 10 s rule applies
    await rig.puller.pull(IMAGE, None)
    progress = [e.message for e in rig.events()[1:-1]]
    assert [m.split(": ", 1)[1].split(" (")[0] for m in progress] == [
        "1/4 layers, 0.5/2.0 GB",
        "2/4 layers, 1.0/2.0 GB",
        "3/4 layers, 1.5/2.0 GB",
    ]  # and the whole of it is the "pulled" event's


async def test_status_while_it_runs_and_two_callers_share_one_download(
    rig: Rig, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # the store answers from its own thread
    rig.runtime.pull_steps[IMAGE] = steps(10)
    rig.runtime.pull_step = 1.0
    outcomes: list[PullStatus] = []

    async def pull() -> None:
        outcomes.append(await rig.puller.pull(IMAGE, None))

    async with trio.open_nursery() as nursery:
        rig.nursery = nursery
        nursery.start_soon(pull)
        await trio.sleep(4.5)
        status = rig.puller.status()
        assert status is not None and status.image == IMAGE
        assert status.progress == steps(10)[3] and status.seconds == pytest.approx(4.5)
        assert status.to_json()["summary"] == "1/4 layers, 0.8/2.0 GB"
        assert set(status.to_json()) >= {
            "image",
            "layers_done",
            "layers_total",
            "bytes_done",
            "bytes_total",
            "started_at",
        }
        assert rig.puller.status("other/image:1") is None
        nursery.start_soon(pull)  # joins the one under way
    assert len(outcomes) == 2 and outcomes[0].progress == outcomes[1].progress
    assert [c for c in rig.runtime.calls if c[0] == "pull"] == [("pull", IMAGE)]
    assert [e.kind for e in rig.events()].count("pulled") == 1


async def test_a_failure_reaches_every_caller_and_the_next_pull_starts_afresh(
    rig: Rig, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # the store answers from its own thread
    stalled = TemporaryRuntimeError(f"pull {IMAGE}: no progress for 300s")
    rig.runtime.fail("pull", stalled, times=3)  # a shared download, a retry, a berth pull
    failures: list[Exception] = []

    async def pull() -> None:
        try:
            await rig.puller.pull(IMAGE, None)
        except TemporaryRuntimeError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        rig.nursery = nursery
        nursery.start_soon(pull)
        nursery.start_soon(pull)
    rig.nursery = None  # no worker now: a pull runs in its caller's task
    assert len(failures) == 2 and failures[0] is not failures[1]
    assert all("no progress for 300s" in str(f) for f in failures)
    # One download, one start and one failure said, with its reason.
    assert [e.kind for e in rig.events()] == ["pull", "pull-failed"]
    assert "no progress for 300s" in rig.events()[-1].message
    with pytest.raises(TemporaryRuntimeError):
        await rig.puller.pull(IMAGE, None)  # a retry failing the same way adds nothing
    assert [e.kind for e in rig.events()] == ["pull", "pull-failed"]
    with pytest.raises(TemporaryRuntimeError):
        await rig.puller.pull(IMAGE, None, why=" (berth pull)")  # asked for: said
    assert [e.kind for e in rig.events()][2:] == ["pull", "pull-failed"]
    await rig.puller.pull(IMAGE, None)  # a fresh pull: the failed one is gone
    assert [e.kind for e in rig.events()][4:] == ["pulled"]  # its start was the retry's
    with pytest.raises(ImageNotFound):
        await rig.puller.pull("127.0.0.1:5000/team/missing:1", None)
    assert [e.kind for e in rig.events()][5:] == ["pull", "pull-failed"]


async def test_a_pull_cut_short_by_its_nursery_fails_its_callers(
    rig: Rig, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # the store answers from its own thread
    rig.runtime.pull_steps[IMAGE] = steps(10)
    rig.runtime.pull_step = 1.0
    caught: list[Exception] = []

    async def pull() -> None:
        try:
            await rig.puller.pull(IMAGE, None)
        except TemporaryRuntimeError as exc:
            caught.append(exc)

    async with trio.open_nursery() as outer:
        outer.start_soon(pull)  # waits in its own task...
        async with trio.open_nursery() as worker:
            rig.nursery = worker  # ... for a pull in the worker's nursery
            await trio.sleep(2.0)
            worker.cancel_scope.cancel()  # berthd stopping
    assert len(caught) == 1 and "cancelled" in str(caught[0])
    assert rig.puller.status() is None


async def test_a_pull_asked_for_while_the_workers_nursery_is_closed_runs_in_its_caller(
    rig: Rig, mock_clock: MockClock
) -> None:
    # A crashed worker's nursery is closed until its restart: `berth pull` then must not
    # leave a pull entry that nothing runs (every later pull of the image would wait on it).
    mock_clock.autojump_threshold = 0.05  # the store answers from its own thread
    async with trio.open_nursery() as closed:
        pass
    rig.nursery = closed
    status = await rig.puller.pull(IMAGE, None, why=" (berth pull)")
    assert status.image == IMAGE and rig.puller.status(IMAGE) is None
    with trio.fail_after(5):
        await rig.puller.pull(IMAGE, None)  # a later pull is not stuck behind it
