"""Replica logs for `berth logs`: one replica's as they are, several interleaved by line.

With several replicas each line is prefixed `REPLICA_ID | `. `--tail` applies to each replica.

Following (`berth logs -f`) is a producer, not a generator: `follow_replica_logs` runs one
pump task per replica (and one that picks up replicas created while it follows) in its own
nursery, all writing into the memory channel it is given; the consumer reads the channel's
other end. Nothing here yields from inside a nursery. The admin server runs the producer
beside the response that reads the channel (`Response.producer`), and cancels it the moment
the response stops (the client hung up): the pumps end and every replica's log stream is
closed before the connection's task goes on. A replica's stream that fails ends that pump
with a note in the merged stream; the others go on. The channel closes (the response ends)
when every pump has ended.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import aclosing

import trio

from daemon.runtime.interface import LABEL_REPLICA, ContainerInfo, ContainerRuntime, RuntimeFailure

NEW_REPLICA_POLL = 2.0  # seconds between looks for new replicas while following


def _prefix(lines: bytes, replica: str) -> bytes:
    return b"".join(replica.encode() + b" | " + line for line in lines.splitlines(keepends=True))


async def replica_logs(
    runtime: ContainerRuntime, containers: list[ContainerInfo], *, tail: int | None
) -> bytes:
    if len(containers) == 1:
        return await runtime.logs(containers[0].container_id, tail=tail)
    parts = []
    for c in containers:
        data = await runtime.logs(c.container_id, tail=tail)
        parts.append(_prefix(data, c.labels.get(LABEL_REPLICA, c.container_id[:12])))
    return b"".join(parts)


async def follow_replica_logs(
    runtime: ContainerRuntime,
    containers: list[ContainerInfo],
    out: trio.MemorySendChannel[bytes],
    *,
    tail: int | None,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Send these containers' logs into `out` as they come, until cancelled or every stream
    has ended (then `out` is closed); with `labels`, also those of replicas that appear later
    (a rolling update, a scale-up), every line then prefixed with its replica."""
    prefix = len(containers) > 1 or labels is not None

    async def pump(c: ContainerInfo, out: trio.MemorySendChannel[bytes], tail: int | None) -> None:
        replica = c.labels.get(LABEL_REPLICA, c.container_id[:12])
        pending = b""
        async with out:
            try:
                async with aclosing(runtime.follow_logs(c.container_id, tail=tail)) as chunks:
                    async for chunk in chunks:
                        if not prefix:
                            await out.send(chunk)
                            continue
                        pending += chunk
                        complete, _, pending = pending.rpartition(b"\n")
                        if complete:
                            await out.send(_prefix(complete + b"\n", replica))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader went away
            except RuntimeFailure as exc:
                # One replica's stream failing ends its pump only: the others go on.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await out.send(f"[{replica}: log stream ended: {exc}]\n".encode())

    async def watch(out: trio.MemorySendChannel[bytes], nursery: trio.Nursery) -> None:
        """Start a pump for each new container of the deployment, from its first line."""
        assert labels is not None
        seen = {c.container_id for c in containers}
        async with out:
            while True:
                await trio.sleep(NEW_REPLICA_POLL)
                try:
                    current = await runtime.list(labels)
                except RuntimeFailure:
                    continue
                for c in current:
                    if c.container_id not in seen and c.labels.get(LABEL_REPLICA):
                        seen.add(c.container_id)
                        nursery.start_soon(pump, c, out.clone(), None)

    async with trio.open_nursery() as nursery, out:
        # Each task holds a clone; the channel closes when the last of them ends.
        for c in containers:
            nursery.start_soon(pump, c, out.clone(), tail)
        if labels is not None:
            nursery.start_soon(watch, out.clone(), nursery)
