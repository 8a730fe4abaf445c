"""daemon.system.slow_steps: a real busy step over the threshold is logged with its task
and where it ran; short steps are only counted. Real time (a step's length is the point),
bounded: the busy step is 30 ms of clock, the threshold 10 ms."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from daemon.system.slow_steps import SlowSteps, threshold_from

BUSY_S = 0.03
THRESHOLD_S = 0.01


def hold_the_thread(seconds: float) -> None:
    """What a blocking call on the loop looks like: the thread held, no checkpoint."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


async def busy_then_park() -> None:
    await trio.lowlevel.checkpoint()
    hold_the_thread(BUSY_S)
    await trio.lowlevel.checkpoint()


async def quick() -> None:
    for _ in range(20):
        await trio.lowlevel.checkpoint()


def run_with(instrument: SlowSteps) -> None:
    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy_then_park, name="the-busy-one")
                nursery.start_soon(quick, name="the-quick-one")

    trio.run(main, instruments=[instrument])


def test_a_busy_step_is_logged_with_its_task_and_where(caplog: pytest.LogCaptureFixture) -> None:
    instrument = SlowSteps(THRESHOLD_S)
    with caplog.at_level(logging.INFO, logger="berthd.slow_steps"):
        run_with(instrument)
    assert instrument.slow == 1
    (found,) = instrument.longest
    assert found.task == "the-busy-one"
    assert BUSY_S <= found.seconds < 1.0
    # the watcher sampled the thread inside the step: the blocking function, by name
    assert "hold_the_thread" in found.during
    # and the coroutine gave the thread back at its next checkpoint
    assert "busy_then_park" in found.ended_at
    assert instrument.bins[4] == 1  # 20-50 ms (bins: <=1, <=5, <=10, <=20, <=50, <=100, >100)
    assert instrument.steps == sum(instrument.bins) > 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (step,) = [w for w in warnings if w.startswith("slow trio step")]
    assert "the-busy-one" in step and "hold_the_thread" in step
    # the scheduler's batch that held the step: over the threshold, the task named busiest
    (batch,) = [w for w in warnings if w.startswith("slow trio batch")]
    assert "busiest: the-busy-one x1" in batch
    assert len(warnings) == 2 and instrument.slow_batches == 1
    summary = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(summary) == 1 and summary[0].startswith("trio steps: ")
    assert "over 10 ms: 1 steps, 1 batches" in summary[0] and "<=50ms:1" in summary[0]


def test_short_steps_are_only_counted(caplog: pytest.LogCaptureFixture) -> None:
    instrument = SlowSteps(1.0)  # nothing here takes a second
    with caplog.at_level(logging.INFO, logger="berthd.slow_steps"):
        run_with(instrument)
    assert instrument.slow == 0 and instrument.longest == [] and instrument.slow_batches == 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert instrument.steps == sum(instrument.bins) > 20


def test_without_the_watcher_the_step_is_still_named() -> None:
    instrument = SlowSteps(THRESHOLD_S, watch=False)
    run_with(instrument)
    (found,) = instrument.longest
    assert found.task == "the-busy-one" and found.during == "not sampled"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("", None), ("0", None), ("20", 0.02), (" 2.5 ", 0.0025)],
)
def test_threshold_from_the_environment(raw: str | None, expected: float | None) -> None:
    environ = {} if raw is None else {"BERTH_SLOW_STEP_MS": raw}
    assert threshold_from(environ) == expected


@pytest.mark.parametrize("raw", ["fast", "-1", "nan", "inf"])
def test_a_bad_threshold_is_refused_by_name(raw: str) -> None:
    with pytest.raises(ValueError, match="BERTH_SLOW_STEP_MS"):
        threshold_from({"BERTH_SLOW_STEP_MS": raw})
