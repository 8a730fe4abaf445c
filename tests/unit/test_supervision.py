"""berthd's barriers around its control parts (FakeRuntime, a real SQLite store, MockClock): a
worker that crashes in one of its background tasks (its prober, an operation) is logged, said
as worker-crashed and run again by its supervisor, never ending the control nursery; the Podman
event stream (berthd's container cache reads it) logs an unexpected error and reconnects."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from trio.testing import MockClock

from config.canonical import spec_id
from config.parse import parse_spec
from config.settings import load_settings
from config.spec import Probe
from daemon.berthd import Berthd
from daemon.gpu.fake import FakeGpuInventory, fake_gpus
from daemon.gpu.ledger import GpuLedger
from daemon.health.probes import ProbeFn, ProbeResult
from daemon.integrations.mounts import MountPreparer
from daemon.reconcile.context import WorkerContext
from daemon.runtime.cache import RETRY_MAX, SETTLE, CachingRuntime
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    ContainerEvent,
    ContainerSpec,
)
from daemon.store.access import StoreAccess
from daemon.store.database import Event, Store
from daemon.store.events import EventLog
from tests.conftest import free_port

IMAGE = "localhost/berth-echo:1"


def spec_text(port: int) -> str:
    return (
        f'name = "web"\nimage = "{IMAGE}"\nport = 8080\n[replicas]\ncount = 1\n'
        f'[endpoint]\nport = {port}\nbind = "127.0.0.1"\n'
    )


class CreateFailsOnce(FakeRuntime):
    """A create that raises what no one expects (not a RuntimeFailure), once."""

    failed = False

    async def create(self, spec: ContainerSpec) -> str:
        if not self.failed:
            self.failed = True
            raise ValueError("create blew up")
        return await super().create(spec)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "berth.db")
    yield store
    store.close()


def berthd_with(tmp_path: Path, store: Store, runtime: FakeRuntime) -> Berthd:
    """A Berthd with its parts in place as `run` puts them, on FakeRuntime."""
    settings = load_settings(None, {}, {"state_dir": tmp_path})
    d = Berthd(settings)
    d.runtime = runtime
    d.store = StoreAccess(store)
    d.events = EventLog(d.store)
    d.gpus = GpuLedger(FakeGpuInventory(fake_gpus(0)))
    return d


def worker_context(d: Berthd, runtime: FakeRuntime, probe: ProbeFn) -> WorkerContext:
    return WorkerContext(
        instance=d.instance,
        runtime=runtime,
        store=d.store,
        events=d.events,
        endpoints=d.endpoints,
        ports=d.ports,
        probe=probe,
        mounts=MountPreparer(runtime, d.settings),
        gpus=d.gpus,
    )


def probe_failing_first(fault: str) -> ProbeFn:
    probes = 0

    async def probe(p: Probe, host: str, port: int) -> ProbeResult:
        nonlocal probes
        probes += 1
        if fault == "probe" and probes == 1:
            raise RuntimeError("probe blew up")  # in the prober's task, in the worker's nursery
        return ProbeResult(True, "fake")

    return probe


async def run_web(d: Berthd, store: Store, until: Callable[[list[str]], bool]) -> list[Event]:
    """Run deployment web's worker under berthd's supervisor until the events say `until`;
    the nursery stands for berthd's root and control nurseries, and must not fail."""
    text = spec_text(free_port())
    store.apply("web", spec_id(parse_spec(text)), text, "{}")
    async with trio.open_nursery() as root:
        await root.start(d.endpoints.run)
        d._control = root
        d.ensure_worker("web")
        while not until([e.kind for e in store.events()]):
            await d.events.wait_changed()
        await d.workers["web"].wait_round()  # rounds come from `run` alone: it runs again
        root.cancel_scope.cancel()
    return store.events()


@pytest.mark.parametrize("fault", ["probe", "create"])
async def test_a_crash_in_a_workers_task_is_supervised(
    tmp_path: Path, store: Store, mock_clock: MockClock, fault: str
) -> None:
    # Store calls run in a thread: the clock jumps only once they have had time to return.
    mock_clock.autojump_threshold = 0.02
    runtime = CreateFailsOnce({IMAGE}) if fault == "create" else FakeRuntime({IMAGE})
    d = berthd_with(tmp_path, store, runtime)
    d._ctx = worker_context(d, runtime, probe_failing_first(fault))
    with trio.fail_after(30):
        events = await run_web(d, store, lambda kinds: "worker-crashed" in kinds)
    crashes = [e for e in events if e.kind == "worker-crashed"]
    cause = "RuntimeError: probe blew up" if fault == "probe" else "ValueError: create blew up"
    assert [(e.deployment, e.message) for e in crashes] == [
        ("web", f"reconcile worker crashed ({cause}); restarting in 5s")
    ]


async def test_a_worker_restarted_after_an_operation_crashed_goes_on(
    tmp_path: Path, store: Store, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.02
    runtime = CreateFailsOnce({IMAGE})
    d = berthd_with(tmp_path, store, runtime)
    d._ctx = worker_context(d, runtime, probe_failing_first("create"))
    with trio.fail_after(30):
        await run_web(d, store, lambda kinds: "ready" in kinds)
    assert len(runtime.running()) == 1


async def test_a_worker_restarted_after_a_probe_crashed_probes_again(
    tmp_path: Path, store: Store, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.02
    runtime = FakeRuntime({IMAGE})
    d = berthd_with(tmp_path, store, runtime)
    d._ctx = worker_context(d, runtime, probe_failing_first("probe"))
    with trio.fail_after(30):  # restarted 5 s after the crash, then a 10 s readiness period
        await run_web(d, store, lambda kinds: "ready" in kinds)


class EventsThatBreak(FakeRuntime):
    """The first event stream raises what no one expects; the ones after it work."""

    streams = 0

    async def events(self, labels: Mapping[str, str]) -> AsyncGenerator[ContainerEvent, None]:
        self.streams += 1
        if self.streams == 1:
            raise ValueError("a bug in the runtime's event stream")
        async with aclosing(super().events(labels)) as events:
            async for event in events:
                yield event


async def test_the_event_watcher_survives_an_unexpected_error_from_the_stream(
    tmp_path: Path, store: Store, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = EventsThatBreak({IMAGE})
    d = berthd_with(tmp_path, store, runtime)
    # berthd's container cache, wired as `run` wires it: a change nudges that worker.
    cache = CachingRuntime(
        runtime, scope={LABEL_INSTANCE: d.instance}, on_change=d._container_changed
    )
    nudged = trio.Event()
    d.workers["web"] = SimpleNamespace(nudge=nudged.set)  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await trio.sleep(RETRY_MAX)  # the stream is opened again after a pause
        assert runtime.streams == 2
        await runtime.create(
            ContainerSpec(
                name="web-r1",
                image=IMAGE,
                labels={LABEL_INSTANCE: d.instance, LABEL_DEPLOYMENT: "web"},
                app_port=8080,
                host_port=free_port(),
            )
        )
        with trio.fail_after(SETTLE / 2):  # by its event, not by a list
            await nudged.wait()
        nursery.cancel_scope.cancel()
    failures = [r for r in caplog.records if r.getMessage().startswith("podman event stream")]
    assert [r.getMessage() for r in failures] == [
        "podman event stream failed; listing containers, then reopening it"
    ]
    assert failures[0].exc_info is not None
    assert "a bug in the runtime's event stream" in caplog.text
