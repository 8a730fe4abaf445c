"""What the admin API and the metrics snapshot may see of berthd: the `ControlPlane` protocol.

`daemon.berthd.Berthd` implements it; `daemon.api` and `daemon.observability` depend on this
protocol, not on `Berthd`, so the composition root can import them without a cycle. The
API reads these parts and acts through the store, the event log and `ensure_worker`; it never
replaces one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import trio

from config.settings import DaemonSettings
from config.spec import DeploymentSpec
from daemon.gateway.manager import GatewayManager
from daemon.gpu.ledger import GpuLedger
from daemon.metrics.sampler import MetricsSampler
from daemon.reconcile.endpoints import EndpointManager
from daemon.reconcile.worker import DeploymentWorker
from daemon.runtime.interface import ContainerRuntime
from daemon.secrets.store import SecretStore
from daemon.store.access import StoreAccess
from daemon.store.events import EventLog
from daemon.store.runs import RunMarker


class ControlPlane(Protocol):
    settings: DaemonSettings
    state_dir: Path
    instance: str  # the `io.berth.instance` label of this berthd's containers
    podman_version: str
    store: StoreAccess
    events: EventLog
    runtime: ContainerRuntime
    gpus: GpuLedger
    endpoints: EndpointManager
    gateway: GatewayManager  # the model gateway's route table (and listener, when set)
    metrics: MetricsSampler
    workers: dict[str, DeploymentWorker]
    apply_lock: trio.Lock  # held while a spec is checked and recorded: one apply at a time
    # `{ secret = "NAME" }` values: `await secrets.read(name)` is how a part gets one.
    secrets: SecretStore
    run_marker: RunMarker  # this run of berthd: when it started (`berth status`'s uptime)

    def ensure_worker(self, name: str) -> DeploymentWorker:
        """The deployment's worker, started if it has none, and nudged."""
        ...

    async def active_spec(self, name: str) -> DeploymentSpec | None:
        """The deployment's active spec; None when it has none or was removed."""
        ...
