"""What a deployment's worker is given and works towards: the leaf types of the reconcile loop.

`WorkerContext` holds the host-wide parts that every worker shares (the runtime, the store,
the event log, the endpoints, host ports, GPUs, mounts, the probe function and the metrics
windows), handed down by the composition root (`daemon.berthd`). `ActiveRevision` is the
revision a worker converges on during one round. Both live here, below the worker and its
replica operations, so that neither has to import the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from config.spec import DeploymentSpec
from daemon.gpu.ledger import GpuLedger
from daemon.health.probes import ProbeFn
from daemon.integrations.mounts import MountPreparer
from daemon.reconcile.endpoints import EndpointManager
from daemon.reconcile.ports import HostPortAllocator
from daemon.runtime.interface import ContainerRuntime
from daemon.scaling.board import SwapBoard
from daemon.scaling.driver import LoadSource
from daemon.secrets.store import SecretStore
from daemon.store.access import StoreAccess
from daemon.store.events import EventLog


@dataclass
class WorkerContext:
    instance: str
    runtime: ContainerRuntime
    store: StoreAccess
    events: EventLog
    endpoints: EndpointManager
    ports: HostPortAllocator
    probe: ProbeFn
    mounts: MountPreparer
    gpus: GpuLedger
    load: LoadSource | None = None  # the metrics sampler's windows, for the autoscaler
    secrets: SecretStore | None = None  # `{ secret = "NAME" }` values; None: none kept
    swaps: SwapBoard = field(default_factory=SwapBoard)  # host-wide: the swap's asks


@dataclass
class ActiveRevision:
    """The revision a worker works towards this round."""

    deployment_id: str
    revision: int
    spec: DeploymentSpec
    spec_id: str
    template_id: str
    desired_replicas: int
