"""Replica logs for `berth logs`: one replica's as they are, several interleaved by line.

With several replicas each line is prefixed `REPLICA_ID | `. Following merges the replicas'
streams through one memory channel, and picks up replicas created while it follows; the
producers live in a nursery that ends when the consumer (the admin server's response)
closes the stream. `--tail` applies to each replica.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
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
    *,
    tail: int | None,
    labels: Mapping[str, str] | None = None,
) -> AsyncIterator[bytes]:
    """Follow these containers' logs; with `labels`, also those of replicas that appear later
    (a rolling update, a scale-up), every line then prefixed with its replica."""
    send, receive = trio.open_memory_channel[bytes](64)
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
                # A pump never fails the merged stream: the others go on. (The consumer runs
                # inside this generator's nursery, so a pump's exception would cancel it.)
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

    async with trio.open_nursery() as nursery:
        async with send:
            for c in containers:
                nursery.start_soon(pump, c, send.clone(), tail)
            if labels is not None:
                nursery.start_soon(watch, send.clone(), nursery)
        try:
            async with receive:
                async for chunk in receive:
                    try:
                        yield chunk
                    except GeneratorExit:
                        # Closed by the reader: end the pumps and return normally, so the
                        # nursery does not wrap GeneratorExit in an exception group.
                        break
        finally:
            nursery.cancel_scope.cancel()
