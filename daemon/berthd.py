"""berthd's root object: owns the store, the Podman connection, the endpoints and the workers.

Lifetimes, outermost first (STYLE.md #2): the Podman service (watched, and restarted with a
back-off when berthd started it: after start it never ends berthd, and the endpoints keep
serving while Podman is away), the endpoints and the model gateway (their own nurseries, so
they can drain after everything else stopped), then the control nursery: the container
cache (Podman's event stream and resyncs: `runtime/cache.py`; rounds read it), the admin
API, the signal handler and one reconcile worker per deployment.

Shutdown (SIGTERM/SIGINT): the control nursery is cancelled (no new API calls, no more
reconcile rounds: nothing stops a container), then every endpoint stops accepting and its
in-flight requests get a bounded drain, then the Podman service berthd started (if any) ends.
Containers keep running; the next berthd adopts them by their instance label.

Faults stay local (STYLE.md #17): a worker that crashes, its prober's and its operations'
tasks included, is logged, said as worker-crashed and run again after a pause; the container
cache logs a broken event stream and reopens it, listing meanwhile; the admin server ends
only the request or the connection at fault, and each endpoint only the client connection.
Only berthd's own invariants breaking may end berthd.
"""

from __future__ import annotations

import hashlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from config.errors import SpecError
from config.parse import parse_spec
from config.parse_console import ConsoleSettings
from config.settings import DaemonSettings
from config.spec import DeploymentSpec
from daemon import __version__
from daemon.api.apply import ApplyRefused, apply_spec_text
from daemon.api.routes import AdminApi
from daemon.gateway import event_counts
from daemon.gateway.manager import GatewayManager, Placed
from daemon.gpu.inventory import load_inventory
from daemon.gpu.ledger import GpuLedger
from daemon.health.probes import run_probe
from daemon.http.listeners import SocketFileError, UnixSocketListener
from daemon.http.server import HttpServer
from daemon.integrations.mounts import MountPreparer
from daemon.metrics.exposition import metrics_server
from daemon.metrics.sampler import MetricsSampler
from daemon.metrics.scrape import Scraper
from daemon.observability import (
    autoscaler_load,
    metrics_sampler,
    metrics_snapshot,
    scrape_targets,
)
from daemon.reconcile.context import WorkerContext
from daemon.reconcile.endpoint_auth import EndpointCredentials
from daemon.reconcile.endpoint_tls import TlsFileError
from daemon.reconcile.endpoints import EndpointManager
from daemon.reconcile.ports import HostPortAllocator
from daemon.reconcile.worker import DeploymentWorker
from daemon.runtime.cache import CachingRuntime
from daemon.runtime.interface import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    ContainerRuntime,
    RuntimeFailure,
)
from daemon.runtime.podman import PodmanRuntime
from daemon.runtime.service import PodmanService, PodmanUnavailable
from daemon.secrets.store import SecretError, SecretStore
from daemon.store.access import StoreAccess
from daemon.store.database import Store
from daemon.store.events import EventLog
from daemon.store.permissions import secure_state_dir
from daemon.store.runs import RunMarker
from daemon.system.fdstore import FdStore
from daemon.system.notify import Notifier
from daemon.system.settings_changes import restart_needed, start_only_changes
from proxy import gc_policy

log = logging.getLogger("berthd")

SECRETS_DIR = "secrets"
WORKER_RESTART_DELAY = 5.0
READY_WAIT = 10.0  # at most this long before telling systemd READY=1
# Past these the watchdog goes unfed (systemd restarts berthd): a store call (SQLite on a
# local disk) and a reconcile round (it dispatches long work; its own calls are bounded).
STORE_STALL = 60.0
ROUND_STALL = 300.0


class StartupError(Exception):
    """berthd cannot start: the message says why in one line (Podman unreachable, ...)."""


def _innermost(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (a nursery's), to name a crash."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _has_startup_error(exc: BaseException) -> bool:
    if isinstance(exc, StartupError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_has_startup_error(inner) for inner in exc.exceptions)
    return False


def instance_id(state_dir: Path) -> str:
    """The instance label: derived from the state dir, so two berthd never share containers."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


@dataclass
class Berthd:
    settings: DaemonSettings
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    # Listening sockets kept across restarts (systemd's fd store, `berthd --supervise`).
    fd_store: FdStore = field(default_factory=lambda: FdStore(None))
    # berthd.toml read again as at start (flags and environment the same): on SIGHUP, to say
    # which start-only settings changed and wait for a restart (daemon/system/settings_changes).
    reread_settings: Callable[[], DaemonSettings] | None = None

    def __post_init__(self) -> None:
        self.state_dir = self.settings.state_dir
        self.instance = instance_id(self.state_dir)
        self.endpoints = EndpointManager()
        self.endpoints.tls_roots = self.settings.credentials_roots  # [endpoint.tls] files
        self.endpoints.sockets = self.fd_store
        # The model gateway ([gateway] listen): its table follows the specs and endpoints.
        self.gateway = GatewayManager(
            settings=self.settings.gateway,
            sections=self._gateway_sections,
            endpoint_of=self.endpoints.get,
            replicas=self._placed,
            sockets=self.fd_store,
            tls_roots=self.settings.credentials_roots,
        )
        self.endpoints.on_change = self.gateway.nudge
        self.ports = HostPortAllocator()
        self.workers: dict[str, DeploymentWorker] = {}
        self.apply_lock = trio.Lock()
        self._shutdown = trio.Event()
        self._control: trio.Nursery | None = None
        self.runtime: ContainerRuntime
        self._containers: CachingRuntime
        self.store: StoreAccess
        self.events: EventLog
        self.podman_version = "unknown"
        self.gpus: GpuLedger
        self.metrics: MetricsSampler
        # `STATE/secrets/`: values that specs name by `{ secret = "NAME" }`, never in berth.db.
        self.secrets = SecretStore(self.state_dir / SECRETS_DIR)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # 0700, berth.db 0600 (and tightened when an older start left them open to others):
        # the specs' history and the secrets are root's only, whatever the umask.
        for note in secure_state_dir(self.state_dir):
            log.warning("%s", note)
        store = Store(self.state_dir / "berth.db")
        self.store = StoreAccess(store)
        self.events = EventLog(self.store)
        # Protected endpoints' credentials: [endpoint.auth]'s secrets and `berth keys`.
        self.endpoints.credentials = EndpointCredentials(
            self.store, self.secrets, read_failures=(SecretError,)
        )
        self.gateway.credentials = self.endpoints.credentials  # [gateway.auth]'s secrets
        try:
            for note in await self.secrets.open():
                log.warning("secrets: %s", note)
        except SecretError as exc:
            store.close()
            raise StartupError(f"secrets: {exc}") from exc
        # This run's row (store/runs.py): how the one before it stopped is the `started` event.
        self.run_marker = RunMarker(self.store, __version__)
        start = await self.run_marker.begin()
        await self.events.emit("started", start.message(self.run_marker.pid, __version__))
        try:
            async with trio.open_nursery() as root:
                # After it has started, the service never raises: it restarts the Podman it
                # owns with a back-off and says so here (runtime/service.py).
                service = PodmanService(
                    self.settings.podman_url,
                    self.state_dir,
                    on_event=partial(self.events.emit, "podman-service"),
                )
                try:
                    url: str = await root.start(service.run)
                    podman = PodmanRuntime(url)
                    self.podman_version = await podman.version()
                except (PodmanUnavailable, RuntimeFailure) as exc:
                    raise StartupError(f"Podman: {exc}") from exc
                log.info("podman at %s: %s", url, self.podman_version)
                # Rounds, the API and the sampler see Podman through the cache: its lists come
                # from the watched view, every other call goes to Podman.
                self.runtime = self._containers = CachingRuntime(
                    podman, scope={LABEL_INSTANCE: self.instance}, on_change=self._container_changed
                )
                inventory = await trio.to_thread.run_sync(load_inventory)
                self.gpus = GpuLedger(inventory)
                log.info("GPUs: %s", inventory.describe())
                await root.start(self.endpoints.run)
                await self._start_gateway(root)
                try:
                    await self._run_control(task_status)
                finally:
                    inventory.close()
                async with trio.open_nursery() as draining:  # both stop accepting at once
                    draining.start_soon(self.endpoints.drain_all)
                    draining.start_soon(self.gateway.drain)
                await self.runtime.aclose()
                root.cancel_scope.cancel()
            await self.run_marker.end()  # a clean stop, the Podman service it owned ended
        except BaseException as exc:
            # A start refused before serving (a port in use, Podman unreachable) is no
            # unclean stop: its run ends clean. It comes wrapped in the root nursery's
            # exception group, so it is looked for inside (`except StartupError` missed it).
            if _has_startup_error(exc):
                await self.run_marker.end()
            raise
        finally:
            store.close()
        log.info("berthd stopped; replicas left running")

    async def _start_gateway(self, root: trio.Nursery) -> None:
        """The model gateway, bound before the first rounds (its fd store copy is taken back
        before the unclaimed ones are released), serving after them (`GatewayManager.open`);
        a gateway that cannot listen stops the start, as a bad `[metrics] listen` does."""
        try:
            await root.start(self.gateway.run)
        except (OSError, TlsFileError) as exc:
            listen = self.settings.gateway.listen if self.settings.gateway else "?"
            raise StartupError(f"gateway {listen}: {exc}") from exc

    async def _start_console(self, control: trio.Nursery, settings: ConsoleSettings) -> None:
        """The web console ([console] listen); imported only when configured, so without it
        berthd loads and runs none of it. Failing to listen stops the start."""
        from daemon.console.server import ConsoleServer

        console = ConsoleServer(
            settings, self, keeper=self.fd_store, tls_roots=self.settings.credentials_roots
        )
        try:
            await control.start(console.run)
        except (OSError, TlsFileError) as exc:
            raise StartupError(f"console {settings.listen}: {exc}") from exc

    async def _gateway_sections(self) -> dict[str, DeploymentSpec]:
        """Every active spec with a `[gateway]`, by deployment (the gateway's route table)."""
        specs: dict[str, DeploymentSpec] = {}
        for deployment in await self.store.call(Store.list_deployments):
            spec = await self.active_spec(deployment.name)
            if spec is not None and spec.gateway is not None:
                specs[deployment.name] = spec
        return specs

    def _placed(self, name: str) -> Placed:
        """The deployment's ready and starting replicas and their GPUs, as its worker last
        saw them (the gateway's `loaded`, `berth gateway`)."""
        worker = self.workers.get(name)
        if worker is None:
            return Placed()
        ready = starting = 0
        gpus: list[str] = []
        for r in worker.snapshot().replicas:
            if r.ready:
                ready += 1
            elif r.state in ("starting", "loading"):
                starting += 1
            else:
                continue
            gpus.extend(g for g in r.gpus if g not in gpus)
        return Placed(ready, starting, tuple(gpus))

    async def _run_control(self, task_status: trio.TaskStatus[None]) -> None:
        ctx = WorkerContext(
            instance=self.instance,
            runtime=self.runtime,
            store=self.store,
            events=self.events,
            endpoints=self.endpoints,
            ports=self.ports,
            probe=run_probe,
            mounts=MountPreparer(
                self.runtime,
                self.settings,
                volume_labels={LABEL_INSTANCE: self.instance},
                read_secret=self.secrets.read,
                read_failures=(SecretError,),
            ),
            gpus=self.gpus,
            secrets=self.secrets,
        )
        self._ctx = ctx
        async with trio.open_nursery() as control:
            self._control = control
            control.start_soon(self._handle_signals)
            control.start_soon(self.notifier.watchdog_loop, self._stalled)
            control.start_soon(self.run_marker.heartbeat_forever)
            control.start_soon(gc_policy.collect_forever)  # full collections on a clock
            # Swaps and cold starts per deployment, from the event log (berth gateway, /metrics)
            control.start_soon(event_counts.follow, self.events, self.store, self.gateway.counts)
            control.start_soon(
                partial(
                    self.events.prune_forever,
                    keep=self.settings.events_keep,
                    max_rows=self.settings.events_max_rows,
                )
            )
            await control.start(self._containers.run)  # the first list has been tried
            for name in await self._known_deployments():
                self.ensure_worker(name)
            # The replicas' own metrics ([[metrics.scrape]]): for the autoscaler, `berth
            # metrics` and /metrics, beside the sampler's.
            scraper = Scraper(partial(scrape_targets, self))
            await control.start(scraper.run)
            self.metrics = metrics_sampler(self, scraper)
            await control.start(self.metrics.run)
            ctx.load = partial(autoscaler_load, self, scraper)
            if self.settings.metrics_listen:
                exporter = metrics_server(
                    self.settings.metrics_listen, partial(metrics_snapshot, self, scraper)
                )
                try:
                    await control.start(exporter.run)
                except OSError as exc:
                    raise StartupError(f"metrics {self.settings.metrics_listen}: {exc}") from exc
            if self.settings.console is not None:
                await self._start_console(control, self.settings.console)
            if self.settings.specs is not None:
                await self.apply_specs_dir(self.settings.specs)
            server = HttpServer(
                UnixSocketListener(self.settings.socket, self.fd_store),
                AdminApi(self).handle,
                name="admin",
            )
            try:
                await control.start(server.run)
            except SocketFileError as exc:
                raise StartupError(str(exc)) from exc
            except OSError as exc:
                raise StartupError(f"admin socket {self.settings.socket}: {exc}") from exc
            log.info(
                "berthd %s ready: socket %s, state %s, instance %s",
                __version__,
                self.settings.socket,
                self.state_dir,
                self.instance,
            )
            task_status.started()
            await self._first_rounds()
            if not self._shutdown.is_set():  # stopping already: the next berthd takes them
                await self.gateway.open()  # the endpoints exist: its table finds them
                self.fd_store.release_unclaimed()  # sockets passed at start nobody took
                self.notifier.ready(f"serving {len(self.workers)} deployments")
            await self._shutdown.wait()
            control.cancel_scope.cancel()

    async def _first_rounds(self) -> None:
        """Until every worker has observed and probed its replicas once (bounded), or a stop
        is asked: a SIGTERM during the start stops accepting at once, not after them."""

        async with trio.open_nursery() as nursery:

            async def until_stop() -> None:
                await self._shutdown.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_stop)
            with trio.move_on_after(READY_WAIT):
                for worker in list(self.workers.values()):
                    for _ in range(2):  # a round to observe, another after the first probes
                        await worker.wait_round()
            nursery.cancel_scope.cancel()

    def _stalled(self) -> str | None:
        """Why the watchdog must not be fed now: a part that makes no progress."""
        store = self.store.stalled_for()
        if store > STORE_STALL:
            return f"a store call has not returned for {store:.0f}s"
        for name, worker in self.workers.items():
            stuck = worker.round_stalled_for()
            if stuck > ROUND_STALL:
                return f"deployment {name}: a reconcile round has not ended for {stuck:.0f}s"
        return None

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def _reload(self) -> None:
        """SIGHUP: renewed certificates, and the specs directory applied again; a changed
        berthd.toml setting is not applied (all are start-only), but said."""
        await self._say_start_only_changes()
        for name, why in await self.endpoints.reload_tls():
            await self.events.emit("tls-reload-failed", why, deployment=name, level=logging.ERROR)
        for why in await self.gateway.reload():  # [gateway.tls] and [gateway.auth]'s secrets
            await self.events.emit("tls-reload-failed", why, level=logging.ERROR)
        if self.settings.specs is not None:
            self.notifier.reloading()
            log.info("SIGHUP: applying %s again", self.settings.specs)
            try:
                await self.apply_specs_dir(self.settings.specs)
            finally:
                self.notifier.ready()

    async def _say_start_only_changes(self) -> None:
        """Each berthd.toml setting that differs from the one berthd started with: a warning
        and an event (`settings-need-restart`) naming it, since SIGHUP does not apply it."""
        if self.reread_settings is None:
            return
        try:
            now = await trio.to_thread.run_sync(self.reread_settings)
        except (SpecError, OSError) as exc:
            await self.events.emit(
                "settings-need-restart",
                f"SIGHUP: berthd's settings read again are refused ({exc}): a restart would "
                "fail; berthd goes on with those it started with",
                level=logging.WARNING,
            )
            return
        for name in start_only_changes(self.settings, now):
            await self.events.emit(
                "settings-need-restart", restart_needed(name), level=logging.WARNING
            )

    async def _handle_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    try:
                        await self._reload()
                    except Exception:  # a reload fails alone: berthd goes on serving
                        log.exception("SIGHUP: the reload failed")
                else:
                    log.info("%s: stopping (replicas keep running)", signal.Signals(signum).name)
                    self.notifier.stopping()
                    self.request_shutdown()

    async def _known_deployments(self) -> set[str]:
        """Active deployments, plus any our containers belong to (orphans get cleaned up)."""
        names = {d.name for d in await self.store.call(Store.list_deployments)}
        try:
            containers = await self.runtime.list({LABEL_INSTANCE: self.instance})
        except RuntimeFailure as exc:
            log.warning("cannot list containers at start: %s", exc)
            containers = []
        names.update(c.labels[LABEL_DEPLOYMENT] for c in containers if LABEL_DEPLOYMENT in c.labels)
        return names

    # -- workers ---------------------------------------------------------------------------

    def ensure_worker(self, name: str) -> DeploymentWorker:
        worker = self.workers.get(name)
        if worker is not None and not worker.finished.is_set():
            worker.nudge()  # a worker nudged mid-round does not finish (DeploymentWorker.run)
            return worker
        # None, or one that has finished and is only winding down: a new one takes over (the
        # old one's supervisor leaves the new one in `workers`).
        assert self._control is not None
        worker = DeploymentWorker(name, self._ctx)
        self.workers[name] = worker
        self._control.start_soon(self._supervise, worker)
        return worker

    async def _supervise(self, worker: DeploymentWorker) -> None:
        """Run one worker; a bug in one deployment's worker must not take the others down."""
        try:
            while True:
                try:
                    await worker.run()
                    return
                except Exception as exc:  # noqa: BLE001 - supervision boundary, logged in full
                    # Its prober's and its operations' tasks run in its nursery: their
                    # crashes end up here too, wrapped in exception groups.
                    log.exception("worker crashed", extra={"deployment": worker.name})
                    cause = _innermost(exc)
                    await self.events.emit(
                        "worker-crashed",
                        f"reconcile worker crashed ({type(cause).__name__}: {cause}); "
                        f"restarting in {WORKER_RESTART_DELAY:g}s",
                        deployment=worker.name,
                        level=logging.ERROR,
                    )
                    await trio.sleep(WORKER_RESTART_DELAY)
        finally:
            if self.workers.get(worker.name) is worker:
                del self.workers[worker.name]

    def _container_changed(self, labels: Mapping[str, str]) -> None:
        """The cache saw a container change (Podman's event, or a resync): its deployment's
        worker runs a round at once (rounds also run on a timer), reading the new view."""
        worker = self.workers.get(labels.get(LABEL_DEPLOYMENT, ""))
        if worker is not None:
            worker.nudge()

    # -- specs -----------------------------------------------------------------------------

    async def apply_specs_dir(self, directory: Path) -> None:
        """Apply every *.toml in `directory`; a bad file is reported and skipped."""

        def list_specs() -> list[Path] | None:
            return sorted(directory.glob("*.toml")) if directory.is_dir() else None

        files = await trio.to_thread.run_sync(list_specs)
        if files is None:
            log.error("specs directory %s does not exist", directory)
            return
        for path in files:
            try:
                text = await trio.Path(path).read_text(encoding="utf-8")
                result = await apply_spec_text(self, text, source=str(path))
            except (OSError, UnicodeDecodeError) as exc:
                log.error("cannot read %s: %s", path, exc)
            except ApplyRefused as exc:
                await self.events.emit(
                    "apply-refused",
                    f"{path}: " + "; ".join(exc.problems),
                    level=logging.ERROR,
                )
            else:
                log.info(
                    "%s: %s revision %d (%s)", path, result.name, result.revision, result.outcome
                )

    async def active_spec(self, name: str) -> DeploymentSpec | None:
        revision = await self.store.call(Store.active_revision, name)
        deployment = await self.store.call(Store.get_deployment, name)
        if revision is None or deployment is None or deployment.removed_at is not None:
            return None
        try:
            return parse_spec(revision.spec_text, source=name)
        except SpecError:
            return None
