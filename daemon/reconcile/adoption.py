"""A worker's replicas across a berthd restart: their readiness verdicts, and adoption.

Theory of operation. A container outlives berthd; what berthd knew of its health did not,
until now: each replica's readiness verdict is kept in the store (`daemon.store.readiness`)
when it changes (the prober's ready / not-ready transitions, a ready replica's container
found stopped), never per probe. A new worker (a restarted berthd, or a worker restarted
after a crash) reads them once; a replica it first sees running, whose verdict was "ready"
for that very container (same container id, same template label), begins ready
(`ReplicaMemory.restorable` -> `ReplicaHealth.begin(was_ready=True)`): it is in the
endpoint's rotation from the worker's first round, and every probe of it runs at once to
confirm it. Anything else (no verdict, not ready, another container, a container that is
not running) waits for a probe as before. The worker's first successful observation is said
once (`adopted`: how many, their ids, which serve at once; adoption starts no container).

Invariants:
- A verdict is trusted only for the container it was reached about, and only at the first
  sight of that container by this worker; a restart in place by this berthd starts afresh.
- `ReplicaMemory.verdict` is what the store holds for the replica's current container:
  a write happens only when a new verdict differs from it.
"""

from __future__ import annotations

from daemon.reconcile.context import ActiveRevision, WorkerContext
from daemon.reconcile.replicas import ReplicaMemory
from daemon.runtime.interface import LABEL_REPLICA, LABEL_TEMPLATE, ContainerInfo
from daemon.store.readiness import Verdict, list_verdicts, save_verdict


class Adoption:
    def __init__(self, deployment: str, ctx: WorkerContext) -> None:
        self.deployment = deployment
        self._ctx = ctx
        # The verdicts as the store held them when this worker began (read once).
        self._verdicts: dict[str, Verdict] | None = None
        self._said = False  # the first successful observation was said

    def __repr__(self) -> str:
        known = None if self._verdicts is None else len(self._verdicts)
        return f"<Adoption {self.deployment} verdicts={known} said={self._said}>"

    async def load(self, deployment_id: str) -> None:
        if self._verdicts is None:
            self._verdicts = await self._ctx.store.call(list_verdicts, deployment_id)

    def recall(self, memory: ReplicaMemory, c: ContainerInfo) -> None:
        """A replica first seen by this worker: the store's last verdict about its container."""
        verdict = (self._verdicts or {}).get(memory.replica_id)
        if verdict is None or not verdict.holds_for(
            c.container_id, c.labels.get(LABEL_TEMPLATE, "")
        ):
            return
        memory.container_id, memory.verdict = c.container_id, verdict.ready
        memory.restorable = verdict.ready and c.running and not memory.started_here

    async def keep(self, active: ActiveRevision | None, memory: ReplicaMemory, ready: bool) -> None:
        """Keep the replica's readiness verdict in the store, when it changed."""
        if memory.verdict is ready or active is None or not memory.container_id:
            return
        memory.verdict = ready
        await self._ctx.store.call(
            save_verdict,
            active.deployment_id,
            memory.replica_id,
            memory.container_id,
            memory.template_id,
            ready=ready,
        )

    async def say_once(
        self,
        active: ActiveRevision | None,
        containers: list[ContainerInfo],
        memory: dict[str, ReplicaMemory],
    ) -> None:
        """After the worker's first successful observation: the `adopted` event, if it
        found containers (health has been set up for this round by then)."""
        if self._said:
            return
        self._said = True
        message = adopted_message(active, containers, memory)
        if message is not None:
            await self._ctx.events.emit("adopted", message, deployment=self.deployment)


def adopted_message(
    active: ActiveRevision | None,
    containers: list[ContainerInfo],
    memory: dict[str, ReplicaMemory],
) -> str | None:
    if not containers:
        return None
    if active is None:
        return f"adopted {_replicas(len(containers))} of a removed deployment; removing them"
    running = [c for c in containers if c.running]
    ids = [c.labels[LABEL_REPLICA] for c in running]
    back = [rid for rid in ids if (h := memory[rid].health) is not None and h.ready]
    parts = [
        f"adopted {_replicas(len(running), 'running ')}" + (f" ({', '.join(ids)})" if ids else "")
    ]
    if back:
        parts.append(
            f"{len(back)} back in rotation at once, ready when berthd stopped "
            f"({', '.join(back)}), confirmed by a probe now"
        )
    if len(back) < len(ids):
        parts.append(f"{len(ids) - len(back)} in rotation once a probe passes")
    stopped = len(containers) - len(running)
    if stopped:
        parts.append(f"{stopped} stopped (started again after their back-off)")
    parts.append("no container started or stopped for it")
    return "; ".join(parts)


def _replicas(count: int, adjective: str = "") -> str:
    return f"{count} {adjective}replica{'' if count == 1 else 's'}"
