"""What the admin API and the metrics snapshot may see of berthd: the `ControlPlane` protocol.

`daemon.berthd.Berthd` implements it; `daemon.api` and `daemon.observability` depend on this
protocol, not on `Berthd`, so the composition root can import them without a cycle. Every
member is read-only here: the API acts through the store, the event log and `ensure_worker`,
never by replacing a part.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import trio

from config.settings import DaemonSettings
from config.spec import DeploymentSpec
from daemon.gpu.ledger import GpuLedger
from daemon.metrics.sampler import MetricsSampler
from daemon.reconcile.endpoints import EndpointManager
from daemon.reconcile.worker import DeploymentWorker
from daemon.runtime.interface import ContainerRuntime
from daemon.store.access import StoreAccess
from daemon.store.events import EventLog


class ControlPlane(Protocol):
    @property
    def settings(self) -> DaemonSettings: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def instance(self) -> str:
        """The `io.berth.instance` label of this berthd's containers."""
        ...

    @property
    def podman_version(self) -> str: ...
    @property
    def store(self) -> StoreAccess: ...
    @property
    def events(self) -> EventLog: ...
    @property
    def runtime(self) -> ContainerRuntime: ...
    @property
    def gpus(self) -> GpuLedger: ...
    @property
    def endpoints(self) -> EndpointManager: ...
    @property
    def metrics(self) -> MetricsSampler: ...
    @property
    def workers(self) -> Mapping[str, DeploymentWorker]: ...
    @property
    def apply_lock(self) -> trio.Lock:
        """Held while a spec is checked against the host and recorded (one apply at a time)."""
        ...

    def ensure_worker(self, name: str) -> DeploymentWorker:
        """The deployment's worker, started if it has none, and nudged."""
        ...

    async def active_spec(self, name: str) -> DeploymentSpec | None:
        """The deployment's active spec; None when it has none or was removed."""
        ...
